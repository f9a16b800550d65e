"""Full-ranking metrics: every item is a candidate, except the ones the user already has.

For one user with target item t and a score for every item:
    rank    = number of candidate items scored strictly higher than t   (0 = top of the list)
    HR@K    = 1 if rank < K else 0                       (hit ratio: is t in the top K?)
    NDCG@K  = 1 / log2(rank + 2) if rank < K else 0      (one relevant item, so the ideal DCG is 1)
Averaged over users. Ties are resolved in the target's favour (strictly higher scores only),
which can only flatter a baseline whose scores tie a lot (popularity), never the model.
"""

from __future__ import annotations

import math

import torch

KS = (5, 10, 20)


def target_ranks(scores: torch.Tensor, targets: torch.Tensor, exclude: list[list[int]]) -> torch.Tensor:
    """scores [U, V] (column 0 = padding, never a candidate), targets [U], exclude: seen tokens per user."""
    scores = scores.float().clone()
    scores[:, 0] = float("-inf")
    for u, seen in enumerate(exclude):
        if seen:
            scores[u, torch.as_tensor(seen, dtype=torch.long)] = float("-inf")
    target = scores.gather(1, targets.view(-1, 1).long())
    return (scores > target).sum(dim=1)


def hit_ndcg(ranks: torch.Tensor, ks=KS) -> dict[str, float]:
    """{"hr@K": ..., "ndcg@K": ...} for every K from 0-based ranks."""
    out: dict[str, float] = {}
    r = ranks.double()
    for k in ks:
        hit = r < k
        out[f"hr@{k}"] = hit.double().mean().item()
        out[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(r + 2.0), torch.zeros_like(r)).mean().item()
    return out


def ndcg_at(rank: int, k: int) -> float:
    """NDCG@k of one 0-based rank (for reading and for tests)."""
    return 1.0 / math.log2(rank + 2) if rank < k else 0.0
