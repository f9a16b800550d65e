"""The whole `fornalha pipeline --preset tiny` against nanoGPT's CPU recipe, on one text, in one run.

    python benchmarks/pipeline_vs_nanogpt.py --text novel.txt            # ~18 minutes on 2 cores

Issue 3's claim: on an unseen English novel of about 1.8 MB given as one plain-text file, the whole
pipeline (prepare + BPE tokenizer + shards + train + eval, under 10 minutes) reaches a lower
validation bits-per-byte than nanoGPT's README CPU configuration trained 8 minutes at character
level on the same text.

1. fornalha: `fornalha pipeline --preset tiny --source TEXT --split tail --val-fraction 0.1`, timed
   end to end; its bits per byte on the validation split come from eval.json.
2. BASELINE, on exactly the same train/validation text (read back from the pipeline's dataset
   folder): nanoGPT's model and optimizer (from speedrun_shakespeare.py: 4 layers, 4 heads, width
   128, context 64, batch 12, AdamW 1e-3, warmup 100, cosine to 1e-4, clip 1.0) at character level,
   trained for `--baseline-minutes` of wall time (its cosine horizon set from a measured step time, as
   a user would set max_iters for 8 minutes). Its validation loss (nats per character, the whole
   split) becomes bits per byte as loss · characters / (bytes · ln 2).
The last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speedrun_shakespeare as S  # noqa: E402  (nanoGPT's model, optimizer and schedule)
from fornalha.data.dataset import iter_texts  # noqa: E402


def run_pipeline(text: Path, out: Path, minutes: float) -> tuple[dict, float]:
    cmd = [
        sys.executable, "-m", "fornalha.cli", "pipeline", "--preset", "tiny", "--source", str(text),
        "--split", "tail", "--val-fraction", "0.1", "--minutes", str(minutes), "--out", str(out),
    ]  # fmt: skip
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return json.loads((out / "eval.json").read_text()), time.perf_counter() - t0


def run_nanogpt(train_text: str, val_text: str, minutes: float, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(1337)
    chars = sorted(set(train_text + val_text))
    stoi = {c: i for i, c in enumerate(chars)}
    train = torch.tensor([stoi[c] for c in train_text], dtype=torch.long)
    val = torch.tensor([stoi[c] for c in val_text], dtype=torch.long)
    model = S.NanoGPT(len(chars), 64, n_layer=4, n_head=4, n_embd=128)
    opt = S.nanogpt_optimizer(model, 1e-3)
    gen = torch.Generator().manual_seed(1337)
    B, T = 12, 64

    def step(i: int, recipe: S.Recipe) -> None:
        ix = torch.randint(len(train) - T - 1, (B,), generator=gen)
        x = torch.stack([train[j : j + T] for j in ix])
        y = torch.stack([train[j + 1 : j + 1 + T] for j in ix])
        for g in opt.param_groups:
            g["lr"] = recipe.lr * S.lr_factor(recipe, i)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    # nanoGPT is configured by iterations: measure the step time, then set max_iters (= lr_decay_iters)
    # so that training lasts `minutes`, as a user with 8 minutes would.
    probe = S.Recipe(name="probe", model="nanogpt", max_steps=10**9)
    t0 = time.perf_counter()
    for i in range(30):
        step(i, probe)
    per_step = (time.perf_counter() - t0) / 30
    max_iters = int(minutes * 60 / per_step)
    recipe = S.Recipe(name="nanogpt", model="nanogpt", max_steps=max_iters)
    print(
        f"[nanogpt] {len(chars)} characters; {per_step * 1e3:.1f} ms/step -> max_iters {max_iters}",
        flush=True,
    )
    model_fresh = S.NanoGPT(len(chars), 64, n_layer=4, n_head=4, n_embd=128)  # restart from scratch
    model.load_state_dict(model_fresh.state_dict())
    opt = S.nanogpt_optimizer(model, 1e-3)
    t0 = time.perf_counter()
    i = 0
    while i < max_iters and time.perf_counter() - t0 < minutes * 60:
        step(i, recipe)
        i += 1
        if i % 500 == 0:
            print(f"[nanogpt] step {i}/{max_iters}  {time.perf_counter() - t0:.0f}s", flush=True)
    wall = time.perf_counter() - t0
    xs, ys = S.val_windows(val, T, 1.0)
    loss = S.evaluate(model, xs, ys, autocast=False)
    n_chars = ys.numel()
    scored = "".join(chars[c] for c in ys.flatten().tolist())
    bpb = loss * n_chars / (len(scored.encode("utf-8")) * math.log(2))
    return dict(steps=i, wall_s=wall, val_loss_nats_per_char=loss, val_bpb=bpb, max_iters=max_iters)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--text", type=Path, required=True, help="one plain-text file (a novel)")
    ap.add_argument("--minutes", type=float, default=9.0, help="the pipeline's whole budget")
    ap.add_argument("--baseline-minutes", type=float, default=8.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="pipeline folder (default: a temp folder)")
    args = ap.parse_args()
    if not args.text.is_file():
        sys.exit(f"error: {args.text} is not a file")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    out = args.out or Path(tempfile.mkdtemp(prefix="pipeline-vs-nanogpt-")) / "run"

    ev, pipeline_wall = run_pipeline(args.text, out, args.minutes)
    ours = ev["loss"]
    train_text = "".join(iter_texts(out / "dataset", "train"))
    val_text = "".join(iter_texts(out / "dataset", "val"))
    base = run_nanogpt(train_text, val_text, args.baseline_minutes, args.threads)

    print(
        f"\ntext: {args.text} ({args.text.stat().st_size / 1e6:.2f} MB); val {len(val_text.encode()):,} bytes"
    )
    print(f"fornalha pipeline (all stages): {pipeline_wall / 60:.1f} min, val bpb {ours['bpb']:.4f}")
    print(
        f"nanoGPT char-level, {base['wall_s'] / 60:.1f} min training ({base['steps']} steps): "
        f"val loss {base['val_loss_nats_per_char']:.4f} nats/char = {base['val_bpb']:.4f} bpb"
    )
    print(f"ratio (fornalha / nanoGPT bpb): {ours['bpb'] / base['val_bpb']:.3f}")
    result = {
        "text": str(args.text),
        "pipeline_wall_s": round(pipeline_wall, 1),
        "fornalha_val_bpb": ours["bpb"],
        "nanogpt_val_bpb": base["val_bpb"],
        "nanogpt_val_loss": base["val_loss_nats_per_char"],
        "nanogpt_steps": base["steps"],
        "nanogpt_wall_s": round(base["wall_s"], 1),
        "bpb_ratio": ours["bpb"] / base["val_bpb"],
        "load_avg_1m": os.getloadavg()[0],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
