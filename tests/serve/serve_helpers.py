"""A run folder with a tiny random model and a live `fornalha serve` in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from fornalha.checkpoint import model_state_for_saving, save_checkpoint
from fornalha.model import GPT, ModelConfig
from fornalha.tokenizer.char import CharTokenizer

TEXT = "the quick brown fox jumps over the lazy dog. é ü ç! 0123456789\nABCDEFGHIJKLMNOPQRSTUVWXYZ,;:?"
KEY = "sk-test-key-1"


def make_run(root: Path, block_size: int = 160) -> Path:
    """A run folder: a character tokenizer and a random tiny model (sharp logits: no greedy near-ties)."""
    run = root / "run"
    tok = CharTokenizer.train([TEXT])
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2,
                      n_embd=32, init_std=0.3)  # fmt: skip
    model = GPT(cfg)
    save_checkpoint(run / "checkpoints" / "best", model_state_for_saving(model),
                    {"model_config": model.config.to_dict(), "step": 0})  # fmt: skip
    return run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`fornalha serve` in a subprocess on a free loopback port; waits for /ready."""

    def __init__(self, run: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {
            **os.environ,
            "FORNALHA_API_KEYS": KEY,
            "OMP_NUM_THREADS": "1",
            "FORNALHA_NO_KERNELS": "1",
            **(env or {}),
        }
        cmd = [sys.executable, "-m", "fornalha.cli", "serve", "--run", str(run), "--port", str(self.port),
               "--model-name", "tiny", "--device", "cpu", *args]  # fmt: skip
        self.proc = subprocess.Popen(
            cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read()}")
            try:
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("server did not become ready")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")
