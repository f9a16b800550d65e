"""`/explain` on a live `fornalha serve` (subprocess on 127.0.0.1): the chat page links to it, a text typed
there is explained by the running model, and bad bodies are 400s with OpenAI-shaped errors."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from explain_helpers import assert_not_blank

from fornalha.explain import decode_attention
from live_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def start_server(run: Path, tmp: Path, api_keys: str = ""):
    """`fornalha serve` in a subprocess on 127.0.0.1; returns (url, process) once /ready answers."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1", "FORNALHA_NO_KERNELS": "1",
           "FORNALHA_API_KEYS": api_keys}  # fmt: skip
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    cmd = [sys.executable, "-m", "fornalha.cli", "serve", "--run", str(run), "--host", "127.0.0.1",
           "--port", str(port), "--db", f"sqlite:///{tmp / 'serve.db'}"]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        assert proc.poll() is None, (tmp / "server.log").read_text()
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return url, proc
        except httpx.TransportError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail("server did not start in 60 s")
        time.sleep(0.2)


@pytest.fixture
def server(tiny_run, tmp_path):
    url, proc = start_server(tiny_run, tmp_path)
    yield url
    proc.terminate()
    proc.wait(30)


def test_explain_api_asks_for_the_api_key_when_the_server_has_keys(tiny_run, tmp_path):
    url, proc = start_server(tiny_run, tmp_path, api_keys="sekret")
    try:
        r = httpx.post(url + "/v1/explain", json={"text": "the dog"}, timeout=30)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(url + "/v1/explain", json={"text": "the dog"}, timeout=30,
                       headers={"Authorization": "Bearer sekret"})  # fmt: skip
        assert r.status_code == 200 and len(r.json()["tokens"]) == 8
    finally:
        proc.terminate()
        proc.wait(30)


def test_explain_api_answers_and_refuses_bad_bodies(server):
    res = httpx.post(server + "/v1/explain", json={"text": "the dog"}, timeout=30)
    assert res.status_code == 200
    body = res.json()
    assert [t["text"] for t in body["tokens"]] == ["<|bos|>", "t", "h", "e", " ", "d", "o", "g"]
    maps = decode_attention(body["attention"])
    assert maps.shape == (2, 4, 8, 8) and abs(maps.sum(-1) - 1).max() < 1e-3
    bad = {
        "empty": {"text": " "},
        "context is 64 tokens": {"text": "a" * 100},
        "must be": {"prompt": "x"},
        "unsupported parameter": {"text": "a", "layer": 1},
    }
    for expected, payload in bad.items():
        r = httpx.post(server + "/v1/explain", json=payload, timeout=30)
        assert r.status_code == 400, (payload, r.text)
        assert expected in r.json()["error"]["message"]
    r = httpx.post(server + "/v1/explain", content=b"{not json", timeout=30)
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    # the server still answers chat after explaining
    r = httpx.post(
        server + "/v1/chat/completions",
        json={"model": "run", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        timeout=30,
    )
    assert r.status_code == 200, r.text


def test_chat_page_links_to_explain_and_it_explains_a_typed_text(server, browser, artifacts_dir):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.click("#explain-link")
    page.wait_for_url(server + "/explain")
    assert page.is_visible("#text-input") and not page.is_visible("#view")
    page.fill("#text-input", "a" * 90)  # too long for the 64-token context: the error is shown
    page.click("#explain-button")
    page.wait_for_selector("#status.error", timeout=20000)
    assert "context is 64 tokens" in page.text_content("#status")

    page.fill("#text-input", "the lazy dog jumps over the fox")
    page.click("#explain-button")
    page.wait_for_selector("body[data-ready='true']", timeout=20000)
    assert page.locator("#tokens .tok").count() == 32
    before = page.text_content("#focus")
    page.locator("#tokens .tok").nth(10).click()
    assert page.get_attribute("#focus", "data-selected") == "10" and page.text_content("#focus") != before
    assert page.locator("#attends li").count() == 11 and page.locator("#topk li").count() == 10
    page.select_option("#head", "avg")
    page.select_option("#layer", "1")
    assert "layer 1, average of the heads" in page.text_content("#attends-title")
    page.screenshot(path=str(artifacts_dir / "explain-live.png"), full_page=True)
    assert_not_blank(artifacts_dir / "explain-live.png")
    assert errors == []
    ctx.close()
