"""Helpers for the registry and hot-swap tests: tiny run folders (char tokenizer, random weights), the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from fornalha.checkpoint import model_state_for_saving, save_checkpoint
from fornalha.model import GPT, ModelConfig
from fornalha.tokenizer.char import CharTokenizer

TEXT = "the quick brown fox jumps over the lazy dog. é ü ç! 0123456789\nABCDEFGHIJKLMNOPQRSTUVWXYZ,;:?"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def make_run(root: Path, name: str, seed: int, *, metrics: dict | None = None, parent: Path | None = None,
             block_size: int = 256) -> Path:  # fmt: skip
    """A run folder whose best checkpoint is a random tiny GPT (seed decides the weights).

    Sharp logits (init_std=0.3) make greedy answers of two seeds differ and stay stable.
    """
    run = root / name
    tok = CharTokenizer.train([TEXT])
    tok.save(run / "tokenizer")
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2,
                      n_embd=32, init_std=0.3)  # fmt: skip
    model = GPT(cfg)
    with torch.no_grad():  # special tokens never win: answers run to max_tokens
        model.wte.weight[: len(tok.special_ids)] = 0.0
        if not cfg.tie_embeddings:
            model.lm_head.weight[: len(tok.special_ids)] = 0.0
    m = dict(metrics or {})
    meta = {"model_config": model.config.to_dict(), "step": 10, "val_loss": m.get("val_loss"),
            "val_bpb": m.get("val_bpb"), "metrics": m,
            "lineage": {"parent": str(parent) if parent else None, "created": "2026-12-01T00:00:00+0000"}}  # fmt: skip
    save_checkpoint(run / "checkpoints" / "best", model_state_for_saving(model), meta)
    return run


def fornalha(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command line in a subprocess."""
    full = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {})}
    return subprocess.run([sys.executable, "-m", "fornalha.cli", *args], capture_output=True, text=True,
                          env=full, timeout=timeout)  # fmt: skip
