"""Batches of (input, target) token windows from memory-mapped shards.

A split's shards are cut into *windows* of ``seq_len + 1`` tokens that start every ``seq_len``
tokens (consecutive windows share one token: the last target of one is the first input of the
next). A window gives one training row: ``x = window[:-1]``, ``y = window[1:]`` (predict the
next token). Windows never cross a shard boundary.

`TokenLoader` (training) walks the windows in *epochs*:

* each epoch shuffles the windows with a generator seeded by ``(seed, epoch)`` and shifts the
  window grid by a random offset in ``[0, seq_len)`` (so a token is not always at the same
  position of its row) — nanoGPT samples random offsets for the same reason;
* data-parallel rank ``r`` of ``W`` takes the epoch's windows ``r, r + W, r + 2W, ...``, so the
  ranks never see the same window in an epoch (disjoint), and all of them see equally many;
* the position is two integers (epoch, windows consumed), so `state_dict()` is a small JSON
  object and `load_state_dict` resumes exactly where a checkpoint stopped.

With ``shuffle=False`` the windows come in file order with no shift.

`iter_eval_batches` (validation) walks a split once, in order, from the start: the same
batches every call, so validation losses are comparable across a run.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from fornalha.data.shards import open_shard, read_index
from fornalha.errors import ConfigError, DataError

STATE_VERSION = 1


def _open_split(shards_dir: str | Path, split: str) -> list[np.ndarray]:
    index = read_index(shards_dir)
    info = index["splits"].get(split)
    if info is None:
        raise DataError(
            f"shards in {shards_dir} have no {split!r} split (have: {', '.join(index['splits'])})"
        )
    return [open_shard(Path(shards_dir) / shard["file"]) for shard in info["shards"]]


def _to_torch(rows: np.ndarray, device: str | None):
    import torch

    x = torch.from_numpy(np.ascontiguousarray(rows[:, :-1]))
    y = torch.from_numpy(np.ascontiguousarray(rows[:, 1:]))
    if device is not None and device != "cpu":
        pin = device.startswith("cuda")
        if pin:
            x, y = x.pin_memory(), y.pin_memory()
        x, y = x.to(device, non_blocking=pin), y.to(device, non_blocking=pin)
    return x, y


class TokenLoader:
    """Deterministic, resumable, rank-disjoint training batches (see the module docstring).

    ``next_batch()`` returns ``(x, y)``, int64 tensors of shape ``[batch_size, seq_len]``,
    moved to ``device`` if given.
    """

    def __init__(
        self,
        shards_dir: str | Path,
        split: str,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        device: str | None = None,
    ):
        if batch_size < 1 or seq_len < 1:
            raise ConfigError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank must be in [0, world_size), got rank {rank} of {world_size}")
        self.split, self.batch_size, self.seq_len = split, batch_size, seq_len
        self.seed, self.rank, self.world_size, self.shuffle = seed, rank, world_size, shuffle
        self.device = device
        self.shards = _open_split(shards_dir, split)
        self.tokens = sum(len(s) for s in self.shards)
        self.epoch = 0
        self.position = 0  # windows of this rank consumed in the current epoch
        self._plan_epoch()

    # -- the epoch plan -----------------------------------------------------------------------
    def _plan_epoch(self) -> None:
        """Compute this epoch's shift, window starts and this rank's share of them."""
        rng = np.random.default_rng([self.seed, self.epoch])
        self._shift = int(rng.integers(self.seq_len)) if self.shuffle else 0
        counts = np.array([max(0, (len(s) - 1 - self._shift) // self.seq_len) for s in self.shards])
        self._offsets = np.concatenate([[0], np.cumsum(counts)])  # first window id of each shard
        n_windows = int(self._offsets[-1])
        per_rank = n_windows // self.world_size
        if per_rank == 0:
            raise DataError(
                f"split {self.split!r} has {self.tokens} tokens: too few for one window of "
                f"{self.seq_len + 1} tokens per rank ({self.world_size} ranks); lower seq_len"
            )
        order = rng.permutation(n_windows) if self.shuffle else np.arange(n_windows)
        self._mine = order[self.rank :: self.world_size][:per_rank]

    def _window(self, window_id: int) -> np.ndarray:
        shard = int(np.searchsorted(self._offsets, window_id, side="right")) - 1
        start = self._shift + (window_id - int(self._offsets[shard])) * self.seq_len
        return self.shards[shard][start : start + self.seq_len + 1]

    @property
    def windows_per_epoch(self) -> int:
        """Windows this rank sees per epoch (varies by at most one with the epoch's shift)."""
        return len(self._mine)

    # -- batches ------------------------------------------------------------------------------
    def next_batch(self):
        """The next ``(x, y)`` batch; epochs roll over transparently."""
        rows = np.empty((self.batch_size, self.seq_len + 1), dtype=np.int64)
        for row in range(self.batch_size):
            if self.position >= len(self._mine):
                self.epoch += 1
                self.position = 0
                self._plan_epoch()
            rows[row] = self._window(int(self._mine[self.position]))
            self.position += 1
        return _to_torch(rows, self.device)

    def __iter__(self):
        while True:
            yield self.next_batch()

    # -- resuming -----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The loader's position as a JSON-serialisable dict (store it in a checkpoint)."""
        return {
            "version": STATE_VERSION,
            "split": self.split,
            "seq_len": self.seq_len,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
            "shuffle": self.shuffle,
            "epoch": self.epoch,
            "position": self.position,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a `state_dict()`: the next batches are those the saved loader would give.

        The batch size may differ; the split, seq_len, seed and rank layout must match.
        """
        for key in ("split", "seq_len", "seed", "rank", "world_size", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ConfigError(
                    f"loader state was saved with {key}={state[key]!r}, this loader has {getattr(self, key)!r}"
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._plan_epoch()


def iter_eval_batches(
    shards_dir: str | Path,
    split: str,
    batch_size: int,
    seq_len: int,
    max_batches: int | None = None,
    device: str | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[tuple[Any, Any]]:
    """Walk ``split`` once in order, yielding ``(x, y)`` batches (the last one may be smaller).

    Deterministic: every call yields the same batches. With ``world_size > 1`` rank ``r`` gets
    batches ``r, r + W, ...`` of that sequence.
    """
    if batch_size < 1 or seq_len < 1:
        raise ConfigError(f"batch_size and seq_len must be positive, got {batch_size} and {seq_len}")
    if max_batches is not None and max_batches <= 0:
        return
    rows: list[np.ndarray] = []
    batch_index = 0
    for shard in _open_split(shards_dir, split):
        for start in range(0, len(shard) - seq_len, seq_len):
            rows.append(shard[start : start + seq_len + 1])
            if len(rows) == batch_size:
                if batch_index % world_size == rank:
                    yield _to_torch(np.stack(rows).astype(np.int64), device)
                rows = []
                batch_index += 1
                if max_batches is not None and batch_index >= max_batches * world_size:
                    return
    if rows and batch_index % world_size == rank:
        yield _to_torch(np.stack(rows).astype(np.int64), device)
