"""ASGI entry point: ``gateway.asgi:application``.

``/v1/*`` (the hot path) goes to the lean proxy app; everything else (admin, ``/api/``,
``/health``, ``/metrics``) to Django.
"""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "gateway.settings")

django_application = get_asgi_application()

from gateway.proxy.app import ProxyApp  # noqa: E402 - needs Django set up first
from gateway.proxy.http import Receive, Scope, Send  # noqa: E402

proxy_application = ProxyApp()


async def application(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "http" and scope["path"].startswith("/v1/"):
        await proxy_application(scope, receive, send)
    elif scope["type"] == "lifespan":
        await _lifespan(receive, send)
    else:
        await django_application(scope, receive, send)


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await proxy_application.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
