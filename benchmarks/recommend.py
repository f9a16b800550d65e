"""Benchmark: prepare -> train -> eval of the sequential recommender on MovieTweetings, in one run.

    flock /tmp/fornalha-bench.lock env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recommend.py
        [--preset tiny] [--minutes M] [--lm-run LM_RUN | --lm-minutes 2 | --lm-minutes 0]

Training runs the preset's steps (tiny: 1,500) unless --minutes sets a time budget: by steps, the run
(evaluations, best checkpoint, learning-rate schedule) does not depend on how loaded the machine is.

The baselines (popularity, item-kNN, ALS) are measured in the same `recommend eval` call, on the
same users and targets. Target: model NDCG@10 >= 1.2 x the best baseline. Cold start is measured
in the same call too (`cold_…` keys: the cold users' content fallback against popularity), with the
text embedding of a language model: `--lm-run`, or a tiny one trained here first
(`fornalha pipeline --preset tiny --minutes 2`; `--lm-minutes 0` skips cold start). The last stdout
line is the eval JSON plus the benchmark's own fields (wall times, target, machine load).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "recsys"


def cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "fornalha.cli", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"fornalha {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratings", default=str(SHARED / "movietweetings_ratings_uidmod5_1-4.dat"))
    ap.add_argument("--items", default=str(SHARED / "movietweetings_movies.dat"))
    ap.add_argument(
        "--minutes",
        type=float,
        default=None,
        help="training time budget (default: none, the preset's steps; tiny: ~3-5 min here)",
    )
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    ap.add_argument("--lm-run", default=None, help="language-model run for the cold-start text embedding")
    ap.add_argument(
        "--lm-minutes", type=float, default=2.0, help="without --lm-run: train one this long (0: no)"
    )
    args = ap.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="fornalha-rec-"))
    t0 = time.perf_counter()
    lm_run, t_lm = args.lm_run, 0.0
    if lm_run is None and args.lm_minutes > 0:
        lm_run = str(work / "lm")
        cli("pipeline", "--preset", "tiny", "--minutes", str(args.lm_minutes), "--out", lm_run)
        t_lm = time.perf_counter() - t0
    t0 = time.perf_counter()
    cli("recommend", "prepare", "--ratings", args.ratings, "--items", args.items, "--out", str(work / "data"))
    t_prep = time.perf_counter() - t0
    sets = [a for s in args.sets for a in ("--set", s)]
    cli("recommend", "train", "--data", str(work / "data"), "--out", str(work / "run"), "--preset", args.preset,
        *(["--time-budget", str(args.minutes)] if args.minutes else []), "--set", "train.progress=false", *sets)  # fmt: skip
    t_train = time.perf_counter() - t0 - t_prep
    lm = ["--lm-run", lm_run] if lm_run else []
    out = cli("recommend", "eval", "--run", str(work / "run"), "--data", str(work / "data"), *lm)
    result = json.loads(out.splitlines()[-1])
    total = time.perf_counter() - t0 + t_lm
    print(f"{'method':<18}{'HR@10':>8}{'NDCG@10':>9}")
    for name, p in (
        ("GPT (sequential)", ""),
        ("popularity", "popularity_"),
        ("item-kNN", "itemknn_"),
        ("ALS", "als_"),
    ):
        print(f"{name:<18}{result[p + 'hr@10']:>8.4f}{result[p + 'ndcg@10']:>9.4f}")
    if "cold_content_ndcg@10" in result:
        print(f"cold start, {result['cold_users']} users with cold-only histories:")
        for name, p in (("content fallback", "cold_content_"), ("text alone", "cold_text_"),
                        ("popularity", "cold_popularity_")):  # fmt: skip
            print(f"{name:<18}{result[p + 'hr@10']:>8.4f}{result[p + 'ndcg@10']:>9.4f}")
    result.update({
        "baseline": "best of popularity / item-kNN / ALS, same eval call", "target_ratio": 1.2,
        "target_met": (result["ndcg@10_vs_best_baseline"] or 0) >= 1.2, "preset": args.preset,
        "sets": args.sets, "train_minutes": args.minutes, "prepare_s": round(t_prep, 1),
        "train_s": round(t_train, 1), "lm_s": round(t_lm, 1), "total_s": round(total, 1), "load_avg_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(), "work": str(work),
    })  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
