"""One notifier class per channel kind; see ``base`` for the interface and its errors."""
