"""Bad input to /v1 gets a clear 4xx in the API's own error shape, never a 500."""

from __future__ import annotations

from datetime import timedelta

import httpx
import pytest
from django.utils import timezone

from gateway.models import LlmModel
from policies.models import ApiKey
from tests.proxy_fixtures import MAX_BODY_BYTES, Setup, wait_until_served

pytestmark = pytest.mark.django_db(transaction=True)

GOOD = {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}]}


def post(
    setup: Setup,
    body: object = None,
    *,
    key: str | None = "a",
    path: str = "chat/completions",
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    sent = dict(headers or {})
    if key == "a":
        sent["Authorization"] = f"Bearer {setup.key_a}"
    elif key is not None:
        sent["Authorization"] = f"Bearer {key}"
    if raw is not None:
        return httpx.post(
            f"{setup.v1}/{path}", content=raw, headers={**sent, "content-type": "application/json"}
        )
    return httpx.post(f"{setup.v1}/{path}", json=body, headers=sent)


def assert_openai_error(
    response: httpx.Response, status: int, *, param: str | None = None, code: str | None = None
) -> dict:  # type: ignore[type-arg]
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": GOOD["messages"]}, "model"),
        ({"model": 42, "messages": GOOD["messages"]}, "model"),
        ({"model": "gpt-test"}, "messages"),
        ({"model": "gpt-test", "messages": "hi"}, "messages"),
        ({"model": "gpt-test", "messages": []}, "messages"),
        ({"model": "gpt-test", "messages": ["hi"]}, "messages[0]"),
        ({**GOOD, "stream": "yes"}, "stream"),
        ({**GOOD, "max_tokens": -1}, "max_tokens"),
        ({**GOOD, "max_tokens": True}, "max_tokens"),
        ({**GOOD, "stream_options": "x"}, "stream_options"),
    ],
)
def test_a_malformed_chat_body_is_a_400_naming_the_field(proxy: Setup, body, param) -> None:  # type: ignore[no-untyped-def]
    assert_openai_error(post(proxy, body), 400, param=param)


def test_malformed_json_is_a_400(proxy: Setup) -> None:
    assert_openai_error(post(proxy, raw=b'{"model": '), 400, code="invalid_json")


def test_a_body_that_is_not_an_object_is_a_400(proxy: Setup) -> None:
    assert_openai_error(post(proxy, [1, 2]), 400, code="invalid_body")


def test_an_oversized_body_is_a_413(proxy: Setup) -> None:
    big = {**GOOD, "messages": [{"role": "user", "content": "x" * (MAX_BODY_BYTES + 1)}]}
    assert_openai_error(post(proxy, big), 413)


def test_an_unknown_model_is_a_404_model_not_found(proxy: Setup) -> None:
    assert_openai_error(post(proxy, {**GOOD, "model": "nope"}), 404, code="model_not_found")


def test_an_inactive_model_is_a_404_model_not_found(proxy: Setup) -> None:
    LlmModel.objects.filter(pk=proxy.chat.pk).update(is_active=False)
    from gateway.proxy.catalog import config_changed

    config_changed()
    import time

    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        response = post(proxy, GOOD)
        if response.status_code == 404:
            break
        time.sleep(0.05)
    assert_openai_error(response, 404, code="model_not_found")


def test_an_embedding_model_on_the_chat_endpoint_is_a_400(proxy: Setup) -> None:
    assert_openai_error(post(proxy, {**GOOD, "model": "embed-test"}), 400, code="wrong_model_type")


def test_an_anthropic_model_on_the_openai_endpoint_is_a_400_pointing_to_messages(
    proxy: Setup,
) -> None:
    error = assert_openai_error(post(proxy, {**GOOD, "model": "claude-test"}), 400)
    assert "/v1/messages" in error["message"]


def test_bad_embedding_input_is_a_400(proxy: Setup) -> None:
    assert_openai_error(
        post(proxy, {"model": "embed-test", "input": ""}, path="embeddings"), 400, param="input"
    )
    assert_openai_error(
        post(proxy, {"model": "embed-test", "input": [{}]}, path="embeddings"), 400, param="input"
    )


def test_anthropic_bad_input_uses_the_anthropic_error_shape(proxy: Setup) -> None:
    response = post(proxy, {"model": "claude-test", "messages": GOOD["messages"]}, path="messages")
    assert response.status_code == 400
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in body["error"]["message"]


@pytest.mark.parametrize(
    ("key", "code"),
    [
        (None, "missing_api_key"),
        ("not-a-key", "invalid_api_key"),
        ("tg_AAAAAAAA_" + "B" * 40, "invalid_api_key"),
    ],
)
def test_a_missing_or_malformed_key_is_a_401(proxy: Setup, key, code) -> None:  # type: ignore[no-untyped-def]
    assert_openai_error(post(proxy, GOOD, key=key), 401, code=code)


def test_a_revoked_or_expired_key_is_a_401(proxy: Setup) -> None:
    from policies.services import apikey_create, apikey_revoke

    _key, raw = apikey_create(
        org=proxy.org_a, name="short-lived", expires_at=timezone.now() + timedelta(seconds=2)
    )
    wait_until_served(proxy.url, raw)
    import time

    time.sleep(2.1)
    assert_openai_error(post(proxy, GOOD, key=raw), 401, code="expired_api_key")
    apikey_revoke(key=ApiKey.objects.get(org=proxy.org_b))
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        response = post(proxy, GOOD, key=proxy.key_b)
        if response.status_code == 401:
            break
        time.sleep(0.05)
    assert_openai_error(response, 401, code="invalid_api_key")


def test_an_unknown_feature_is_a_400(proxy: Setup) -> None:
    assert_openai_error(
        post(proxy, GOOD, headers={"X-Tollgate-Feature": "no-such"}), 400, code="unknown_feature"
    )


def test_a_wrong_method_is_a_405_with_allow(proxy: Setup) -> None:
    response = httpx.get(
        f"{proxy.v1}/chat/completions", headers={"Authorization": f"Bearer {proxy.key_a}"}
    )
    assert_openai_error(response, 405)
    assert response.headers["allow"] == "POST"


def test_an_unknown_endpoint_is_a_404(proxy: Setup) -> None:
    assert_openai_error(post(proxy, GOOD, path="completions-v9"), 404, code="unknown_url")


def test_a_bad_request_id_is_replaced_not_echoed(proxy: Setup) -> None:
    response = post(proxy, GOOD, headers={"X-Request-ID": "bad id\twith spaces"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] != "bad id\twith spaces"
    assert len(response.headers["x-request-id"]) == 32
