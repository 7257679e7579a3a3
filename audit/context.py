"""Who is acting: set per request by the middleware, per command by the command runner."""

from __future__ import annotations

import sys
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.http import HttpRequest, HttpResponse


@dataclass(frozen=True)
class Actor:
    type: str
    id: str = ""
    name: str = ""
    ip: str | None = None
    request_id: str = ""


_request: ContextVar[HttpRequest | None] = ContextVar("audit_request", default=None)


def system_actor() -> Actor:
    command = " ".join(sys.argv[1:2]) if sys.argv and sys.argv[0].endswith("manage.py") else ""
    return Actor(type="system", name=f"manage.py {command}".strip() if command else "system")


def current_actor() -> Actor:
    request = _request.get()
    if request is None:
        return system_actor()
    # DRF puts the token-authenticated user on the underlying request too.
    user = getattr(request, "user", None)
    ip = request.META.get("REMOTE_ADDR") or None
    request_id = request.headers.get("X-Request-ID", "")[:128]
    if user is not None and user.is_authenticated:
        return Actor(
            type="user", id=str(user.pk), name=user.get_username(), ip=ip, request_id=request_id
        )
    return Actor(type="user", name="anonymous", ip=ip, request_id=request_id)


class AuditContextMiddleware:
    """Makes the current request (and so its user, IP and request id) known to audit rows."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        token = _request.set(request)
        try:
            return self.get_response(request)  # type: ignore[no-any-return]
        finally:
            _request.reset(token)
