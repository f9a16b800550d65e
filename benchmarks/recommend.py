"""Benchmark: prepare -> train -> eval of the sequential recommender on MovieTweetings, in one run.

    flock /tmp/fornalha-bench.lock .venv/bin/python benchmarks/recommend.py [--minutes 6] [--preset tiny]

The baselines (popularity, item-kNN, ALS) are measured in the same `recommend eval` call, on the
same users and targets. Target: model NDCG@10 >= 1.2 x the best baseline. The last stdout line is
the eval JSON plus the benchmark's own fields (wall times, target, machine load).
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
    ap.add_argument("--minutes", type=float, default=6.0, help="training time budget")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--out", default=None, help="work folder (default: a temporary one)")
    args = ap.parse_args()

    work = Path(args.out or tempfile.mkdtemp(prefix="fornalha-rec-"))
    t0 = time.perf_counter()
    cli("recommend", "prepare", "--ratings", args.ratings, "--items", args.items, "--out", str(work / "data"))
    t_prep = time.perf_counter() - t0
    sets = [a for s in args.sets for a in ("--set", s)]
    cli("recommend", "train", "--data", str(work / "data"), "--out", str(work / "run"), "--preset", args.preset,
        "--time-budget", str(args.minutes), "--set", "train.progress=false", *sets)  # fmt: skip
    t_train = time.perf_counter() - t0 - t_prep
    result = json.loads(
        cli("recommend", "eval", "--run", str(work / "run"), "--data", str(work / "data")).splitlines()[-1]
    )
    total = time.perf_counter() - t0
    print(f"{'method':<18}{'HR@10':>8}{'NDCG@10':>9}")
    for name, p in (
        ("GPT (sequential)", ""),
        ("popularity", "popularity_"),
        ("item-kNN", "itemknn_"),
        ("ALS", "als_"),
    ):
        print(f"{name:<18}{result[p + 'hr@10']:>8.4f}{result[p + 'ndcg@10']:>9.4f}")
    result.update({
        "baseline": "best of popularity / item-kNN / ALS, same eval call", "target_ratio": 1.2,
        "target_met": (result["ndcg@10_vs_best_baseline"] or 0) >= 1.2, "preset": args.preset,
        "sets": args.sets, "train_minutes": args.minutes, "prepare_s": round(t_prep, 1),
        "train_s": round(t_train, 1), "total_s": round(total, 1), "load_avg_1min": os.getloadavg()[0],
        "cpu_count": os.cpu_count(), "work": str(work),
    })  # fmt: skip
    print(json.dumps(result))


if __name__ == "__main__":
    main()
