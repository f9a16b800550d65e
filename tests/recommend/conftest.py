"""Shared helpers for the recommender tests: small synthetic interaction files."""

from __future__ import annotations

import random
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
