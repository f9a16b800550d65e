"""Continued pretraining on new documents, with and without the old data mixed in: how much is forgotten.

    flock /tmp/fornalha-bench.lock env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/continued_pretraining.py \
        [--work /tmp/cpt] [--base-minutes 3] [--new-minutes 1.5] [--ratio 1]

Corpus A (the old data): Machado de Assis's three novels in ../shared/data/pt (Portuguese, 1.2 MB).
Corpus B (the new documents): TinyShakespeare (English, 1.1 MB). Every dataset is split `tail`
(the last 10 % of each document is validation), so A's validation text is the same in every
dataset and never trained on.

1. base: `fornalha train --preset tiny` on A (BPE tokenizer trained on A) for --base-minutes.
2. (a) B alone:  `fornalha train --preset tiny --data B --tokenizer base/tokenizer --init-from base`
3. (b) B + A:    the same on `fornalha data prepare --source B --source "A::RATIO"` (A's training
   documents repeated RATIO times, deterministic per document; validation never reweighted).
   (a) and (b) get the same settings and the same wall-clock budget (--new-minutes).
4. Every model's last checkpoint scored with `fornalha eval --checkpoint last` on A's and B's
   validation splits (bits per byte: comparable across tokenizers and corpora).

Forgetting = val bpb on A after continued pretraining minus the base's. The last stdout line is JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CORPUS_A = str(DATA / "pt" / "machado_*.txt")
CORPUS_B = str(DATA / "tinyshakespeare.txt")


def fornalha(*args: str) -> str:
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "fornalha.cli", *args], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(
            f"fornalha {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
        )
    print(f"  fornalha {args[0]} {args[1] if len(args) > 1 and not args[1].startswith('-') else ''}"
          f" ({time.time() - t:.0f} s)", flush=True)  # fmt: skip
    return r.stdout


def prepare(out: Path, *sources: str) -> Path:
    if not (out / "manifest.json").is_file():
        args = [a for s in sources for a in ("--source", s)]
        fornalha("data", "prepare", *args, "--split", "tail", "--val-fraction", "0.1", "--out", str(out),
                 "--workers", "1")  # fmt: skip
    return out


def train(out: Path, data: Path, minutes: float, extra: list[str]) -> dict:
    if not (out / "summary.json").is_file():
        fornalha("train", "--preset", "tiny", "--data", str(data), "--time-budget", str(minutes), "--out", str(out),
                 "--set", "train.samples=0", "--set", "train.progress=false", *extra)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    return {k: summary.get(k) for k in ("steps", "tokens_seen", "wall_time_s")}


def val_bpb(run: Path, data: Path, max_tokens: int) -> float:
    out = run.parent / "evals" / f"{run.name}-on-{data.name}.json"
    out.parent.mkdir(exist_ok=True)
    if not out.is_file():
        fornalha("eval", "--run", str(run), "--data", str(data), "--checkpoint", "last",
                 "--max-tokens", str(max_tokens), "--json", str(out))  # fmt: skip
    found = json.loads(out.read_text())
    return float(found["loss"]["bpb"])


def data_mix(folder: Path) -> dict:
    """Training bytes per source of a prepared dataset (its report.json)."""
    report = json.loads((folder / "report.json").read_text())
    return report.get("per_source") or report.get("sources") or {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/cpt"))
    p.add_argument("--base-minutes", type=float, default=3.0)
    p.add_argument("--new-minutes", type=float, default=1.5)
    p.add_argument("--ratio", type=float, default=1.0, help="A's mixing weight in (b) (::RATIO)")
    p.add_argument("--vocab-size", type=int, default=1024)
    p.add_argument(
        "--max-tokens", type=int, default=60_000, help="validation tokens scored per model and set"
    )
    args = p.parse_args()
    started, load0 = time.time(), os.getloadavg()[0]
    w = args.work
    w.mkdir(parents=True, exist_ok=True)
    print("preparing data", flush=True)
    data_a = prepare(w / "data-a", CORPUS_A)
    data_b = prepare(w / "data-b", CORPUS_B)
    data_mix_ = prepare(w / f"data-b-plus-a{args.ratio:g}", CORPUS_B, f"{CORPUS_A}::{args.ratio:g}")
    print("training", flush=True)
    runs = {
        "base (A)": (w / "base", train(w / "base", data_a, args.base_minutes, ["--vocab-size", str(args.vocab_size)])),
    }  # fmt: skip
    cont = ["--tokenizer", str(w / "base" / "tokenizer"), "--init-from", str(w / "base")]
    runs["(a) B alone"] = (w / "a-new-only", train(w / "a-new-only", data_b, args.new_minutes, cont))
    runs[f"(b) B + A::{args.ratio:g}"] = (
        w / "b-mixed",
        train(w / "b-mixed", data_mix_, args.new_minutes, cont),
    )
    print("scoring", flush=True)
    rows = {}
    for name, (run, info) in runs.items():
        rows[name] = {"val_bpb_A_old": round(val_bpb(run, data_a, args.max_tokens), 4),
                      "val_bpb_B_new": round(val_bpb(run, data_b, args.max_tokens), 4), **info}  # fmt: skip
    base_a = rows["base (A)"]["val_bpb_A_old"]
    for name in list(rows)[1:]:
        rows[name]["forgetting_A"] = round(rows[name]["val_bpb_A_old"] - base_a, 4)
    print(f"{'model':<16} {'val bpb A (old)':>16} {'val bpb B (new)':>16} {'forgetting A':>13}")
    for name, r in rows.items():
        print(
            f"{name:<16} {r['val_bpb_A_old']:>16.4f} {r['val_bpb_B_new']:>16.4f} {r.get('forgetting_A', 0):>+13.4f}"
        )
    print(json.dumps({
        "corpus_A": CORPUS_A, "corpus_B": CORPUS_B, "ratio": args.ratio, "mix_report": data_mix(data_mix_),
        "base_minutes": args.base_minutes, "new_minutes": args.new_minutes, "results": rows,
        "seconds": round(time.time() - started, 1), "load_avg_1min_start_end": [load0, os.getloadavg()[0]],
    }))  # fmt: skip


if __name__ == "__main__":
    main()
