"""API key material: ``tg_<prefix>_<secret>``, stored as prefix + SHA-256 of the whole key.

The secret has ~238 bits of entropy, so a fast hash is safe and keeps authentication
off the request path's CPU budget; the prefix makes lookup an indexed equality.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

_ALPHABET = string.ascii_letters + string.digits
PREFIX_LENGTH = 8
SECRET_LENGTH = 40
KEY_PATTERN = re.compile(rf"^tg_([A-Za-z0-9]{{{PREFIX_LENGTH}}})_([A-Za-z0-9]{{{SECRET_LENGTH}}})$")


@dataclass(frozen=True)
class KeyMaterial:
    raw: str
    prefix: str
    hash: str


def _random(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def generate() -> KeyMaterial:
    prefix = _random(PREFIX_LENGTH)
    raw = f"tg_{prefix}_{_random(SECRET_LENGTH)}"
    return KeyMaterial(raw=raw, prefix=prefix, hash=hash_key(raw))


def parse_prefix(raw: str) -> str | None:
    """The prefix of a well-formed key, else None."""
    match = KEY_PATTERN.match(raw)
    return match.group(1) if match else None


def matches(raw: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_key(raw), stored_hash)
