"""Turning the model's per-token losses into loss and bits per byte — the one place both are summed.

The model gives a negative log-likelihood (nats) per target token (`GPT.forward(x, y,
loss_reduction="none")`). Over some text:

    loss (nats/token) = Σ nats / number of scored targets
    bits per byte     = Σ nats / (ln 2 · Σ UTF-8 bytes of those targets)

Bits per byte does not depend on the tokenizer, so models with different vocabularies compare in it.
`token_bytes[id]` is the UTF-8 length of token ``id`` (`tokenizer.token_bytes()`); special tokens
have 0 bytes, so predicting `<|bos|>` adds nats but no bytes (the pessimistic side). Targets of -1
are not scored at all.

`ScoreSums` keeps the three sums as ONE float64 tensor on the model's device: no host sync per batch,
and a distributed run all-reduces it in one call. Training's validation (`fornalha.train.task`) and
`fornalha eval` (`fornalha.evaluate.loss`) both sum with it, so the same tokens give the same numbers.
"""

from __future__ import annotations

import math

import torch

LN2 = math.log(2.0)


def bits_per_byte(nats: float, n_bytes: float) -> float:
    """Convert a sum of nats over some text into bits per UTF-8 byte of that text."""
    if n_bytes <= 0:
        raise ValueError("bits per byte needs a positive number of bytes")
    return nats / (LN2 * n_bytes)


class ScoreSums:
    """Running sums of nats, scored targets and their UTF-8 bytes (see the module docstring)."""

    def __init__(self, device: torch.device | str, token_bytes: torch.Tensor | None = None) -> None:
        self.sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, targets, bytes
        self.token_bytes = None if token_bytes is None else torch.as_tensor(token_bytes).long().to(device)

    def add(self, nll: torch.Tensor, targets: torch.Tensor) -> None:
        """nll: per-token losses [B, T]; targets [B, T] with -1 where nothing is scored."""
        mask = targets >= 0
        self.sums[0] += nll.double()[mask].sum()
        self.sums[1] += mask.sum()
        if self.token_bytes is not None:
            self.sums[2] += self.token_bytes[targets[mask]].sum()

    @property
    def tokens(self) -> int:
        return int(self.sums[1])

    def totals(self) -> tuple[float, int, int]:
        """(nats, scored targets, bytes) as Python numbers."""
        nats, count, n_bytes = self.sums.tolist()
        return nats, int(count), int(n_bytes)
