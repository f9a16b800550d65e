"""Fixtures for the store and web-page tests: a live server in a subprocess on 127.0.0.1.

`live_server` picks the server when the fixture runs: the real `fornalha serve` once
`fornalha.serve.app` exists (on a tiny random-weight run folder), otherwise the test double in
fake_server.py. Either way the test talks to it over HTTP and reads the same SQLite store.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from live_server import free_port

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("FORNALHA_CHROMIUM", "/usr/bin/chromium")


@dataclass
class LiveServer:
    url: str
    db_url: str
    proc: subprocess.Popen
    kind: str  # "fornalha serve" or "test double"

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout)


def tiny_run(root: Path) -> Path:
    """A run folder with a char tokenizer and random weights: enough for the real server to answer."""
    import torch

    from fornalha.checkpoint import model_state_for_saving, save_checkpoint
    from fornalha.model import GPT, ModelConfig
    from fornalha.tokenizer.char import CharTokenizer

    run = root / "run"
    tok = CharTokenizer.train(["the quick brown fox jumps over the lazy dog. é ü ç! 0123456789\n"])
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=2048, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    model = GPT(cfg)
    with torch.no_grad():  # special tokens (end of turn, pad, ...) never win: answers run to max_tokens
        for name, weight in model.named_parameters():
            if name in ("wte.weight", "lm_head.weight"):
                weight[: len(tok.special_ids)] = 0.0
    save_checkpoint(
        run / "checkpoints" / "best",
        model_state_for_saving(model),
        {"model_config": model.config.to_dict(), "step": 0},
    )
    return run


def start_server(tmp: Path, *, delay: float = 0.02, log_prompts: bool = True) -> LiveServer:
    port = free_port()
    db_url = f"sqlite:///{tmp / 'serve.db'}"
    # the server decodes without the C++ kernel (its first build takes ~25 s; tests/infer cover it)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "FORNALHA_NO_KERNELS": "1"}
    if importlib.util.find_spec("fornalha.serve.app") is not None:
        kind = "fornalha serve"
        cmd = [
            sys.executable,
            "-m",
            "fornalha.cli",
            "serve",
            "--run",
            str(tiny_run(tmp)),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--db",
            db_url,
        ]
        if not log_prompts:
            cmd.append("--no-log-prompts")
    else:
        kind = "test double"
        cmd = [
            sys.executable,
            str(HERE / "fake_server.py"),
            "--port",
            str(port),
            "--db",
            db_url,
            "--delay",
            str(delay),
        ]
        if not log_prompts:
            cmd.append("--no-log-prompts")
    log = open(tmp / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited early:\n{(tmp / 'server.log').read_text()}")
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                return LiveServer(url, db_url, proc, kind)
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start in 60 s:\n{(tmp / 'server.log').read_text()}")


@pytest.fixture
def live_server(tmp_path):
    server = start_server(tmp_path)
    yield server
    if server.proc.poll() is None:
        server.stop()


@pytest.fixture
def artifacts_dir() -> Path:
    """Screenshots are kept here after the run (tmp/artifacts/store under the repo root)."""
    path = HERE.parents[1] / "tmp" / "artifacts" / "store"
    path.mkdir(parents=True, exist_ok=True)
    return path
