"""POST /v1/feedback through FastAPI (the router on the test-double app): OpenAI-shaped 400s, nothing written."""

from __future__ import annotations

import pytest
from fake_server import create_app
from fastapi.testclient import TestClient


@pytest.fixture
def client(tmp_path, monkeypatch):
    monkeypatch.setattr("fornalha.serve.store.FEEDBACK_WAIT_S", 0.2)
    with TestClient(create_app(f"sqlite:///{tmp_path / 'serve.db'}", delay=0)) as c:
        yield c


def completion_id(client) -> str:
    r = client.post(
        "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    )
    assert r.status_code == 200
    return r.json()["id"]


def assert_openai_400(r, param=None):
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error" and err["message"]
    if param is not None:
        assert err["param"] == param


def test_feedback_is_stored(client):
    cid = completion_id(client)
    r = client.post("/v1/feedback", json={"completion_id": cid, "rating": 1, "comment": "nice"})
    assert r.status_code == 200 and r.json()["completion_id"] == cid
    rows = client.app.state.store.list_feedback(cid)
    assert [(x["rating"], x["comment"]) for x in rows] == [(1, "nice")]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"completion_id": "chatcmpl-unknown", "rating": 1}, "completion_id"),
        ({"completion_id": "CID", "rating": 5}, "rating"),
        ({"completion_id": "CID", "rating": 0}, "rating"),
        ({"completion_id": "CID", "rating": "1"}, "rating"),
        ({"completion_id": "CID", "rating": 1, "comment": "x" * 4001}, "comment"),
        ({"completion_id": "CID"}, "rating"),
        ({"completion_id": "CID", "rating": 1, "stars": 5}, "stars"),
    ],
)
def test_bad_feedback_is_a_400_and_nothing_is_written(client, body, param):
    cid = completion_id(client)
    body = {k: (cid if v == "CID" else v) for k, v in body.items()}
    assert_openai_400(client.post("/v1/feedback", json=body), param)
    assert client.app.state.store.counts()["feedback"] == 0


def test_malformed_json_and_oversized_body_are_400(client):
    assert_openai_400(
        client.post("/v1/feedback", content=b"{not json", headers={"content-type": "application/json"})
    )
    assert_openai_400(
        client.post("/v1/feedback", content=b"\xff\xfe", headers={"content-type": "application/json"})
    )
    assert_openai_400(client.post("/v1/feedback", json=[1, 2]))
    assert_openai_400(client.post("/v1/feedback", content=b"{" + b" " * 70000 + b"}"))
    assert client.app.state.store.counts()["feedback"] == 0


def test_page_and_assets_are_served_without_external_resources(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for name in ("chat.js", "chat.css"):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and len(r.text) > 500
        assert "http://" not in r.text and "https://" not in r.text
    assert "https://" not in page.text and "http://" not in page.text
    assert client.get("/static/../store.py").status_code == 404
