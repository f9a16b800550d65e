"""The rewritten training loop against the one before it: same figures, same speed.

Runs the same tiny TinyShakespeare configuration (char level, Muon, WSD, dropout) with the
trainer of a baseline commit (extracted with `git archive` into a temporary folder) and with the
working tree's, each in its own subprocess, alternating --repeat times. Reports, for each:

    best_val_loss, final train loss, tokens_seen, steps     must be identical (same algorithm)
    tokens/s                                                median of the logged intervals

    .venv/bin/python benchmarks/train_loop.py --baseline 7664480 --steps 200 --repeat 2

The LAST stdout line is one JSON object: the figures of both and the speed ratio (new / baseline).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"

RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
from fornalha.train.config import load_config
from fornalha.train.trainer import train
cfg = load_config(overrides=[
    "model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64", "model.dropout=0.1",
    "train.batch_size=8", "train.optimizer=muon", "train.schedule=wsd", "train.lr=3e-3", "train.samples=0",
    "train.eval_interval=50", "train.eval_batches=4", "train.log_interval=10", "train.progress=false",
    "train.device=cpu", f"train.max_steps={sys.argv[4]}", f"data.path={sys.argv[2]}"])
s = train(cfg, sys.argv[3])
rows = [json.loads(x) for x in open(sys.argv[3] + "/metrics.jsonl")]
last = [r["train_loss"] for r in rows if r["kind"] == "train"][-1]
print(json.dumps({"best_val_loss": s["best_val_loss"], "last_train_loss": last, "steps": s["steps"],
                  "tokens_seen": s["tokens_seen"], "tokens_per_s": s["tokens_per_s"]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default="7664480")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    sys.path.insert(0, str(ROOT / "tests" / "train"))
    from train_fixtures import make_char_shards

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        old_src = tmp / "old"
        old_src.mkdir()
        archive = subprocess.run(
            ["git", "archive", args.baseline, "src"], cwd=ROOT, capture_output=True, check=True
        )
        subprocess.run(["tar", "-x", "-C", str(old_src)], input=archive.stdout, check=True)
        shards = make_char_shards(SHAKESPEARE.read_text()[:200_000], tmp / "data")
        results: dict[str, list[dict]] = {"baseline": [], "new": []}
        env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
        for i in range(args.repeat):
            for name, src in (("baseline", old_src / "src"), ("new", ROOT / "src")):
                out = tmp / f"{name}-{i}"
                proc = subprocess.run(
                    [sys.executable, "-c", RUN, str(src), str(shards), str(out), str(args.steps)],
                    env=env | {"PYTHONPATH": str(src)}, capture_output=True, text=True, check=True,
                )  # fmt: skip
                results[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(name, i, results[name][-1], flush=True)
    figures = ("best_val_loss", "last_train_loss", "steps", "tokens_seen")
    same = all(
        a[k] == b[k] for a, b in zip(results["baseline"], results["new"], strict=True) for k in figures
    )
    speed = {k: sorted(r["tokens_per_s"] for r in v)[len(v) // 2] for k, v in results.items()}
    print(f"identical figures: {same}; tokens/s baseline {speed['baseline']:.0f}, new {speed['new']:.0f} "
          f"({speed['new'] / speed['baseline']:.3f}x)")  # fmt: skip
    print(json.dumps({"baseline_commit": args.baseline, "identical": same, "baseline": results["baseline"],
                      "new": results["new"], "speed_ratio": speed["new"] / speed["baseline"]}))  # fmt: skip


if __name__ == "__main__":
    main()
