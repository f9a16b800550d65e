"""The recommender through `fornalha serve --run LM --recommender REC` (the serve helper's CLI).

It needs a language-model run too; `lm_run` is a tiny random one (the recommender does not use it).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from tests.store.conftest import tiny_run


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    """The smallest language-model run the server accepts (random weights, char tokenizer)."""
    return tiny_run(tmp_path_factory.mktemp("lm"))


def test_serve_with_recommender(lm_run, trained):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "fornalha.cli", "serve", "--run", str(lm_run), "--recommender",
                             str(trained[0]), "--host", "127.0.0.1", "--port", str(port)], env={**os.environ, "FORNALHA_NO_KERNELS": "1"})  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}/v1/recommendations"
        deadline = time.time() + 120
        while True:
            try:
                r = httpx.post(url, json={"history": ["A4"], "k": 3}, timeout=10)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.time() < deadline, "fornalha serve did not start"
                time.sleep(0.5)
        assert r.status_code == 200 and r.json()["data"][0]["item"] == "B4"
        bad = httpx.post(url, json={"history": ["A4", "nope"]}, timeout=10)
        assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
