"""The ``/v1`` proxy: a lean ASGI app mounted in front of Django (see ``gateway.asgi``)."""
