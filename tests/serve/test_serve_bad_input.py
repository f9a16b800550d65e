"""Bad input is a 4xx in OpenAI's error shape, never a 500: hand-written cases and schemathesis."""

from __future__ import annotations

import httpx
import pytest
from serve_helpers import KEY

H = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}


def post(server, path, content: bytes, headers=None):
    return httpx.post(server.url + path, content=content, headers=headers or H, timeout=30)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"model": "tiny", "prompt": "a"', None),  # malformed JSON
        (b'{"model": "tiny", "prompt": "\xff\xfe"}', None),  # invalid UTF-8
        (b'{"model": "tiny", "prompt": 5}', "prompt"),  # wrong type
        (b'{"model": "tiny", "prompt": "a", "max_tokens": 0}', "max_tokens"),
        (b'{"model": "tiny", "prompt": "a", "max_tokens": "ten"}', "max_tokens"),
        (b'{"model": "tiny", "prompt": "a", "temperature": -1}', "temperature"),
        (b'{"model": "tiny", "prompt": "a", "logit_bias": {"1": 5}}', "logit_bias"),
        (b'{"model": "tiny", "prompt": "a", "stop": ["a", "b", "c", "d", "e"]}', "stop"),
        (b'{"model": "tiny", "prompt": []}', "prompt"),
        (b"[1, 2]", None),
    ],
)
def test_completions_400(server, body, param):
    r = post(server, "/v1/completions", body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param


def test_chat_400s(server):
    r = post(server, "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "a"}],'
             b' "tools": []}')  # fmt: skip
    assert r.status_code == 400 and "tools" in r.json()["error"]["message"]
    r = post(
        server, "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "robot", "content": "a"}]}'
    )
    assert r.status_code == 400
    r = post(server, "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "'
             + b"a" * 400 + b'"}]}')  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = post(server, "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "a"}],'
             b' "ignore_eos": true, "response_format": {"type": "json_object"}}')  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "ignore_eos"
    r = post(server, "/v1/chat/completions", b'{"model": "tiny", "messages": [{"role": "user", "content": "a"}],'
             b' "ignore_eos": [1]}')  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "ignore_eos"


def test_oversized_body_and_auth(server):
    r = post(server, "/v1/completions", b'{"model": "tiny", "prompt": "' + b"a" * (2 << 20) + b'"}')
    assert r.status_code == 400 and r.json()["error"]["code"] == "body_too_large"
    r = post(
        server, "/v1/completions", b'{"model": "tiny", "prompt": "a"}', {"Content-Type": "application/json"}
    )
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    assert httpx.get(server.url + "/v1/nothing-here", headers=H).status_code == 404


def test_schemathesis_no_5xx(server):
    """Generated requests (valid and invalid) for every POST endpoint: no 5xx, bounded examples."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    failures = []
    for path in ("/v1/completions", "/v1/chat/completions", "/v1/embeddings"):
        operation = schema[path]["POST"]

        @settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
        @given(case=operation.as_strategy())
        def run(case):
            case.headers = {**(case.headers or {}), "Authorization": f"Bearer {KEY}"}
            if isinstance(case.body, dict):  # keep generations short: this is about input handling
                case.body["max_tokens"] = 2
            resp = case.call(timeout=30)
            if resp.status_code >= 500:
                failures.append((path, case.body, resp.status_code, resp.text[:200]))  # noqa: B023 (called at once)

        run()
    assert not failures, failures
