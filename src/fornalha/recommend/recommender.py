"""A trained recommender, ready to answer: item ids in, ranked item ids (with scores, titles) out."""

from __future__ import annotations

from pathlib import Path

import torch

from fornalha.errors import DataError
from fornalha.recommend.data import load_vocab
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
        self.token = {item: i + 1 for i, item in enumerate(self.items)}
        self.model, self.meta = load_model(self.run_dir, device=device)

    def recommend(self, history: list[str], k: int = 10, exclude_seen: bool = True) -> list[dict]:
        """The k best next items for a history (oldest first): [{"item", "score", "title"?}, ...]."""
        if not history:
            raise DataError("history is empty: give at least one item id")
        if k < 1:
            raise DataError(f"k must be at least 1, got {k}")
        unknown = [h for h in dict.fromkeys(history) if h not in self.token]
        if unknown:
            raise UnknownItems(unknown)
        tokens = [self.token[h] for h in history]
        scores = score_histories(self.model, [tokens])[0]
        scores[0] = float("-inf")  # padding
        if exclude_seen:
            scores[torch.tensor(tokens)] = float("-inf")
        k = min(k, int(torch.isfinite(scores).sum()))
        probs = torch.softmax(scores, dim=0)
        top = torch.topk(scores, k)
        out = []
        for tok, score in zip(top.indices.tolist(), top.values.tolist(), strict=True):
            item = self.items[tok - 1]
            rec = {"item": item, "score": round(score, 5), "probability": round(probs[tok].item(), 6)}
            if item in self.titles:
                rec["title"] = self.titles[item]
            out.append(rec)
        return out
