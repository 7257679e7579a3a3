"""Alert email through Django's SMTP backend, opened with the SMTP settings in the database.

The backend is Django's own; this module only adds what it lacks for alerting: the
server's final answer to DATA (a receipt, and what "send test email" shows), trust in a
private CA (``settings.TOLLGATE_SMTP_CA_FILE``), and errors that say whether to retry.
"""

from __future__ import annotations

import contextlib
import smtplib
import ssl
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.core.mail import EmailMultiAlternatives
from django.core.mail.backends.smtp import EmailBackend
from django.utils.functional import cached_property

from alerts.models import SmtpSettings
from alerts.notifiers.base import DeliveryError, Notifier, PermanentError, TransientError
from gateway.crypto import SecretDecryptionError

if TYPE_CHECKING:
    from alerts.models import Alert
    from alerts.notifiers.message import Message


class _RepliesMixin:
    """Keeps the server's answer to DATA, which ``sendmail`` reads and throws away."""

    last_reply = ""

    def data(self, msg: Any) -> tuple[int, bytes]:
        code, reply = super().data(msg)  # type: ignore[misc]
        self.last_reply = f"{code} {reply.decode(errors='replace')}".strip()
        return code, reply


class _SMTP(_RepliesMixin, smtplib.SMTP):
    pass


class _SMTP_SSL(_RepliesMixin, smtplib.SMTP_SSL):
    pass


class AlertEmailBackend(EmailBackend):
    """Django's SMTP backend, keeping replies and trusting ``TOLLGATE_SMTP_CA_FILE``."""

    @property
    def connection_class(self) -> type[smtplib.SMTP]:
        return _SMTP_SSL if self.use_ssl else _SMTP

    @cached_property
    def ssl_context(self) -> ssl.SSLContext:
        # Django trusts only the system's CAs (and takes a client certificate); a server
        # with a certificate from a private CA needs that CA, e.g. a test's own.
        context: ssl.SSLContext = super().ssl_context
        ca_file = getattr(django_settings, "TOLLGATE_SMTP_CA_FILE", None)
        if ca_file:
            context.load_verify_locations(cafile=ca_file)
        return context


def backend_for(smtp: SmtpSettings) -> AlertEmailBackend:
    if not smtp.configured:
        raise PermanentError("SMTP is not configured: set the host and the from address")
    try:
        password = smtp.password
    except SecretDecryptionError as exc:
        raise PermanentError(f"the SMTP password cannot be read: {exc}") from None
    return AlertEmailBackend(
        host=smtp.host,
        port=smtp.port,
        username=smtp.username,
        password=password,
        use_tls=smtp.tls_mode == SmtpSettings.TlsMode.STARTTLS,
        use_ssl=smtp.tls_mode == SmtpSettings.TlsMode.TLS,
        timeout=smtp.timeout_seconds,
        fail_silently=False,
    )


def _reply_text(code: int, reply: bytes | str) -> str:
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    return f"{code} {' '.join(text.split())}"


def delivery_error(exc: Exception, smtp: SmtpSettings) -> DeliveryError:
    """What an exception from smtplib or the socket means for retrying."""
    server = f"{smtp.host}:{smtp.port}"
    if isinstance(exc, smtplib.SMTPAuthenticationError):
        return PermanentError(
            f"the SMTP server refused the login ({_reply_text(exc.smtp_code, exc.smtp_error)}):"
            " check the username and password"
        )
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        refused = "; ".join(
            f"{address}: {_reply_text(code, reply)}"
            for address, (code, reply) in exc.recipients.items()
        )
        return PermanentError(f"the SMTP server refused every recipient ({refused})")
    if isinstance(exc, smtplib.SMTPNotSupportedError):
        # STARTTLS or AUTH not offered: the TLS mode or the credentials do not fit the server.
        return PermanentError(f"the SMTP server at {server} does not support this: {exc}")
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return TransientError(f"the SMTP server at {server} closed the connection: {exc}")
    if isinstance(exc, smtplib.SMTPResponseException):
        # SMTPSenderRefused, SMTPDataError, SMTPHeloError...: 4xx is "try later", 5xx is "no".
        reply = _reply_text(exc.smtp_code, exc.smtp_error)
        error_class = TransientError if 400 <= exc.smtp_code < 500 else PermanentError
        return error_class(f"the SMTP server at {server} answered {reply}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentError(
            f"the SMTP server's TLS certificate is not trusted ({exc.verify_message})"
        )
    if isinstance(exc, TimeoutError):
        return TransientError(f"the SMTP server at {server} did not answer in time")
    if isinstance(exc, smtplib.SMTPException | OSError):
        # Connection refused or reset, DNS failure, a TLS handshake cut short.
        return TransientError(f"could not talk to the SMTP server at {server}: {exc}")
    return TransientError(f"{type(exc).__name__}: {exc}")


def send_with(smtp: SmtpSettings, email: EmailMultiAlternatives) -> str:
    """Send ``email`` with ``smtp``; return the server's answer to DATA."""
    backend = backend_for(smtp)
    email.from_email = smtp.from_address
    try:
        # Opened here rather than by send_messages, so the connection (and its last
        # reply) is still there after the message went out.
        backend.open()
        backend.send_messages([email])
        connection = backend.connection
        reply = getattr(connection, "last_reply", "") or "accepted"
    except Exception as exc:
        raise delivery_error(exc, smtp) from exc
    finally:
        # A failed QUIT after an accepted message must not turn into a retry (and a
        # second copy of the email); after a failure it would hide the real error.
        with contextlib.suppress(smtplib.SMTPException, OSError):
            backend.close()
    return reply


def split_addresses(value: str) -> list[str]:
    return [part.strip() for part in value.replace(";", ",").split(",") if part.strip()]


def recipients_for(channel_to: list[str] | str, alert: Alert) -> list[str]:
    """The channel's list, the org's and the feature's ``alert_email_to``, deduplicated."""
    from policies.models import Feature

    addresses = (
        split_addresses(channel_to) if isinstance(channel_to, str) else list(channel_to or [])
    )
    if alert.org is not None:
        addresses += split_addresses(alert.org.alert_email_to)
    if alert.feature:
        feature = Feature.objects.filter(name=alert.feature).only("alert_email_to").first()
        if feature is not None:
            addresses += split_addresses(feature.alert_email_to)
    seen: set[str] = set()
    unique = []
    for address in addresses:
        if address.lower() not in seen:
            seen.add(address.lower())
            unique.append(address)
    return unique


class EmailNotifier(Notifier):
    kind = "email"

    def send(self, alert: Alert, message: Message) -> str:
        to = recipients_for(self.channel.config.get("to") or [], alert)
        if not to:
            raise PermanentError(
                "no recipients: the channel, the org and the feature have no alert email"
            )
        email = EmailMultiAlternatives(subject=message.subject, body=message.text, to=to)
        email.attach_alternative(message.html, "text/html")
        return send_with(SmtpSettings.load(), email)


def send_test_email(*, settings: SmtpSettings, to: str) -> str:
    """Send a test email with ``settings`` (saved or not); return the server's answer.

    Raises ``DeliveryError`` with the server's error, for the admin and the API to show.
    """
    if not to.strip():
        raise PermanentError("no recipient for the test email")
    email = EmailMultiAlternatives(
        subject="[Tollgate] Test email",
        body=(
            "This is a test email from Tollgate.\n\n"
            f"It went through {settings.host}:{settings.port} "
            f"(TLS: {settings.get_tls_mode_display()}). Alert email will arrive the same way.\n"
        ),
        to=[to.strip()],
    )
    return send_with(settings, email)
