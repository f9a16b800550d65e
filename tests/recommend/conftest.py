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


# Cold start: four users with 2-3 ratings (under --min-interactions 5) of items nobody else rated; they
# are cold items (not in the model's vocabulary) and these are the cold users. Titles plant text
# similarity: X1 and X2 share a long title, X3 and X4 are digits (the tiny LM's char tokenizer has them).
COLD_USERS = {"900": ["X1", "X2"], "901": ["X2", "X1"], "902": ["X3", "X4"], "903": ["X4", "X3", "A0"]}
COLD_TITLES = {"X1": "the quick brown fox", "X2": "the quick brown fox jumps", "X3": "0123456789",
               "X4": "9876543210"}  # fmt: skip


def write_cold(ratings: Path, items: Path) -> None:
    """Append the cold users to a ratings file and write an items file with the cold items' titles."""
    with open(ratings, "a") as f:
        for u, seq in COLD_USERS.items():
            for i, item in enumerate(seq):
                f.write(f"{u}::{item}::7::{3_000_000 + i}\n")
    items.write_text("".join(f"{k}::{v}::Drama\n" for k, v in COLD_TITLES.items()))


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
    write_cold(root / "ratings.dat", root / "items.dat")
    fornalha("recommend", "prepare", "--ratings", str(root / "ratings.dat"), "--items", str(root / "items.dat"),
             "--out", str(root / "data"))  # fmt: skip
    sets = [a for s in TINY for a in ("--set", s)]
    fornalha("recommend", "train", "--data", str(root / "data"), "--out", str(root / "run"), *sets)
    return root / "run", root / "data"


@pytest.fixture(scope="session")
def lm_run(tmp_path_factory) -> Path:
    """The smallest language-model run the server accepts (random weights, char tokenizer): its text
    embedding is what the cold-start path uses."""
    from tests.store.conftest import tiny_run

    return tiny_run(tmp_path_factory.mktemp("lm"))
