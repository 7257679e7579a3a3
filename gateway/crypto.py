"""Encryption at rest for secrets (provider keys, SMTP passwords, webhook URLs)."""

from __future__ import annotations

from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


class SecretDecryptionError(RuntimeError):
    """A stored secret cannot be decrypted with any key in TOLLGATE_ENCRYPTION_KEY."""


@lru_cache(maxsize=4)
def _fernet(keys: tuple[str, ...]) -> MultiFernet:
    return MultiFernet([Fernet(key.encode()) for key in keys])


def _current() -> MultiFernet:
    return _fernet(tuple(settings.TOLLGATE_ENCRYPTION_KEYS))


def encrypt(plaintext: str) -> str:
    """Ciphertext for ``plaintext``; the empty string stays empty (no secret set)."""
    if plaintext == "":
        return ""
    return _current().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    if ciphertext == "":
        return ""
    try:
        return _current().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise SecretDecryptionError(
            "a stored secret cannot be decrypted: TOLLGATE_ENCRYPTION_KEY does not contain "
            "the key it was encrypted with"
        ) from None


def reencrypt(ciphertext: str) -> str:
    """The same secret encrypted with the current first key (for key rotation)."""
    if ciphertext == "":
        return ""
    return _current().rotate(ciphertext.encode()).decode()
