from __future__ import annotations

import pytest
from cryptography.fernet import Fernet
from django.db import connection

from gateway import crypto
from gateway.models import Provider

pytestmark = pytest.mark.django_db


def test_a_secret_round_trips_and_is_not_stored_in_clear(shared_provider: Provider) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT api_key_ciphertext FROM gateway_provider WHERE id = %s", [shared_provider.pk]
        )
        (stored,) = cursor.fetchone()
    assert "sk-shared-secret" not in stored
    assert Provider.objects.get(pk=shared_provider.pk).api_key == "sk-shared-secret"


def test_an_empty_secret_means_none_is_set() -> None:
    assert crypto.encrypt("") == ""
    assert crypto.decrypt("") == ""


def test_a_rotated_in_key_still_reads_old_secrets(settings) -> None:  # type: ignore[no-untyped-def]
    old = crypto.encrypt("sk-old")
    new_key = Fernet.generate_key().decode()
    settings.TOLLGATE_ENCRYPTION_KEYS = [new_key, *settings.TOLLGATE_ENCRYPTION_KEYS]
    assert crypto.decrypt(old) == "sk-old"
    rotated = crypto.reencrypt(old)
    settings.TOLLGATE_ENCRYPTION_KEYS = [new_key]
    assert crypto.decrypt(rotated) == "sk-old"


def test_a_wrong_key_fails_loudly(settings) -> None:  # type: ignore[no-untyped-def]
    secret = crypto.encrypt("sk-x")
    settings.TOLLGATE_ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    with pytest.raises(crypto.SecretDecryptionError):
        crypto.decrypt(secret)
