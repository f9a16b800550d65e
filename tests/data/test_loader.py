"""TokenLoader: shapes, determinism, resume, rank disjointness, epochs; iter_eval_batches."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fornalha.data.loader import TokenLoader, iter_eval_batches
from fornalha.data.shards import write_shard
from fornalha.errors import ConfigError, DataError


def make_shards(root: Path, sizes: list[int], split: str = "train") -> Path:
    """Shards holding 0, 1, 2, ... across files, so a token's value is its global position."""
    root.mkdir(parents=True, exist_ok=True)
    shards, start = [], 0
    for i, n in enumerate(sizes):
        name = f"{split}_{i:05d}.bin"
        write_shard(root / name, np.arange(start, start + n, dtype=np.uint32))
        shards.append({"file": name, "tokens": n})
        start += n
    index = {
        "format": "fornalha-shards",
        "version": 1,
        "dtype": "uint32",
        "vocab_size": 1 << 20,
        "splits": {split: {"shards": shards, "tokens": start, "bytes": start, "documents": 1}},
    }
    (root / "index.json").write_text(json.dumps(index))
    return root


@pytest.fixture()
def shards(tmp_path: Path) -> Path:
    return make_shards(tmp_path / "s", [1000, 37, 2500, 700])


def starts(loader: TokenLoader, n: int) -> list[int]:
    return [int(v) for _ in range(n) for v in loader.next_batch()[0][:, 0]]


def test_shapes_and_targets(shards: Path) -> None:
    import torch

    x, y = TokenLoader(shards, "train", batch_size=4, seq_len=16).next_batch()
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and torch.equal(y[:, -1], x[:, -1] + 1)
    # windows never cross a shard boundary: every row is a run of consecutive positions
    for _ in range(50):
        x, y = TokenLoader(shards, "train", 8, 16, seed=_).next_batch()
        assert (torch.diff(torch.cat([x, y[:, -1:]], 1), dim=1) == 1).all()


def test_deterministic_for_a_seed(shards: Path) -> None:
    a, b, c = (TokenLoader(shards, "train", 4, 16, seed=s) for s in (7, 7, 8))
    assert starts(a, 10) == starts(b, 10) != starts(c, 10)


def test_resume_from_state(shards: Path) -> None:
    loader = TokenLoader(shards, "train", 5, 16, seed=3)
    for _ in range(60):  # past the end of the first epoch (about 261 windows, 5 per batch)
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # survives a JSON round trip
    expected = starts(loader, 20)
    resumed = TokenLoader(shards, "train", 5, 16, seed=3)
    resumed.load_state_dict(state)
    assert starts(resumed, 20) == expected
    assert state["epoch"] == 1


def test_epoch_covers_each_window_once(shards: Path) -> None:
    loader = TokenLoader(shards, "train", 1, 16, seed=0, shuffle=False)
    n = loader.windows_per_epoch
    seen = starts(loader, n)
    assert seen == sorted(seen) and len(set(seen)) == n  # in order, once each
    assert loader.next_batch()[0][0, 0] == 0  # then the next epoch starts over


def test_ranks_are_disjoint(shards: Path) -> None:
    world = 3
    loaders = [TokenLoader(shards, "train", 4, 16, seed=5, rank=r, world_size=world) for r in range(world)]
    per_rank = loaders[0].windows_per_epoch
    assert all(ld.windows_per_epoch == per_rank for ld in loaders)
    seen = [set(starts(ld, per_rank // 4)) for ld in loaders]
    assert all(len(s) == (per_rank // 4) * 4 for s in seen)
    assert not (seen[0] & seen[1]) and not (seen[0] & seen[2]) and not (seen[1] & seen[2])


def test_state_mismatch_and_bad_config(shards: Path) -> None:
    state = TokenLoader(shards, "train", 2, 16, seed=1).state_dict()
    with pytest.raises(ConfigError, match="seq_len"):
        TokenLoader(shards, "train", 2, 32, seed=1).load_state_dict(state)
    with pytest.raises(ConfigError, match="rank"):
        TokenLoader(shards, "train", 2, 16, rank=2, world_size=2)
    with pytest.raises(DataError, match="too few"):
        TokenLoader(shards, "train", 2, 5000)
    with pytest.raises(DataError, match="no 'val' split"):
        TokenLoader(shards, "val", 2, 16)


def test_eval_batches_are_sequential_and_repeatable(shards: Path) -> None:
    batches = list(iter_eval_batches(shards, "train", batch_size=8, seq_len=100))
    again = list(iter_eval_batches(shards, "train", batch_size=8, seq_len=100))
    assert all((a[0] == b[0]).all() and (a[1] == b[1]).all() for a, b in zip(batches, again))
    rows = [int(v) for x, _ in batches for v in x[:, 0]]
    # shard sizes 1000, 37, 2500, 700 -> 9 + 0 + 24 + 6 windows of 101 tokens, starting every 100
    assert len(rows) == 39 and rows[:3] == [0, 100, 200] and rows[9] == 1037
    assert [x.shape[0] for x, _ in batches] == [8, 8, 8, 8, 7]
    assert len(list(iter_eval_batches(shards, "train", 8, 100, max_batches=2))) == 2
    split = [list(iter_eval_batches(shards, "train", 8, 100, rank=r, world_size=2)) for r in range(2)]
    assert [len(s) for s in split] == [3, 2]
