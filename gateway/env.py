"""Typed reads of environment variables that fail loudly, naming the variable."""

from __future__ import annotations

import builtins
import os
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured

_TRUE: Final = {"1", "true", "yes", "on"}
_FALSE: Final = {"0", "false", "no", "off", ""}


class _Missing:
    pass


REQUIRED: Final = _Missing()


class Env:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ = os.environ if environ is None else environ

    def _raw(self, name: str, default: object) -> str | None:
        value = self.environ.get(name)
        if value is None or value.strip() == "":
            if default is REQUIRED:
                raise ImproperlyConfigured(
                    f"{name} is required but not set (see .env.example for its meaning)"
                )
            return None
        return value.strip()

    def str(self, name: str, default: str | _Missing = REQUIRED) -> str:
        value = self._raw(name, default)
        return value if value is not None else str(default)

    def optional_str(self, name: builtins.str) -> builtins.str | None:
        return self._raw(name, None)

    def bool(self, name: builtins.str, default: bool) -> bool:
        value = self._raw(name, default)
        if value is None:
            return default
        lowered = value.lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise ImproperlyConfigured(f"{name}={value!r} is not a boolean (use true or false)")

    def int(
        self,
        name: builtins.str,
        default: int,
        *,
        minimum: int | None = None,
        maximum: int | None = None,
    ) -> int:
        value = self._raw(name, default)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name}={value!r} is not an integer") from None
        if minimum is not None and number < minimum:
            raise ImproperlyConfigured(f"{name}={number} is below the minimum {minimum}")
        if maximum is not None and number > maximum:
            raise ImproperlyConfigured(f"{name}={number} is above the maximum {maximum}")
        return number

    def float(self, name: builtins.str, default: float, *, minimum: float = 0.0) -> float:
        value = self._raw(name, default)
        if value is None:
            return default
        try:
            number = float(value)
        except ValueError:
            raise ImproperlyConfigured(f"{name}={value!r} is not a number") from None
        if number < minimum:
            raise ImproperlyConfigured(f"{name}={number} is below the minimum {minimum}")
        return number

    def list(self, name: builtins.str, default: list[builtins.str]) -> list[builtins.str]:
        value = self._raw(name, default)
        if value is None:
            return list(default)
        return [item.strip() for item in value.split(",") if item.strip()]

    def url(
        self,
        name: builtins.str,
        *,
        schemes: set[builtins.str],
        default: builtins.str | _Missing = REQUIRED,
    ) -> builtins.str:
        value = self._raw(name, default)
        url = value if value is not None else str(default)
        parts = urlsplit(url)
        if parts.scheme not in schemes:
            raise ImproperlyConfigured(
                f"{name} must be a URL with scheme {' or '.join(sorted(schemes))}; "
                f"got scheme {parts.scheme or '(none)'!r}"
            )
        if parts.scheme not in {"unix", "sqlite"} and not parts.hostname:
            raise ImproperlyConfigured(f"{name} has no host: {_redact(url)}")
        try:
            parts.port  # noqa: B018 - urlsplit validates the port lazily
        except ValueError:
            raise ImproperlyConfigured(f"{name} has an invalid port: {_redact(url)}") from None
        return url


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return url.replace(parts.password, "***")
    return url
