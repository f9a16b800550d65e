"""POST /v1/recommendations: in-process (TestClient) and through a live uvicorn server on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from fornalha.recommend.api import build_router
from fornalha.recommend.recommender import Recommender


@pytest.fixture(scope="module")
def client(trained):
    app = FastAPI()
    app.include_router(build_router(Recommender(trained[0])))
    return TestClient(app)


def test_ranked_items_follow_the_rule(client):
    r = client.post("/v1/recommendations", json={"history": ["F02", "A5"], "k": 4})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 4 and data[0]["item"] == "B5"
    assert [d["score"] for d in data] == sorted((d["score"] for d in data), reverse=True)
    assert not {"F02", "A5"} & {d["item"] for d in data}
    seen = client.post("/v1/recommendations", json={"history": ["A5", "B5"], "k": 60, "exclude_seen": False})
    assert {"A5", "B5"} <= {d["item"] for d in seen.json()["data"]}


@pytest.mark.parametrize(
    "body, param, code",
    [
        ({"history": ["A1", "ZZZ", "YYY"]}, "history", "unknown_item"),
        ({"history": []}, "history", "invalid_value"),
        ({"history": ["A1"], "k": 0}, "k", "invalid_value"),
        ({"history": ["A1"], "temperature": 1}, "temperature", "invalid_value"),
    ],
)
def test_bad_requests_are_openai_shaped_400s(client, body, param, code):
    r = client.post("/v1/recommendations", json=body)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] == param and err["code"] == code and err["type"] == "invalid_request_error"
    if code == "unknown_item":
        assert "ZZZ" in err["message"] and "YYY" in err["message"] and err["unknown_items"] == ["ZZZ", "YYY"]
    assert client.post("/v1/recommendations", content=b"{not json").status_code == 400


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_live_server(trained):
    port = free_port()
    code = (
        "import uvicorn; from fastapi import FastAPI; from fornalha.recommend.api import build_router; "
        "from fornalha.recommend.recommender import Recommender; app = FastAPI(); "
        f"app.include_router(build_router(Recommender({str(trained[0])!r}))); "
        f"uvicorn.run(app, host='127.0.0.1', port={port}, log_level='warning')"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}/v1/recommendations"
        deadline = time.time() + 60
        while True:
            try:
                r = httpx.post(url, json={"history": ["A2"], "k": 3}, timeout=10)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.time() < deadline, "server did not start"
                time.sleep(0.3)
        assert r.status_code == 200 and r.json()["data"][0]["item"] == "B2"
        bad = httpx.post(url, json={"history": ["A2", "nope"]}, timeout=10)
        assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=20)
