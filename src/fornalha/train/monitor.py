"""Watching a run: metrics.jsonl, the loss plot, peak FLOP/s for MFU, and optional TensorBoard / W&B.

Kept out of trainer.py so the training loop reads as the algorithm it is.
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

from fornalha.errors import ConfigError
from fornalha.files import replacing

# --------------------------------------------------------------------------------------------
# Peak FLOP/s (the denominator of MFU)
# --------------------------------------------------------------------------------------------

# Dense bf16 tensor-core peaks of common GPUs (no sparsity), FLOP/s.
GPU_PEAKS = {
    "H200": 989e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10": 125e12,
    "L4": 121e12,
    "4090": 165e12,
    "3090": 71e12,
    "V100": 125e12,
    "T4": 65e12,
}


def _cache_file() -> Path:
    root = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fornalha"
    return root / "peak_flops.json"


def measure_matmul_flops(
    device: torch.device, dtype: torch.dtype, n: int = 1024, seconds: float = 0.5
) -> float:
    """FLOP/s of a square n×n matmul in `dtype`, best of a few timed bursts."""
    gen = torch.Generator(device=device).manual_seed(0)  # its own: the run's random stream is untouched
    a = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=gen)
    for _ in range(2):
        a @ b
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def peak_flops(device: torch.device, dtype: torch.dtype) -> float:
    """The peak FLOP/s MFU is measured against: a datasheet figure for known GPUs, otherwise the
    best matmul rate seen on this machine, kept in ~/.cache/fornalha/peak_flops.json.

    Every run measures again (0.3 s) and the cache keeps the maximum: a figure first measured on
    a busy machine would otherwise stay too low for good (and MFU read above 100 %)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, flops in GPU_PEAKS.items():
            if key in name:
                return flops if dtype == torch.bfloat16 else flops / 2
    key = f"{device.type}|{platform.processor() or platform.machine()}|{torch.get_num_threads()}|{dtype}"
    path = _cache_file()
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    measured = measure_matmul_flops(device, dtype, seconds=0.3)
    if measured > cache.get(key, 0.0):
        cache[key] = measured
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(cache, indent=2))
        except OSError:
            pass
    return float(cache[key])


# --------------------------------------------------------------------------------------------
# metrics.jsonl
# --------------------------------------------------------------------------------------------

METRIC_KEYS = (
    "step",
    "tokens",
    "train_loss",
    "val_loss",
    "val_bpb",
    "lr",
    "grad_norm",
    "tokens_per_s",
    "mfu",
    "elapsed_s",
)


class MetricsLog:
    """Appends one JSON object per line; every line has all of METRIC_KEYS (null when not measured)."""

    def __init__(self, path: Path, resume_step: int | None = None) -> None:
        self.path = path
        if resume_step is not None and path.exists():
            # a killed run may have logged past its last checkpoint: drop those lines
            keep = [r for r in read_metrics(path) if r["step"] <= resume_step]
            path.write_text("".join(json.dumps(r) + "\n" for r in keep))
        elif resume_step is None and path.exists():
            path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        full = {k: record.get(k) for k in METRIC_KEYS} | record
        with open(self.path, "a") as f:
            f.write(json.dumps(full) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a crash
            continue
    return rows


# --------------------------------------------------------------------------------------------
# The loss plot
# --------------------------------------------------------------------------------------------


def plot_losses(metrics_path: Path, out_png: Path, best_step: int | None = None) -> None:
    """Train and validation loss against step; the best step marked, overfitting evals shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics(metrics_path)
    train = [
        (r["step"], r["train_loss"]) for r in rows if r.get("kind") == "train" and r["train_loss"] is not None
    ]
    evals = [r for r in rows if r.get("kind") == "eval" and r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    if train:
        ax.plot(*zip(*train), label="train", color="tab:blue", alpha=0.8)
    if evals:
        ax.plot(
            [r["step"] for r in evals],
            [r["val_loss"] for r in evals],
            "o-",
            label="validation",
            color="tab:orange",
        )
        prev = None
        shaded = False
        for r in evals:
            if r.get("overfitting") and prev is not None:
                ax.axvspan(
                    prev, r["step"], color="tab:red", alpha=0.12, label=None if shaded else "overfitting"
                )
                shaded = True
            prev = r["step"]
    if best_step is not None:
        ax.axvline(best_step, color="tab:green", ls="--", label=f"best (step {best_step})")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    with replacing(out_png) as tmp:
        fig.savefig(tmp)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# TensorBoard / Weights & Biases (optional extras, imported only when asked for)
# --------------------------------------------------------------------------------------------


class ExternalLoggers:
    """The records of metrics.jsonl, also sent to TensorBoard and/or W&B (train.log).

    Each value is logged under "<kind>/<key>" at the record's step: "train/train_loss" every
    log_interval steps, "eval/val_loss", "eval/train_loss" (the mean since the last evaluation), …
    The prefix keeps an evaluation from overwriting the step's own training values, which share
    the step number. TensorBoard writes RUN_DIR/tensorboard/; W&B writes RUN_DIR/wandb/ and, unless
    WANDB_MODE=offline (then `wandb sync` uploads it later), streams to the W&B server.
    """

    def __init__(self, backends: list[str], run_dir: Path, config: dict[str, Any], project: str) -> None:
        self.tb = None
        self.wandb = None
        if "tensorboard" in backends:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise ConfigError(
                    "train.log asks for tensorboard, but it is not installed: pip install 'fornalha[track]' "
                    "(or pip install tensorboard)"
                ) from None
            self.tb = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
        if "wandb" in backends:
            try:
                import wandb
            except ImportError:
                raise ConfigError(
                    "train.log asks for wandb, but it is not installed: pip install 'fornalha[track]' "
                    "(or pip install wandb)"
                ) from None
            try:
                self.wandb = wandb.init(project=project, dir=str(run_dir), config=config, name=run_dir.name)
            except wandb.errors.Error as exc:  # e.g. no API key: a setup problem, not a crash
                raise ConfigError(
                    f"train.log asks for wandb, but it could not start a run: {exc} "
                    "(or set WANDB_MODE=offline to keep the run on disk and `wandb sync` it later)"
                ) from None

    def log(self, record: dict[str, Any]) -> None:
        step, kind = record["step"], record.get("kind", "train")
        values = {k: v for k, v in record.items() if isinstance(v, int | float) and not isinstance(v, bool)}
        values = {f"{kind}/{k}": v for k, v in values.items() if k != "step" and math.isfinite(v)}
        if self.tb is not None:
            for k, v in values.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()


# --------------------------------------------------------------------------------------------
# The run monitor: metrics lines, speed (tokens/s, MFU), the live progress bar
# --------------------------------------------------------------------------------------------


class Progress:
    """A rich progress bar: step, losses, tokens/s, MFU and ETA (steps, or seconds under a budget)."""

    def __init__(
        self, enabled: bool, total_steps: int | None, budget_s: float | None, start_step: int
    ) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichProgress

        self.bar = RichProgress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.by_time = budget_s is not None
        self.task = self.bar.add_task("", total=budget_s if self.by_time else total_steps)
        self.bar.start()
        if not self.by_time:
            self.bar.update(self.task, completed=start_step)

    def update(self, step, elapsed, train_loss, val_loss, tok_s, mfu) -> None:
        if self.bar is None:
            return
        val = f" val {val_loss:.3f}" if val_loss is not None else ""
        desc = f"step {step} loss {train_loss:.3f}{val} | {tok_s:,.0f} tok/s | MFU {100 * mfu:.1f}%"
        self.bar.update(self.task, completed=elapsed if self.by_time else step, description=desc)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class RunMonitor:
    """Everything that watches the loop: metrics.jsonl, TensorBoard/W&B, the progress bar and speed.

    Only the main process writes; the others get a monitor that does nothing but keep time.
    """

    def __init__(self, run_dir: Path, cfg, clock, main: bool, resume_step: int | None,
                 flops_per_token: float, peak: float, say) -> None:  # fmt: skip
        t = cfg.train
        self.say, self.main, self.clock, self.log_interval = say, main, clock, t.log_interval
        self.flops_per_token, self.peak = flops_per_token, peak
        self.metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=resume_step) if main else None
        self.loggers = ExternalLoggers(t.log, run_dir, cfg.to_dict(), t.wandb_project) if main else None
        budget = clock.budget_s
        self.bar = Progress(t.progress and main, t.max_steps, budget, clock.state.step)
        self.step_rates: list[float] = []
        self.pause()

    def pause(self) -> None:
        """Restart the speed window (evaluation and checkpoint time is not training speed)."""
        self.interval_start, self.interval_tokens = time.perf_counter(), 0

    def step(self, state, train_loss: float, grad_norm: float, lr: float, step_tokens: int) -> None:
        """After each optimizer step: a metrics line every log_interval steps, the progress bar."""
        self.interval_tokens += step_tokens
        tok_s = self.interval_tokens / max(time.perf_counter() - self.interval_start, 1e-9)
        mfu = self.flops_per_token * tok_s / self.peak
        if state.step % self.log_interval == 0 and self.main:
            self.step_rates.append(tok_s)
            self.write({"kind": "train", "step": state.step, "tokens": state.tokens, "train_loss": train_loss,
                        "lr": lr, "grad_norm": grad_norm, "tokens_per_s": tok_s, "mfu": mfu,
                        "elapsed_s": self.clock.elapsed()})  # fmt: skip
            self.pause()
        val = (state.last_eval or {}).get("val_loss")
        self.bar.update(state.step, self.clock.elapsed(), train_loss, val, tok_s, mfu)

    def write(self, record: dict[str, Any]) -> None:
        if self.main:
            self.metrics.write(record)
            self.loggers.log(record)

    def median_speed(self) -> tuple[float | None, float | None]:
        """(tokens/s, MFU): medians over the logged intervals."""
        if not self.step_rates:
            return None, None
        import statistics

        rate = statistics.median(self.step_rates)
        return rate, self.flops_per_token * rate / self.peak

    def close(self) -> None:
        self.bar.close()
        if self.loggers is not None:
            self.loggers.close()
