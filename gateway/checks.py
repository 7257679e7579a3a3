"""System checks for configuration mistakes that settings parsing alone cannot see."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Warning, register

EXAMPLE_MARKER = "change-me"


@register()
def check_configuration(app_configs: Any, **kwargs: Any) -> list[Error | Warning]:
    problems: list[Error | Warning] = []
    if EXAMPLE_MARKER in settings.SECRET_KEY:
        problems.append(
            Error(
                "SECRET_KEY still holds the placeholder from .env.example.",
                hint="Set SECRET_KEY to a long random value.",
                id="tollgate.E001",
            )
        )
    if settings.DEBUG and not settings.ALLOWED_HOSTS:
        problems.append(Error("ALLOWED_HOSTS is empty.", id="tollgate.E002"))
    if settings.CELERY_TASK_SOFT_TIME_LIMIT >= settings.CELERY_TASK_TIME_LIMIT:
        problems.append(
            Error(
                "CELERY_TASK_SOFT_TIME_LIMIT must be below CELERY_TASK_TIME_LIMIT.",
                id="tollgate.E003",
            )
        )
    if settings.DEBUG:
        problems.append(
            Warning("TOLLGATE_DEBUG is on; never run production this way.", id="tollgate.W001")
        )
    return problems
