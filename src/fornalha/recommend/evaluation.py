"""`recommend eval`: the model and the three baselines ranked on the same users, same targets.

For every user of DATA_DIR: history = training items + validation item, target = test item,
candidates = every item the user does not already have. The baselines are fitted on exactly
those histories (no test item), so all four see the same information.

Cold start, measured separately (content.py): the data folder's cold users (histories of cold items
only, at least 2 items) — history = all but the last item, target = the last — ranked by the
content path (text embedding of a language model, `lm_run`) and by popularity (over the prepared
users' items and the cold users' histories), both over every catalogue item outside the history.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from fornalha.recommend.baselines import BASELINES
from fornalha.recommend.data import load_data, load_vocab, split_leave_one_out
from fornalha.recommend.metrics import KS, hit_ndcg, target_ranks
from fornalha.recommend.model import score_histories


def evaluate_run(run_dir: Path, data_dir: Path, k: int = 10, chunk: int = 1024, say=print,
                 lm_run: Path | None = None) -> dict:  # fmt: skip
    """The eval JSON: users, the model's hr@K/ndcg@K and each baseline's, for K in 5, 10, 20 (and k);
    `cold_users`, `cold_items` and, with `lm_run`, the cold users' `cold_content_…` / `cold_popularity_…`."""
    from fornalha.checkpoint import load_model
    from fornalha.errors import DataError

    data = load_data(data_dir)
    run_items = load_vocab(run_dir)["items"]
    if run_items != data.items:
        raise DataError(
            f"{data_dir} was prepared with another item vocabulary than {run_dir}; "
            f"prepare it with --vocab-from {run_dir}"
        )
    model, meta = load_model(run_dir)
    splits = [split_leave_one_out(s) for s in data.sequences]
    hist = [h + [v] for h, v, _ in splits]
    targets = [t for _, _, t in splits]
    ks = tuple(sorted(set(KS) | {k}))

    per_user: dict[str, torch.Tensor] = {}  # NDCG@10 of every user, per method (for the interval)

    def metrics_of(name: str, scorer) -> dict[str, float]:
        ranks = torch.cat([
            target_ranks(scorer(hist[i : i + chunk]), torch.tensor(targets[i : i + chunk]), hist[i : i + chunk])
            for i in range(0, len(hist), chunk)
        ])  # fmt: skip
        per_user[name] = torch.where(ranks < 10, 1.0 / torch.log2(ranks.double() + 2.0), 0.0)
        return hit_ndcg(ranks, ks)

    result: dict = {"users": len(hist), "items": len(data.items), "run": str(run_dir), "data": str(data_dir),
                    "step": meta.get("step")}  # fmt: skip
    t0 = time.perf_counter()
    result.update(metrics_of("model", lambda h: score_histories(model, h)))
    result["model_s"] = round(time.perf_counter() - t0, 2)
    for cls in BASELINES:
        t0 = time.perf_counter()
        base = cls(hist, data.vocab_size)
        result.update({f"{cls.name}_{key}": val for key, val in metrics_of(cls.name, base.scores).items()})
        result[f"{cls.name}_s"] = round(time.perf_counter() - t0, 2)
    best_name = max((c.name for c in BASELINES), key=lambda n: result[f"{n}_ndcg@10"])
    best = result[f"{best_name}_ndcg@10"]
    result["best_baseline"], result["best_baseline_ndcg@10"] = best_name, best
    result["ndcg@10_vs_best_baseline"] = result["ndcg@10"] / best if best > 0 else None
    result["ndcg@10_vs_best_baseline_ci95"] = ratio_interval(per_user["model"], per_user[best_name])
    result.update({"cold_users": len(data.cold_users), "cold_items": len(data.cold)})
    if lm_run is not None:
        result.update(evaluate_cold_users(run_dir, data, lm_run, ks))
    return result


def ratio_interval(a: torch.Tensor, b: torch.Tensor, draws: int = 1000, seed: int = 0) -> list[float] | None:
    """95 % paired-bootstrap interval of mean(a) / mean(b) over users (the same resampled users for both)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(a), (draws, len(a)), generator=g)
    num, den = a[idx].mean(1), b[idx].mean(1)
    if bool((den <= 0).any()):
        return None
    lo, hi = torch.quantile(num / den, torch.tensor([0.025, 0.975], dtype=num.dtype)).tolist()
    return [round(lo, 4), round(hi, 4)]


def evaluate_cold_users(run_dir: Path, data, lm_run: Path, ks) -> dict:
    """The cold users' figures for the content path and for popularity (see the module docstring)."""
    from collections import Counter

    from fornalha.recommend.content import evaluate_cold, lm_embedder
    from fornalha.recommend.recommender import Recommender

    t0 = time.perf_counter()
    rec = Recommender(run_dir)
    rec.titles, rec.genres = {**data.titles, **rec.titles}, {**data.genres, **rec.genres}
    embed, key = lm_embedder(lm_run)
    rec.use_text_model(embed, key, extra_cold=data.cold, data=data)
    assert rec.content is not None
    pop = Counter(data.items[t - 1] for seq in data.sequences for t in seq)
    pop.update(it for seq in data.cold_users for it in seq[:-1])
    out: dict = {"cold_text_model": str(lm_run), "cold_catalogue": len(rec.content.items),
                 "cold_text_weight": rec.content.text_weight,
                 "cold_text_weight_validation_ndcg@10": rec.content_weights}  # fmt: skip
    if data.cold_users:
        out.update(evaluate_cold(rec.content, data.cold_users, pop, ks))
    out["cold_s"] = round(time.perf_counter() - t0, 2)
    return out


def table(result: dict, k: int = 10) -> list[list[str]]:
    """Rows for a printed table: one per method, HR and NDCG at each K."""
    ks = tuple(sorted(set(KS) | {k}))
    rows = []
    for name, prefix in (("GPT (sequential)", ""), ("popularity", "popularity_"), ("item-kNN", "itemknn_"),
                         ("ALS (implicit)", "als_")):  # fmt: skip
        rows.append([name] + [f"{result[f'{prefix}{m}@{kk}']:.4f}" for kk in ks for m in ("hr", "ndcg")])
    return rows
