"""The baselines a recommender has to beat, fitted on the same non-test interactions it sees.

  popularity  score(i) = how many users have item i (the same list for everyone)
  item-kNN    co-occurrence cosine with shrinkage: sim(i, j) = |users with i and j| /
              (sqrt(|users with i| · |users with j|) + shrink); score(u, j) = sum over the user's items i
              of sim(i, j). Every co-occurring item is a neighbour (pruning to the top 20-500 was worse)
  ALS         implicit-feedback matrix factorisation (Hu, Koren & Volinsky 2008) from the `implicit`
              library: user and item vectors whose dot products reconstruct the 0/1 interaction matrix

The defaults (item-kNN shrink 10; ALS 8 factors, regularisation 10, alpha 5, 15 iterations) are the
best of a grid on MovieTweetings' *validation* items (benchmarks/LOG.md, 2026-12-01 recommender
section): shrinkage raised item-kNN's validation NDCG@10 from 0.094 to 0.100, the small ALS from 0.067
(64 factors, reg 0.05, alpha 10) to 0.081.

Each `scores(histories)` returns a dense [U, V] float tensor in item-token space (column 0 = padding).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


def interaction_matrix(histories: list[list[int]], vocab_size: int) -> sp.csr_matrix:
    """Binary users × tokens matrix (column 0, padding, stays empty)."""
    rows = np.repeat(np.arange(len(histories)), [len(set(h)) for h in histories])
    cols = (
        np.concatenate([np.fromiter(sorted(set(h)), dtype=np.int64) for h in histories]) if histories else []
    )
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(histories), vocab_size), dtype=np.float32)


class Popularity:
    name = "popularity"

    def __init__(self, histories: list[list[int]], vocab_size: int) -> None:
        self.counts = torch.from_numpy(np.asarray(interaction_matrix(histories, vocab_size).sum(0)).ravel())

    def scores(self, histories: list[list[int]]) -> torch.Tensor:
        return self.counts.float().expand(len(histories), -1)


class ItemKNN:
    name = "itemknn"

    def __init__(self, histories: list[list[int]], vocab_size: int, shrink: float = 10.0) -> None:
        x = interaction_matrix(histories, vocab_size)
        co = (x.T @ x).tocoo()  # co[i, j] = users having both
        norm = np.sqrt(np.asarray(x.sum(0)).ravel())
        vals = co.data / (norm[co.row] * norm[co.col] + shrink)
        sim = sp.csr_matrix((vals.astype(np.float32), (co.row, co.col)), shape=co.shape)
        sim.setdiag(0)  # an item does not recommend itself
        sim.eliminate_zeros()
        self.sim = sim
        self.vocab_size = vocab_size

    def scores(self, histories: list[list[int]]) -> torch.Tensor:
        x = interaction_matrix(histories, self.vocab_size)
        return torch.from_numpy(np.asarray((x @ self.sim).todense(), dtype=np.float32))


class ALS:
    name = "als"

    def __init__(self, histories: list[list[int]], vocab_size: int, factors: int = 8,
                 regularization: float = 10.0, iterations: int = 15, alpha: float = 5.0, seed: int = 0) -> None:  # fmt: skip
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        self.x = interaction_matrix(histories, vocab_size)
        with threadpool_limits(1, "blas"):  # implicit's own threads do the work (its advice)
            self.model = AlternatingLeastSquares(factors=factors, regularization=regularization, alpha=alpha,
                                                 iterations=iterations, random_state=seed)  # fmt: skip
            self.model.fit(self.x, show_progress=False)
        self.vocab_size = vocab_size

    def scores(self, histories: list[list[int]]) -> torch.Tensor:
        """Users are (re)solved from their histories, so users unseen at fitting time work too."""
        x = interaction_matrix(histories, self.vocab_size)
        users = self.model.recalculate_user(np.arange(len(histories)), x)
        return torch.from_numpy(np.asarray(users @ self.model.item_factors.T, dtype=np.float32))


BASELINES = (Popularity, ItemKNN, ALS)
