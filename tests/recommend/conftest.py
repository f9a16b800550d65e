"""Shared helpers for the recommender tests: small synthetic interaction files."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "recsys"


def write_planted(path: Path, users: int = 120, seed: int = 0) -> None:
    """A MovieTweetings-format file where item 'A<n>' is always followed by 'B<n>' (the planted rule);
    everything else is random among 40 filler items."""
    rng = random.Random(seed)
    lines = []
    for u in range(users):
        t = 1_000_000 + u
        seq = []
        for _ in range(4):
            seq.append(f"F{rng.randrange(40):02d}")
            n = rng.randrange(8)
            seq += [f"A{n}", f"B{n}"]
        dedup = list(dict.fromkeys(seq))
        for i, item in enumerate(dedup):
            lines.append(f"{u}::{item}::7::{t + 60 * i}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    p = tmp_path / "ratings.dat"
    write_planted(p)
    return p


TINY = [
    "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=16", "model.dropout=0.0",
    "train.batch_size=32", "train.max_steps=150", "train.eval_interval=50", "train.lr=0.01",
    "train.progress=false", "train.patience=null",
]  # fmt: skip


def fornalha(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "fornalha.cli", *args], capture_output=True, text=True, timeout=300
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rec")
    write_planted(root / "ratings.dat")
    fornalha("recommend", "prepare", "--ratings", str(root / "ratings.dat"), "--out", str(root / "data"))
    sets = [a for s in TINY for a in ("--set", s)]
    fornalha("recommend", "train", "--data", str(root / "data"), "--out", str(root / "run"), *sets)
    return root / "run", root / "data"
