"""Cold start: items the sequential model never learned, recommended from their text.

An item with too few interactions (fewer than `--min-item-interactions` among the prepared users,
so not in the model's vocabulary) is a *cold* item; `prepare` keeps its id, title and genres aside.
A history made only of cold items cannot be scored by the model, so it is answered from text:

    text(item)   = "<title>. <genre>, <genre>"                       e.g. "Gravity (2013). Drama, Sci-Fi"
    vector(item) = the language model's embedding of that text: the same mean-pooled final hidden
                   states `POST /v1/embeddings` returns (`fornalha.assistant.engine_embedder`, which
                   calls `Engine.embed`); centred on the catalogue's mean vector, then unit length
    text(j)      = cosine(vector(j), mean of the history's item vectors)   over every item with text
                   (warm and cold), the history's own items excluded
    prior(j)     = 1 - log(1 + rank(j)) / log(1 + catalogue size)    rank 0 = the most popular item of
                   the model's vocabulary; cold items share the last rank
    score(j)     = w * text(j) + (1 - w) * prior(j)

The weight w of the text is chosen on the warm users' validation items (history = their training items,
target = their validation item, the same protocol as `recommend eval`), from 0 (popularity alone) to 1
(text alone): a text embedding that carries less than popularity cannot make the fallback worse than
popularity on those users. It is kept in `content_weight.json` beside the vectors.

The vectors are cached in the recommender's run folder (`content_vectors.npz`), keyed by the language
model's checkpoint, so a server or `predict` embeds the catalogue once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from fornalha.errors import DataError

Embedder = Callable[[Sequence[str]], np.ndarray]
CACHE = "content_vectors.npz"
WEIGHT = "content_weight.json"
WEIGHTS = tuple(round(0.1 * i, 1) for i in range(11))  # the text weights tried: 0, 0.1, ..., 1


def item_text(item: str, titles: dict[str, str], genres: dict[str, str]) -> str:
    """The text an item is embedded by: its title and genres ("" when the items file had neither)."""
    title = titles.get(item, "")
    kinds = ", ".join(g for g in genres.get(item, "").split("|") if g)
    return f"{title}. {kinds}" if kinds else title


def lm_embedder(lm_run: str | Path, device: str = "cpu") -> tuple[Embedder, str]:
    """(embed, key) for a fornalha language-model run: `embed(texts)` is what `/v1/embeddings` computes
    for each text; `key` names the checkpoint (the cache is valid only for it)."""
    from fornalha.assistant import engine_embedder
    from fornalha.checkpoint import load_run
    from fornalha.infer import Engine

    model, tokenizer, _ = load_run(lm_run, which="best", device=device)
    engine = Engine(model, tokenizer, device=device, max_batch_size=1)
    return engine_embedder(engine, tokenizer), lm_key(lm_run)


def lm_key(lm_run: str | Path) -> str:
    """The identity of a language model's served checkpoint: its path and modification time."""
    from fornalha.checkpoint import resolve_checkpoint

    ckpt = Path(resolve_checkpoint(lm_run, "best"))
    return f"{ckpt.resolve()}@{ckpt.stat().st_mtime_ns}"


def item_vectors(items: list[str], texts: list[str], embed: Embedder, key: str,
                 cache: Path | None = None) -> np.ndarray:  # fmt: skip
    """[len(items), C] float32 embeddings of the texts, reusing `cache` when it was made by `key`."""
    have: dict[str, np.ndarray] = {}
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as z:
            if str(z["key"]) == key:
                have = dict(zip(z["items"].tolist(), z["vectors"], strict=True))
    todo = [i for i, it in enumerate(items) if it not in have]
    if todo:
        new = np.asarray(embed([texts[i] for i in todo]), dtype=np.float32)
        have.update({items[i]: v for i, v in zip(todo, new, strict=True)})
        if cache is not None:
            ids = list(have)
            tmp = cache.with_name(cache.name + ".tmp.npz")
            try:
                np.savez(
                    tmp, key=np.array(key), items=np.array(ids), vectors=np.stack([have[i] for i in ids])
                )
                tmp.replace(cache)
            except OSError:  # a read-only run folder: embed again next time
                pass
    return np.stack([have[it] for it in items]).astype(np.float32)


def rank_prior(catalogue: Sequence[str], by_popularity: Sequence[str]) -> np.ndarray:
    """prior(j) of the module docstring: items of `by_popularity` (most popular first) by their rank,
    every other catalogue item at the last rank."""
    rank = {it: r for r, it in enumerate(by_popularity)}
    last = len(by_popularity)
    r = np.array([rank.get(it, last) for it in catalogue], dtype=np.float64)
    return (1.0 - np.log1p(r) / np.log1p(max(len(catalogue), 1))).astype(np.float32)


class ContentIndex:
    """Nearest items by text: unit vectors (centred on their mean) for a catalogue of item ids, blended
    with a popularity prior at text weight `text_weight` (1.0, or no prior: text alone)."""

    def __init__(self, items: list[str], vectors: np.ndarray, prior: np.ndarray | None = None,
                 text_weight: float = 1.0) -> None:  # fmt: skip
        if len(items) != len(vectors) or (prior is not None and len(prior) != len(items)):
            raise DataError(f"{len(items)} items but {len(vectors)} vectors")
        self.items = items
        self.row = {it: i for i, it in enumerate(items)}
        v = vectors - vectors.mean(0, keepdims=True)  # mean-pooled states share one big direction
        self.vectors = v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
        self.prior = prior
        self.text_weight = text_weight

    def text_scores(self, history: Sequence[str]) -> np.ndarray:
        """Cosine of every catalogue item to the mean of the history's vectors (history must be known)."""
        q = self.vectors[[self.row[h] for h in history]].mean(0)
        return self.vectors @ (q / max(float(np.linalg.norm(q)), 1e-12))

    def scores(self, history: Sequence[str]) -> np.ndarray:
        """score(j) of the module docstring for every catalogue item."""
        return self._blend(self.text_scores(history), self.text_weight)

    def _blend(self, text: np.ndarray, w: float) -> np.ndarray:
        return text if self.prior is None or w >= 1.0 else w * text + (1.0 - w) * self.prior

    def fit_text_weight(self, users: Sequence[tuple[Sequence[str], str]], k: int = 10) -> dict[str, float]:
        """Set `text_weight` to the weight of WEIGHTS with the best NDCG@k on `users` ((history,
        target) pairs, items outside the catalogue skipped); returns {weight: NDCG@k}. Ties go to
        the smaller weight (popularity is the simpler model)."""
        from fornalha.recommend.metrics import ndcg_at

        pairs = [([h for h in hist if h in self.row], t) for hist, t in users]
        pairs = [(h, t) for h, t in pairs if h and t in self.row]
        if self.prior is None or not pairs:
            return {}
        ndcg = {w: 0.0 for w in WEIGHTS}
        for hist, target in pairs:
            text = self.text_scores(hist)
            for w in WEIGHTS:
                ndcg[w] += ndcg_at(self.rank_of(target, self._blend(text, w), hist), k)
        table = {str(w): round(v / len(pairs), 5) for w, v in ndcg.items()}
        self.text_weight = max(WEIGHTS, key=lambda w: (ndcg[w], -w))
        return table

    def rank_of(self, target: str, scores: np.ndarray, history: Sequence[str]) -> int:
        """0-based rank of `target` among the catalogue outside the history; ties count in the
        target's favour, as in `metrics.target_ranks`."""
        s = np.array(scores, dtype=np.float64)  # a copy: the history's items are masked out
        s[[self.row[h] for h in history]] = -np.inf
        return int((s > s[self.row[target]]).sum())

    def recommend(self, history: Sequence[str], k: int, exclude_seen: bool = True) -> list[tuple[str, float]]:
        s = self.scores(history)
        if exclude_seen:
            s[[self.row[h] for h in history]] = -np.inf
        k = min(k, int(np.isfinite(s).sum()))
        top = np.argsort(-s, kind="stable")[:k]
        return [(self.items[i], float(s[i])) for i in top]


def evaluate_cold(index: ContentIndex, users: list[list[str]], popularity: dict[str, int],
                  ks=(5, 10, 20)) -> dict[str, float]:  # fmt: skip
    """HR@K and NDCG@K of cold users (history = all but the last item, target = the last) for the
    content path (the blend), its text alone and popularity, on the same users and the same
    candidates (every catalogue item outside the history; `ContentIndex.rank_of`)."""
    import torch

    from fornalha.recommend.metrics import hit_ndcg

    pop = np.array([popularity.get(it, 0) for it in index.items], dtype=np.float64)
    ranks: dict[str, list[int]] = {"content": [], "text": [], "popularity": []}
    for seq in users:
        hist, target = seq[:-1], seq[-1]
        for name, s in (
            ("content", index.scores(hist)),
            ("text", index.text_scores(hist)),
            ("popularity", pop),
        ):
            ranks[name].append(index.rank_of(target, s, hist))
    out: dict[str, float] = {}
    for name, r in ranks.items():
        for key, val in hit_ndcg(torch.tensor(r), ks).items():
            out[f"cold_{name}_{key}"] = val
    return out
