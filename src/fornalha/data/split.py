"""Train/validation split: deterministic, and leak-free for near-duplicates.

``doc`` mode (the default) sends a document to validation when a hash of its *cluster
key* falls below ``val_fraction``. The cluster key is the exact-content hash of the first
document of its near-duplicate cluster (found by MinHash LSH in :mod:`.dedup`), so every
member of a cluster — a document and its light edits — lands on the same side even when
deduplication is off: validation never contains a near-copy of a training document. The
decision depends only on content and ``seed``, never on order, worker count or machine.

``tail`` mode is for corpora of one (or a few) long documents, as nanoGPT does with
TinyShakespeare: the last ``val_fraction`` of each document's text, cut at a line
boundary, is validation and the rest is training.
"""

from __future__ import annotations

import hashlib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fornalha.errors import ConfigError

Side = Literal["train", "val"]


class SplitConfig(BaseModel):
    """How documents are divided between ``train`` and ``val``."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["doc", "tail"] = "doc"
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    seed: str = "fornalha"
    group_near_duplicates: bool = True


def override(cfg: SplitConfig, **changes: Any) -> SplitConfig:
    """``cfg`` with ``changes`` applied (None values are left out), validated like the config file:
    a bad value is a ConfigError that names the command-line option (``--val-fraction``)."""
    updates = {k: v for k, v in changes.items() if v is not None}
    try:
        return SplitConfig.model_validate({**cfg.model_dump(), **updates})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "split"
        raise ConfigError(
            f"--{name.replace('_', '-').replace('mode', 'split')}: {err['msg']} (got {updates.get(name)!r})"
        ) from None


def hash_unit(key: str, seed: str = "fornalha") -> float:
    """A uniform number in [0, 1) derived from ``key`` (stable across runs and machines)."""
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def assign_side(cluster_key: str, cfg: SplitConfig) -> Side:
    """``"val"`` for about ``val_fraction`` of cluster keys, ``"train"`` for the rest."""
    return "val" if hash_unit(cluster_key, cfg.seed) < cfg.val_fraction else "train"


def tail_split(text: str, val_fraction: float) -> tuple[str, str]:
    """(head, tail): the tail is about the last ``val_fraction`` of ``text``, from a line start.

    The cut moves forward to the next newline so no line is split; ``head + tail == text``.
    """
    if val_fraction <= 0 or not text:
        return text, ""
    cut = int(len(text) * (1.0 - val_fraction))
    newline = text.find("\n", cut)
    if newline < 0 or newline + 1 >= len(text):
        newline = text.rfind("\n", 0, cut)
        if newline < 0:
            return text, ""
    return text[: newline + 1], text[newline + 1 :]
