"""The recommender through `fornalha serve --run LM --recommender REC` (the serve helper's CLI).

It needs a language-model run too; `lm_run` is a tiny random one, whose text embedding (the one
`/v1/embeddings` returns) answers histories of cold items only.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx


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
        assert r.json()["source"] == "model"
        cold = httpx.post(url, json={"history": ["X1"], "k": 3}, timeout=10)
        assert cold.status_code == 200 and cold.json()["source"] == "content", cold.text
        assert cold.json()["data"][0] == {"item": "X2", "score": cold.json()["data"][0]["score"],
                                          "title": "the quick brown fox jumps"}  # fmt: skip
        bad = httpx.post(url, json={"history": ["A4", "nope"]}, timeout=10)
        assert bad.status_code == 400 and "nope" in bad.json()["error"]["message"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
