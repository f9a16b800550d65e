"""DPO on real preference pairs, full fine-tuning vs LoRA: held-out preference accuracy, memory, size.

    flock /tmp/fornalha-bench.lock .venv/bin/python benchmarks/dpo.py --run RUN \
        [--data ../shared/data/preference/oasst1_en_100_pairs.jsonl] [--steps 60] [--lora 8] [--out /tmp/dpo-bench]

Two runs of `fornalha finetune dpo` from the same start run, the same data, steps and seed: every
weight trained (the baseline) and LoRA adapters of rank --lora. For each: the held-out figures of
the start model and of best/ (dpo_report.json), the optimizer state (bytes of optimizer.safetensors
in the last step checkpoint: AdamW's two moments per trained number), the sizes of that step
checkpoint and of best/, and the wall time. The last stdout line is JSON with all of it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_dpo(args: argparse.Namespace, out: Path, extra: list[str]) -> dict:
    cmd = [
        sys.executable, "-m", "fornalha.cli", "finetune", "dpo", "--run", args.run, "--data", args.data,
        "--out", str(out), "--beta", str(args.beta), "--set", f"train.max_steps={args.steps}",
        "--set", f"train.eval_interval={max(args.steps // 4, 1)}", "--set", "train.progress=false", *extra,
    ]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    report = json.loads((out / "dpo_report.json").read_text())
    step = sorted((out / "checkpoints").glob("step-*"))[-1]
    return {
        "before": report["before"],
        "after": report["after"],
        "best_step": report["best_step"],
        "wall_s": round(wall, 1),
        "optimizer_state_bytes": (step / "optimizer.safetensors").stat().st_size,
        "step_checkpoint_bytes": folder_bytes(step),
        "best_checkpoint_bytes": folder_bytes(out / "checkpoints" / "best"),
        "data": report["data"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", required=True)
    ap.add_argument(
        "--data",
        default=str(Path(__file__).resolve().parents[2] / "shared/data/preference/oasst1_en_100_pairs.jsonl"),
    )
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--beta", type=float, default=0.1)
    ap.add_argument("--lora", type=int, default=8)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--lora-lr", type=float, default=2e-3)
    ap.add_argument("--out", default="/tmp/fornalha-dpo-bench")
    args = ap.parse_args()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    full = run_dpo(args, root / f"full-{stamp}", ["--set", f"train.lr={args.lr}"])
    lora = run_dpo(
        args,
        root / f"lora{args.lora}-{stamp}",
        ["--lora", str(args.lora), "--set", f"train.lr={args.lora_lr}"],
    )
    result = {
        "data": Path(args.data).name,
        "steps": args.steps,
        "beta": args.beta,
        "pairs_train": full["data"]["train_pairs"],
        "pairs_held_out": full["data"]["held_out_pairs"],
        "truncated_pairs": full["data"]["truncated"],
        "baseline": "the start model (before) and full fine-tuning (for LoRA's memory and size)",
        "start_preference_accuracy": full["before"]["preference_accuracy"],
        "start_logp_accuracy": full["before"]["logp_accuracy"],
        "full": {k: v for k, v in full.items() if k != "data"},
        f"lora{args.lora}": {k: v for k, v in lora.items() if k != "data"},
        "optimizer_state_ratio_lora_vs_full": round(
            lora["optimizer_state_bytes"] / full["optimizer_state_bytes"], 4
        ),
        "step_checkpoint_ratio_lora_vs_full": round(
            lora["step_checkpoint_bytes"] / full["step_checkpoint_bytes"], 4
        ),
        "threads": os.environ.get("OMP_NUM_THREADS"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
