from django.apps import AppConfig


class GatewayConfig(AppConfig):
    name = "gateway"
    verbose_name = "Providers and models"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from gateway import checks, signals  # noqa: F401 - registers checks and signal handlers
