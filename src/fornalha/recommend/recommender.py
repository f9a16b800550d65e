"""A trained recommender, ready to answer: item ids in, ranked item ids (with scores, titles) out.

Which path answers (`source` in every answer):
    "model"    the history holds at least one item of the model's vocabulary: the GPT scores the next
               item from those (cold items in the history are skipped, and still never recommended);
    "content"  the history holds only cold items (content.py): nearest items by the language model's
               text embedding, blended with popularity at the weight the warm users' validation items
               chose; needs `use_text_model` (predict/eval --lm-run, or the served LM).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import torch

from fornalha.errors import DataError
from fornalha.recommend.content import (
    CACHE,
    WEIGHT,
    ContentIndex,
    Embedder,
    item_text,
    item_vectors,
    rank_prior,
)
from fornalha.recommend.data import RecData, load_data, load_vocab, split_leave_one_out
from fornalha.recommend.model import score_histories


class UnknownItems(DataError):
    """History items the model's vocabulary does not hold."""

    def __init__(self, unknown: list[str]) -> None:
        self.unknown = unknown
        super().__init__(f"unknown item ids: {', '.join(unknown)}")


class Recommender:
    def __init__(self, run_dir: str | Path, device: str = "cpu") -> None:
        from fornalha.checkpoint import load_model

        self.run_dir = Path(run_dir)
        vocab = load_vocab(self.run_dir)
        self.items: list[str] = vocab["items"]
        self.titles: dict[str, str] = vocab.get("titles", {})
        self.genres: dict[str, str] = vocab.get("genres", {})
        self.cold: set[str] = set(vocab.get("cold", []))
        self.token = {item: i + 1 for i, item in enumerate(self.items)}
        self.model, self.meta = load_model(self.run_dir, device=device)
        self.content: ContentIndex | None = None
        self.text_model: str | None = None
        self.content_weights: dict[str, float] = {}

    def use_text_model(
        self, embed: Embedder, key: str, extra_cold: list[str] | None = None, data: RecData | None = None
    ) -> None:
        """Embed every item's text (warm and cold; cached in RUN/content_vectors.npz for `key`), which
        enables the content path for cold-only histories, and set its text weight (content.py) on the
        warm users' validation items of `data` (default: the data folder the run was trained on;
        cached in RUN/content_weight.json). `extra_cold`: more cold items (e.g. from a data folder
        prepared with --vocab-from) to add to the catalogue."""
        self.cold |= set(extra_cold or [])
        catalogue = self.items + sorted(self.cold - set(self.items))
        texts = [item_text(it, self.titles, self.genres) for it in catalogue]
        vectors = item_vectors(catalogue, texts, embed, key, self.run_dir / CACHE)
        self.content = ContentIndex(catalogue, vectors, rank_prior(catalogue, self.items))
        self.text_model = key
        self.content_weights = self._fit_text_weight(key, data)

    def _fit_text_weight(self, key: str, data: RecData | None) -> dict[str, float]:
        """{weight: validation NDCG@10}; without validation data the text weight stays 1 (text alone)."""
        assert self.content is not None
        cache = self.run_dir / WEIGHT
        if data is None and cache.is_file():
            saved = json.loads(cache.read_text())
            if saved.get("key") == key and saved.get("catalogue") == len(self.content.items):
                self.content.text_weight = saved["text_weight"]
                return saved["validation_ndcg@10"]
        if data is None:
            data = self._training_data()
        if data is None:
            print("recommend: no validation data to weigh text against popularity; cold-only histories are "
                  "answered by text alone", file=sys.stderr)  # fmt: skip
            return {}
        users = []
        for seq in data.sequences:
            if len(seq) >= 3:
                train, val, _ = split_leave_one_out(seq)
                users.append(([data.items[t - 1] for t in train], data.items[val - 1]))
        table = self.content.fit_text_weight(users)
        record = {"key": key, "catalogue": len(self.content.items), "text_weight": self.content.text_weight,
                  "validation_ndcg@10": table, "validation_users": len(users)}  # fmt: skip
        with contextlib.suppress(OSError):  # a read-only run folder: fitted again next time
            cache.write_text(json.dumps(record, indent=1))
        return table

    def _training_data(self) -> RecData | None:
        """The data folder this run was trained on (RUN/recommend.json), if it is still there."""
        info = self.run_dir / "recommend.json"
        source = json.loads(info.read_text()).get("data") if info.is_file() else None
        try:
            return load_data(Path(source)) if source else None
        except DataError:
            return None

    def answer(self, history: list[str], k: int = 10, exclude_seen: bool = True) -> dict:
        """{"source": "model" | "content", "data": [...]} (see the module docstring)."""
        self._check(history, k)
        if any(h in self.token for h in history):
            return {"source": "model", "data": self._from_model(history, k, exclude_seen)}
        if self.content is None:
            raise DataError(
                "the history holds only cold items (too few interactions for the model); their content "
                "fallback needs a language model (predict --lm-run LM_RUN, or serve with --recommender)"
            )
        recs = self.content.recommend(history, k, exclude_seen)
        return {"source": "content", "data": [self._row(it, round(sc, 5)) for it, sc in recs]}

    def _row(self, item: str, score: float, **extra) -> dict:
        rec = {"item": item, "score": score, **extra}
        if item in self.titles:
            rec["title"] = self.titles[item]
        return rec

    def _check(self, history: list[str], k: int) -> None:
        if not history:
            raise DataError("history is empty: give at least one item id")
        if k < 1:
            raise DataError(f"k must be at least 1, got {k}")
        unknown = [h for h in dict.fromkeys(history) if h not in self.token and h not in self.cold]
        if unknown:
            raise UnknownItems(unknown)

    def recommend(self, history: list[str], k: int = 10, exclude_seen: bool = True) -> list[dict]:
        """The k best next items for a history (oldest first): [{"item", "score", "title"?}, ...]."""
        return self.answer(history, k, exclude_seen)["data"]

    def _from_model(self, history: list[str], k: int, exclude_seen: bool) -> list[dict]:
        tokens = [self.token[h] for h in history if h in self.token]
        scores = score_histories(self.model, [tokens])[0]
        scores[0] = float("-inf")  # padding
        if exclude_seen:
            scores[torch.tensor(tokens)] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        probs = torch.softmax(scores, dim=0)
        top = torch.topk(scores, k)
        out = []
        for tok, score in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            out.append(
                self._row(self.items[tok - 1], round(score, 5), probability=round(probs[tok].item(), 6))
            )
        return out
