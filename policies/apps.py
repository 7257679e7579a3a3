from django.apps import AppConfig


class PoliciesConfig(AppConfig):
    name = "policies"
    verbose_name = "Organizations, keys and limits"
    default_auto_field = "django.db.models.BigAutoField"
