"""Job result webhooks, signed with HMAC-SHA256 so the receiver can trust them.

The header ``X-Tollgate-Signature: t=<unix seconds>,v1=<hex>`` carries
``HMAC-SHA256(secret, "<t>." + body)``; the secret is the org's (shown in the admin on the
organization's page). Receivers check the signature and that ``t`` is recent, and treat a
repeated ``X-Tollgate-Job-Id`` as the same delivery (a retry after a timeout).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import socket
import time
from urllib.parse import urlsplit

import httpx
from django.conf import settings

from gateway.jobs.models import Job
from gateway.jobs.selectors import job_json

SIGNATURE_HEADER = "X-Tollgate-Signature"


def callback_secret(org_id: int) -> str:
    """The org's callback signing secret, derived from SECRET_KEY (rotates with it)."""
    digest = hmac.new(
        settings.SECRET_KEY.encode(), f"tollgate job callbacks {org_id}".encode(), hashlib.sha256
    ).hexdigest()
    return f"whsec_{digest}"


def callback_signature(secret: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def private_address(host: str) -> bool:
    """True when ``host`` is (or resolves to) a loopback, private, link-local or otherwise
    non-public address; names that do not resolve count as private."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return True
    return any(not ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_global for info in infos)


def callback_allowed(url: str, *, resolve: bool = True) -> bool:
    """May a callback go to this URL's host? Without ``resolve`` (the request path) only an
    IP literal is judged; a name is judged when the callback is sent."""
    if settings.TOLLGATE_JOB_CALLBACK_PRIVATE:
        return True
    host = urlsplit(url).hostname or ""
    if not resolve:
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return True
    return bool(host) and not private_address(host)


def job_callback_deliver(*, job_id: str) -> str:
    """POST a finished job to its callback URL once: "delivered", "retry", "failed" or
    "skipped" (no longer pending)."""
    job = Job.objects.filter(pk=job_id).first()
    if job is None or job.status not in Job.FINISHED or job.callback_status != Job.Callback.PENDING:
        return "skipped"
    body = json.dumps(job_json(job, with_position=False)).encode()
    timestamp = int(time.time())
    headers = {
        "content-type": "application/json",
        "user-agent": "tollgate/0.1",
        "x-tollgate-job-id": job.public_id,
        SIGNATURE_HEADER: callback_signature(callback_secret(job.org_id), timestamp, body),
    }
    attempts = job.callback_attempts + 1
    if not callback_allowed(job.callback_url):
        Job.objects.filter(pk=job.pk).update(
            callback_status=Job.Callback.FAILED,
            callback_attempts=attempts,
            callback_error="not sent: the callback host is not a public address",
        )
        return "failed"
    try:
        response = httpx.post(
            job.callback_url,
            content=body,
            headers=headers,
            timeout=settings.TOLLGATE_JOB_CALLBACK_TIMEOUT,
            follow_redirects=False,
        )
        delivered = 200 <= response.status_code < 300
        error = "" if delivered else f"HTTP {response.status_code}"
    except httpx.HTTPError as exc:
        delivered, error = False, f"{type(exc).__name__}: {exc}"[:300]
    if delivered:
        status = Job.Callback.DELIVERED
    elif attempts >= settings.TOLLGATE_JOB_CALLBACK_ATTEMPTS:
        status = Job.Callback.FAILED
    else:
        status = Job.Callback.PENDING
    Job.objects.filter(pk=job.pk).update(
        callback_status=status, callback_attempts=attempts, callback_error=error
    )
    if status == Job.Callback.PENDING:
        return "retry"
    return "delivered" if delivered else "failed"
