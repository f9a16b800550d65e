"""The training loop. Read `train()` top to bottom: it is the whole algorithm.

    for step in 1..max_steps (or until the time budget is spent):
        lr   <- schedule(progress)                           # warmup, then cosine or WSD decay
        for each of grad_accum micro-batches:                # reach the target tokens per step
            batch <- task.train_loader.next_batch()          # (x, y): y is x shifted left by one token
            loss  <- task.loss_fn(model, batch) / grad_accum # next-token cross-entropy by default
            loss.backward()                                  # gradients add up across micro-batches
        clip the gradient norm; optimizer.step(); zero the gradients
        when an evaluation is due (or at the end):
            task.evaluate(model): validation loss, bits per byte, ... on the same held-out batches
            keep the best model apart (checkpoints/best), stop early when patience runs out,
            warn when validation loss rises while training loss falls (overfitting)
        when a checkpoint is due (or at the end, or on Ctrl-C): save everything exact resume needs

What is learned comes from a `Task` (task.py): pre-training a language model is the default one;
fine-tuning and the recommender plug in their own data source, loss and evaluation. How far the
run is lives in `RunClock` (schedule.py), checkpoints and exact resume in resume.py, logging and
the progress bar in monitor.py, the run-folder lock and Ctrl-C handling in lock.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from fornalha.checkpoint import load_model
from fornalha.device import pick_device
from fornalha.errors import ConfigError, FornalhaError
from fornalha.model import GPT
from fornalha.train import distributed as D
from fornalha.train.config import RunConfig
from fornalha.train.lock import RunLock, StopSignals
from fornalha.train.monitor import RunMonitor, peak_flops, plot_losses
from fornalha.train.optim import build_optimizers, current_lr, set_lr_multiplier
from fornalha.train.resume import (
    TrainState,
    choose_checkpoint,
    is_better,
    restore,
    restore_weights,
    save_best,
    save_step_checkpoint,
    seed_everything,
)
from fornalha.train.schedule import RunClock
from fornalha.train.task import Task, count_tokens, language_model_task, next_token_loss


class TrainingDiverged(FornalhaError):
    """The training loss became NaN or infinite."""


@dataclass
class Run:
    """The context every helper of the loop takes: the config, the folder, the model and the run's state."""

    cfg: RunConfig
    dir: Path
    task: Task
    model: torch.nn.Module  # what the loop calls: compiled and/or wrapped for data parallelism
    raw_model: GPT  # the GPT itself (under FSDP2 it holds this rank's shards)
    optimizers: list[torch.optim.Optimizer]
    state: TrainState
    clock: RunClock
    monitor: RunMonitor
    dist: D.DistInfo
    device: torch.device
    autocast: torch.autocast
    grad_accum: int
    init_meta: dict | None
    say: Any


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def train(
    cfg: RunConfig,
    out: str | Path,
    *,
    resume: bool = False,
    restart: bool = False,
    console: Console | None = None,
    task: Task | None = None,
) -> dict:
    """Train a GPT as `cfg` says on `task` (None: a language model on cfg.data), writing the run
    folder `out`; returns the run's summary dict.

    resume=True continues from the newest valid checkpoint in out/checkpoints (restart=True: from
    step 0 when none is valid). Launched by torchrun, the same call trains data-parallel.
    """
    console = console or Console(stderr=True)
    lock = RunLock(Path(out), say=console.print) if _rank() == 0 else nullcontext()  # rank 0 writes
    with StopSignals() as stop, lock:
        run = start_run(cfg, Path(out), resume, restart, console, task)
        model, task, state, clock, t = run.model, run.task, run.state, run.clock, run.cfg.train
        loss_fn = task.loss_fn or next_token_loss
        batch_tokens = task.batch_tokens or count_tokens
        try:
            done = clock.over()  # a resumed run may have nothing left to do
            state.status = state.status if done else "running"
            while not done:
                # learning rate for this step: a pure function of progress through the run
                set_lr_multiplier(run.optimizers, clock.lr_multiplier())

                # forward and backward over grad_accum micro-batches; gradients add up in .grad
                step_loss, step_tokens = torch.zeros((), device=run.device), 0
                for micro in range(run.grad_accum):
                    batch = task.train_loader.next_batch()
                    with D.grad_sync(model, sync=micro == run.grad_accum - 1), run.autocast:
                        loss = loss_fn(model, batch)
                    (loss / run.grad_accum).backward()
                    step_loss += loss.detach() / run.grad_accum
                    step_tokens += batch_tokens(batch) * run.dist.world_size
                grad_norm = D.clip_grad_norm_(model.parameters(), t.grad_clip or float("inf"))
                for opt in run.optimizers:
                    opt.step()
                for opt in run.optimizers:
                    opt.zero_grad(set_to_none=True)

                train_loss = D.all_reduce_mean(step_loss, run.dist).item() * _fault_nan(state.step + 1)
                if not math.isfinite(train_loss):
                    raise diverged(run, train_loss)
                state.step += 1
                state.tokens += step_tokens
                state.interval_loss_sum += train_loss
                state.interval_loss_count += 1
                run.monitor.step(state, train_loss, grad_norm, current_lr(run.optimizers), step_tokens)

                # validation, best model, early stopping; then a checkpoint when one is due
                done = clock.over()
                evaluated = clock.eval_due() or done
                if evaluated and evaluate(run):
                    state.status, done = "early_stopped", True
                elif done:
                    state.status = clock.end_status()
                interrupted = D.any_rank(stop.requested is not None, run.dist, run.device)
                if clock.checkpoint_due(evaluated) or done or interrupted:
                    save_step_checkpoint(run)
                if evaluated:
                    run.monitor.pause()  # evaluation time is not training speed
                if interrupted and not done:
                    state.status = "interrupted"
                    break
        finally:
            run.monitor.close()
        summary = finish(run)
    if state.status == "interrupted":
        run.say(
            f"[bold yellow]interrupted[/] ({stop.requested}) at step {state.step}: checkpoint saved in "
            f"{run.dir / 'checkpoints' / f'step-{state.step:06d}'}; resume with: "
            f"{run.task.resume_command.format(out=run.dir)}"
        )
        raise KeyboardInterrupt
    return summary


# --------------------------------------------------------------------------------------------
# Setting up: device, run folder, task, model, optimizers, resume
# --------------------------------------------------------------------------------------------


def start_run(
    cfg: RunConfig, run_dir: Path, resume: bool, restart: bool, console: Console, task: Task | None
) -> Run:
    """Everything the loop needs, from a fresh start or from the newest valid checkpoint."""
    t = cfg.train
    if restart and not resume:
        raise ConfigError("--restart goes with --resume (it says what to do when no checkpoint is valid)")
    device = pick_device(t.device, announce=_rank() == 0)
    dist = D.init_distributed(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    main = dist.is_main
    # soft_wrap: long paths and the resume command stay whole (copy-pastable), the terminal wraps them
    say = (lambda *a, **k: console.print(*a, soft_wrap=True, **k)) if main else (lambda *a, **k: None)
    seed_everything(t.seed)

    # the run folder: a fresh run never writes over another one
    ckpt_root = run_dir / "checkpoints"
    if main and not resume and ckpt_root.is_dir() and any(ckpt_root.iterdir()):
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    ckpt = choose_checkpoint(ckpt_root, restart, say) if resume and main else None
    ckpt = D.gather_objects(ckpt, dist)[0] if dist.enabled else ckpt  # every rank resumes the same one
    if task is None:
        task, _ = language_model_task(cfg, run_dir, device, dist, say)

    # the model (resumed weights go in before sharding), data parallelism, optimizers
    init_meta = None
    if t.init_from:  # fine-tuning: the architecture comes from the checkpoint
        raw_model, init_meta = load_model(t.init_from, which="best")
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=init_meta["model_config"])})
    else:
        raw_model = GPT(cfg.model_cfg(vocab_size=task.vocab_size))
    if task.prepare_model is not None:  # e.g. LoRA adapters: their weights are part of a step checkpoint
        task.prepare_model(raw_model)
    mcfg = raw_model.config
    if task.vocab_size is not None and task.vocab_size > mcfg.vocab_size:
        raise ConfigError(
            f"the tokenizer has {task.vocab_size} tokens but the model's vocabulary is {mcfg.vocab_size}; "
            "raise model.vocab_size or leave it null"
        )
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": mcfg.vocab_size})})
    raw_model.to(device)
    raw_model.train()
    if ckpt is not None:
        restore_weights(ckpt, raw_model)
    model = D.wrap_model(raw_model, dist, device, fsdp=t.fsdp, compile=t.compile)
    optimizers = build_optimizers(raw_model, t)  # after wrapping: FSDP2 replaces the parameters
    torch.manual_seed(t.seed + dist.rank)  # dropout differs per rank; the initial weights did not

    state = TrainState()
    if ckpt is not None:
        state = restore(ckpt, optimizers, task.train_loader, dist)
        say(f"resumed from {ckpt} (step {state.step}, {state.tokens:,} tokens)")
    elif resume:
        say(f"--resume: no checkpoint in {ckpt_root} yet; starting from step 0")
    if main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        if (
            task.tokenizer_dir is not None
            and (run_dir / "tokenizer").resolve() != Path(task.tokenizer_dir).resolve()
        ):
            shutil.rmtree(run_dir / "tokenizer", ignore_errors=True)
            shutil.copytree(task.tokenizer_dir, run_dir / "tokenizer")
        for name, obj in task.extra_files.items():
            _write_json(run_dir / name, obj)

    if t.dtype == "auto":  # bfloat16 only where it runs natively; emulated it is many times slower
        from fornalha.device import resolve_dtype

        t = t.model_copy(update={"dtype": resolve_dtype("auto", device)})
        cfg = cfg.model_copy(update={"train": t})
    clock = RunClock(t, state, agree=lambda flag: D.broadcast_flag(flag, dist, device))
    amp_dtype = torch.bfloat16 if t.dtype == "bfloat16" else torch.float32
    flops = raw_model.flops_per_token(cfg.seq_len)
    peak = peak_flops(device, amp_dtype) if main else 1.0
    monitor = RunMonitor(run_dir, cfg, clock, main, state.step if resume else None, flops, peak, say)
    grad_accum = cfg.grad_accum(dist.world_size)
    say(
        f"model: {raw_model.num_params() / 1e6:.2f}M parameters ({mcfg.n_layer} layers, {mcfg.n_head} heads, "
        f"width {mcfg.n_embd}, vocab {mcfg.vocab_size}); {t.batch_size * cfg.seq_len * grad_accum * dist.world_size:,} "
        f"tokens/step = {dist.world_size} proc × {grad_accum} accum × {t.batch_size} × {cfg.seq_len}; "
        f"optimizer {t.optimizer}, schedule {t.schedule}, {t.dtype}"
        + (f"; time budget {t.time_budget_minutes:g} min, at most {t.max_steps} steps" if clock.budget_s
           else f"; {t.max_steps} steps")
    )  # fmt: skip
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.dtype == "bfloat16")
    return Run(cfg, run_dir, task, model, raw_model, optimizers, state, clock, monitor, dist, device,
               autocast, grad_accum, init_meta, say)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Validation, best model, early stopping, overfitting
# --------------------------------------------------------------------------------------------


def evaluate(run: Run) -> bool:
    """Evaluate the task, keep the best model, watch for overfitting. True = stop early."""
    state, t, task = run.state, run.cfg.train, run.task
    run.model.eval()
    with torch.no_grad(), run.autocast:
        metrics = {k: float(v) for k, v in task.evaluate(run.model).items()}
    run.model.train()
    if "val_loss" not in metrics or task.best_metric not in metrics:
        raise ConfigError(
            f"the task's evaluate() must return val_loss and {task.best_metric}; got {sorted(metrics)}"
        )
    val_loss = metrics["val_loss"]
    train_loss = state.interval_loss_sum / max(state.interval_loss_count, 1)
    state.interval_loss_sum, state.interval_loss_count = 0.0, 0
    gap = val_loss - train_loss  # generalization gap: how much worse on unseen data

    # overfitting: validation got worse (than last time, and clearly worse than the best) while
    # training kept getting better. The 0.5% margin keeps evaluation noise from crying wolf.
    prev_val = (state.last_eval or {}).get("val_loss")
    best_val = (state.best or {}).get("val_loss")
    overfitting = (
        prev_val is not None and state.prev_train_loss is not None and best_val is not None
        and val_loss > prev_val and val_loss > best_val * 1.005 and train_loss < state.prev_train_loss
    )  # fmt: skip
    if overfitting:
        state.overfit_steps.append(state.step)
        run.say(
            f"[bold yellow]overfitting:[/] validation loss rose {prev_val:.4f} -> {val_loss:.4f} while "
            f"training loss fell {state.prev_train_loss:.4f} -> {train_loss:.4f} (gap {gap:.4f}); the model is "
            "memorising its training data. More data, a smaller model, dropout or stopping earlier will help."
        )
    state.last_eval, state.prev_train_loss = metrics, train_loss

    best_value = (state.best or {}).get(task.best_metric)
    improved = is_better(metrics[task.best_metric], best_value, task.best_mode, t.min_delta)
    if improved:  # the same decision on every rank (the metrics were all-reduced)
        state.best, state.best_step, state.evals_since_best = metrics, state.step, 0
        save_best(run, metrics)
    else:
        state.evals_since_best += 1

    record = {"kind": "eval", "step": state.step, "tokens": state.tokens, "train_loss": train_loss, **metrics,
              "val_ppl": math.exp(min(val_loss, 50)), "gap": gap, "lr": current_lr(run.optimizers),
              "elapsed_s": run.clock.elapsed(), "overfitting": overfitting, "best": improved}  # fmt: skip
    run.monitor.write(record)
    shown = " | ".join(f"{k.removeprefix('val_')} {v:.4f}" for k, v in metrics.items() if k != "val_loss")
    run.say(
        f"step {state.step:>6} | train {train_loss:.4f} | val {val_loss:.4f}"
        + (f" | {shown}" if shown else "")
        + f" | ppl {math.exp(min(val_loss, 50)):.2f} | gap {gap:+.4f}"
        + (" | [green]best[/]" if improved else "")
    )
    if task.samples is not None and (run.dist.is_main or (t.fsdp and run.dist.enabled)):
        show_samples(run)
    if run.dist.is_main:
        plot_losses(run.dir / "metrics.jsonl", run.dir / "plots" / "loss.png", state.best_step)
    if t.patience is not None and state.evals_since_best >= t.patience:
        run.say(
            f"[bold]early stopping:[/] no improvement for {t.patience} evaluations; the best model "
            f"(step {state.best_step}, {task.best_metric} {state.best[task.best_metric]:.4f}) is in checkpoints/best"
        )
        return True
    return False


@torch.no_grad()
def show_samples(run: Run) -> None:
    """A few generations from the current weights, printed and appended to samples.jsonl.

    Sampling runs under a forked random generator seeded by the step, so it never changes the
    training run. Under FSDP2 every rank runs this (each forward is a collective); rank 0 writes.
    """
    devices = [run.device] if run.device.type == "cuda" else []
    model = run.raw_model
    model.eval()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(run.cfg.train.seed + run.state.step)
        texts = run.task.samples(model)
    model.train()
    if not run.dist.is_main:
        return
    with open(run.dir / "samples.jsonl", "a") as f:
        for text in texts:
            f.write(json.dumps({"step": run.state.step, "text": text}) + "\n")
            run.say(f"[dim]sample:[/] {text[:300]!r}")


# --------------------------------------------------------------------------------------------
# Ending: the summary, a diverged run
# --------------------------------------------------------------------------------------------


def finish(run: Run) -> dict:
    """summary.json and the final loss plot. Every value comes from the run's state, as of its
    last evaluation (every way a run ends evaluates first, except Ctrl-C and a resumed finished run)."""
    state, best = run.state, run.state.best or {}
    tokens_per_s, mfu = run.monitor.median_speed()
    summary = {
        "status": state.status,
        "steps": state.step,
        "tokens_seen": state.tokens,
        "best_step": state.best_step,
        "best_val_loss": best.get("val_loss"),
        "best_val_bpb": best.get("val_bpb"),
        "best_val_ppl": math.exp(min(best["val_loss"], 50)) if "val_loss" in best else None,
        "best": state.best,
        "best_metric": run.task.best_metric,
        "final_val_loss": (state.last_eval or {}).get("val_loss"),
        "final_train_loss": state.prev_train_loss,
        "final_eval_step": _last_eval_step(run),
        "val_tokens_per_eval": run.cfg.train.eval_batches * run.cfg.train.batch_size * run.cfg.seq_len,
        "overfitting_steps": state.overfit_steps,
        "wall_time_s": round(run.clock.elapsed(), 2),
        "parameters": run.raw_model.num_params(),
        "tokens_per_s": tokens_per_s,
        "mfu": mfu,
        "peak_flops": run.monitor.peak,
        "device": str(run.device),
        "dtype": run.cfg.train.dtype,
        "world_size": run.dist.world_size,
        "run_dir": str(run.dir),
        "best_checkpoint": str(run.dir / "checkpoints" / "best") if state.best_step is not None else None,
    }
    if run.dist.is_main:
        _write_json(run.dir / "summary.json", summary)
        if (run.dir / "metrics.jsonl").is_file():
            plot_losses(run.dir / "metrics.jsonl", run.dir / "plots" / "loss.png", state.best_step)
        run.say(
            f"[bold]{state.status}[/] after {state.step} steps, {state.tokens:,} tokens, {run.clock.elapsed():.0f}s; "
            f"best val loss {_fmt(best.get('val_loss'))} (bpb {_fmt(best.get('val_bpb'))}) at step {state.best_step}; "
            f"run folder {run.dir}"
        )
    D.barrier(run.dist)
    D.cleanup(run.dist)
    return summary


def diverged(run: Run, loss: float) -> TrainingDiverged:
    """The error for a NaN/inf loss: nothing is saved from the broken state; the last checkpoint stays."""
    from fornalha.checkpoint import step_checkpoints

    last = step_checkpoints(run.dir / "checkpoints")
    kept = f"the last good checkpoint is {last[0]}" if last else "no checkpoint was saved yet"
    if run.dist.is_main:
        _write_json(
            run.dir / "summary.json", {"status": "diverged", "steps": run.state.step, "loss": str(loss)}
        )
    return TrainingDiverged(
        f"training diverged at step {run.state.step + 1} (loss {loss}); {kept}; "
        "lower train.lr or raise train.warmup, then start again (or --resume from that checkpoint)"
    )


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _fault_nan(step: int) -> float:
    """Tests only: FORNALHA_FAULT=nan-loss:STEP makes that step's loss NaN (a deterministic divergence)."""
    return math.nan if os.environ.get("FORNALHA_FAULT") == f"nan-loss:{step}" else 1.0


def _last_eval_step(run: Run) -> int | None:
    path = run.dir / "metrics.jsonl"
    if not run.dist.is_main or not path.is_file():
        return None
    from fornalha.train.monitor import read_metrics

    steps = [r["step"] for r in read_metrics(path) if r.get("kind") == "eval"]
    return steps[-1] if steps else None


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)
