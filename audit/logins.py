"""Logins and failed logins of the admin and API."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in, user_login_failed

from audit.context import Actor, current_actor
from audit.services import audit_record


def _logged_in(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    base = current_actor()
    actor = Actor(
        type="user",
        id=str(user.pk),
        name=user.get_username(),
        ip=(request.META.get("REMOTE_ADDR") if request else None) or base.ip,
        request_id=base.request_id,
    )
    audit_record(action="user.login", target=user, actor=actor)


def _login_failed(
    sender: Any, credentials: dict[str, Any], request: Any = None, **kwargs: Any
) -> None:
    base = current_actor()
    username = str(credentials.get("username", ""))[:150]
    actor = Actor(
        type="user",
        name=username or "unknown",
        ip=(request.META.get("REMOTE_ADDR") if request else None) or base.ip,
        request_id=base.request_id,
    )
    audit_record(
        action="user.login_failed", target_type="auth.user", target_repr=username, actor=actor
    )


def connect() -> None:
    user_logged_in.connect(_logged_in, dispatch_uid="audit-login")
    user_login_failed.connect(_login_failed, dispatch_uid="audit-login-failed")
