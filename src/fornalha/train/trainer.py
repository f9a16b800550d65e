"""The training loop. Read `train()` top to bottom: it is the whole algorithm.

    for step in 1..max_steps:
        lr   <- schedule(progress)                           # warmup, then cosine or WSD decay
        for each of grad_accum micro-batches:                # reach the target tokens per step
            x, y  <- next batch of token windows             # y is x shifted left by one token
            loss  <- cross_entropy(model(x), y) / grad_accum # next-token prediction
            loss.backward()                                  # gradients add up across micro-batches
        clip the gradient norm; optimizer.step(); zero the gradients
        every eval_interval steps:
            validation loss / perplexity / bits per byte on the same held-out batches
            keep the best checkpoint apart, save the latest, stop early when patience runs out,
            warn when validation loss rises while training loss falls (overfitting)

Everything else is bookkeeping a real run needs: a run folder (config.yaml, tokenizer/,
metrics.jsonl, summary.json, plots/loss.png, checkpoints/), exact resume after a crash,
a wall-clock budget, data parallelism, and a live progress bar.

Exact resume: a checkpoint holds the weights, the optimizer moments, the step (the schedule is a
pure function of it), every random-number generator and the data loader's position. `--resume`
restores all of them, so on CPU a run killed mid-way and resumed ends bit-identical to one that
was never interrupted (tests/train/test_resume.py kills one with SIGKILL to check).
"""

from __future__ import annotations

import json
import math
import random
import shutil
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from fornalha.checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    load_extra,
    load_model,
    model_state_for_saving,
    prune_checkpoints,
    save_checkpoint,
)
from fornalha.device import pick_device
from fornalha.errors import CheckpointError, ConfigError
from fornalha.model import GPT
from fornalha.train import distributed as D
from fornalha.train.config import RunConfig
from fornalha.train.data import resolve_data
from fornalha.train.monitor import ExternalLoggers, MetricsLog, peak_flops, plot_losses
from fornalha.train.optim import (
    build_optimizers,
    current_lr,
    load_optimizer_state,
    optimizer_state_to_tensors,
    set_lr_multiplier,
)
from fornalha.train.schedule import lr_multiplier


@dataclass
class TrainState:
    """Everything about the run's progress that is not weights or optimizer state (saved as JSON)."""

    step: int = 0  # optimizer steps done
    tokens: int = 0  # training tokens consumed (all processes)
    elapsed_s: float = 0.0  # wall time spent in earlier sessions of this run (before a resume)
    best_val_loss: float | None = None
    best_val_bpb: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0  # early-stopping counter
    prev_val_loss: float | None = None  # last evaluation, for the overfitting check
    prev_train_loss: float | None = None
    interval_loss_sum: float = 0.0  # training losses since the last evaluation
    interval_loss_count: int = 0
    next_eval_s: float = 0.0  # time-budget mode: when the next evaluation is due
    overfit_steps: list[int] = field(default_factory=list)
    status: str = "running"


# --------------------------------------------------------------------------------------------
# The training loop
# --------------------------------------------------------------------------------------------


def train(cfg: RunConfig, out: str | Path, *, resume: bool = False, console: Console | None = None) -> dict:
    """Train a GPT as `cfg` says, writing the run folder `out`; returns the run's summary dict.

    cfg.data.path is a prepared dataset or a shards folder; cfg.data.tokenizer a tokenizer folder,
    'char', or None (train BPE). With resume=True the newest valid checkpoint in out/checkpoints is
    restored exactly. Launched by torchrun, the same call trains data-parallel.
    """
    console = console or Console(stderr=True)
    t = cfg.train
    budget_s = t.time_budget_minutes * 60 if t.time_budget_minutes else None

    # ---- 1. processes, device, seeds ------------------------------------------------------------
    device = pick_device(t.device, announce=_rank() == 0)
    dist = D.init_distributed(device.type)
    if device.type == "cuda" and dist.enabled:
        device = torch.device("cuda", dist.local_rank)
    main = dist.is_main
    say = console.print if main else (lambda *a, **k: None)
    seed_everything(t.seed)

    # ---- 2. run folder, tokenizer, data ----------------------------------------------------------
    run_dir = Path(out)
    ckpt_root = run_dir / "checkpoints"
    if main and not resume and ckpt_root.is_dir() and any(ckpt_root.iterdir()):
        raise ConfigError(
            f"{run_dir} already holds a run; pass --resume to continue it or choose another --out"
        )
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    # rank 0 trains the tokenizer / tokenizes first; the others then find everything cached
    if main:
        shards_dir, tok_dir = resolve_data(
            cfg.data.path, cfg.data.tokenizer, cfg.data.vocab_size, run_dir, t.progress
        )
    D.barrier(dist)
    if not main:
        shards_dir, tok_dir = resolve_data(
            cfg.data.path, cfg.data.tokenizer, cfg.data.vocab_size, run_dir, False
        )
    from fornalha.data.loader import TokenLoader
    from fornalha.data.shards import read_index
    from fornalha.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tok_dir)
    has_val = "val" in read_index(shards_dir)["splits"]
    val_split = "val" if has_val else "train"
    if not has_val:
        say("[yellow]warning:[/] the data has no val split; validating on the start of train (not held out)")

    # ---- 3. model (resumed weights go in before sharding), data parallelism, optimizers -------------
    init_meta = None
    if t.init_from:  # fine-tuning: the architecture comes from the checkpoint
        base, init_meta = load_model(t.init_from, which="best")
        model = base
        cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update=init_meta["model_config"])})
    else:
        model = GPT(cfg.model_cfg(vocab_size=cfg.model.vocab_size or tokenizer.vocab_size))
    mcfg = model.config
    if tokenizer.vocab_size > mcfg.vocab_size:
        raise ConfigError(
            f"the tokenizer has {tokenizer.vocab_size} tokens but model.vocab_size is {mcfg.vocab_size}"
        )
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"vocab_size": mcfg.vocab_size})})
    model.to(device)
    model.train()
    ckpt = latest_checkpoint(ckpt_root) if resume else None
    if ckpt is not None:
        restore_weights(ckpt, model)
    raw_model = model  # the GPT itself (under FSDP2 it holds this rank's shards)
    model = D.wrap_model(model, dist, device, fsdp=t.fsdp, compile=t.compile)
    optimizers = build_optimizers(raw_model, t)  # after wrapping: FSDP2 replaces the parameters
    torch.manual_seed(t.seed + dist.rank)  # dropout differs per rank; the initial weights did not
    fsdp = t.fsdp and dist.enabled  # every forward pass is then a collective: all ranks run it

    seq_len = cfg.seq_len
    grad_accum = cfg.grad_accum(dist.world_size)
    tokens_per_step = t.batch_size * seq_len * grad_accum * dist.world_size
    max_steps = t.max_steps if budget_s is None else 10**9  # a budget runs until the time is up
    loader = TokenLoader(
        shards_dir, "train", t.batch_size, seq_len, seed=t.seed, rank=dist.rank, world_size=dist.world_size,
        device=str(device),
    )  # fmt: skip
    token_bytes = torch.as_tensor(tokenizer.token_bytes(), dtype=torch.float64, device=device)

    # ---- 4. resume, or start fresh ----------------------------------------------------------------
    state = TrainState(next_eval_s=budget_s / t.evals_per_budget if budget_s else 0.0)
    if resume and ckpt is None:
        say(f"[yellow]--resume:[/] no valid checkpoint in {ckpt_root}; starting from scratch")
    elif ckpt is not None:
        state = restore(ckpt, optimizers, loader, dist)
        say(f"resumed from {ckpt} (step {state.step}, {state.tokens:,} tokens)")
    if main:
        (run_dir / "config.yaml").write_text(cfg.to_yaml())
        if (run_dir / "tokenizer").resolve() != tok_dir.resolve():
            shutil.rmtree(run_dir / "tokenizer", ignore_errors=True)
            shutil.copytree(tok_dir, run_dir / "tokenizer")
    metrics = (
        MetricsLog(run_dir / "metrics.jsonl", resume_step=state.step if resume else None) if main else None
    )
    loggers = ExternalLoggers(t.log, run_dir, cfg.to_dict(), t.wandb_project) if main else None

    # ---- 5. precision and speed accounting -----------------------------------------------------------
    amp_dtype = torch.bfloat16 if t.dtype == "bfloat16" else torch.float32
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.dtype == "bfloat16")
    flops_per_token = raw_model.flops_per_token(seq_len)
    peak = peak_flops(device, amp_dtype) if main else 1.0

    n_params = raw_model.num_params()
    say(
        f"model: {n_params / 1e6:.2f}M parameters ({mcfg.n_layer} layers, {mcfg.n_head} heads, width {mcfg.n_embd}, "
        f"vocab {mcfg.vocab_size}); {tokens_per_step:,} tokens/step = {dist.world_size} proc × {grad_accum} accum × "
        f"{t.batch_size} × {seq_len}; optimizer {t.optimizer}, schedule {t.schedule}, {t.dtype}"
        + (f"; time budget {t.time_budget_minutes:g} min" if budget_s else f"; {max_steps} steps")
    )

    def evaluate_now() -> tuple[float, float]:
        model.eval()
        loss, bpb = evaluate(
            model,
            shards_dir,
            val_split,
            t.batch_size,
            seq_len,
            t.eval_batches,
            token_bytes,
            autocast,
            device,
            dist,
        )
        model.train()
        return loss, bpb

    # ---- 6. the loop --------------------------------------------------------------------------------
    session_start = time.perf_counter()
    elapsed = lambda: state.elapsed_s + time.perf_counter() - session_start  # noqa: E731
    progress = Progress(t.progress and main, max_steps if budget_s is None else None, budget_s, state.step)
    interval_start, interval_tokens, step_rates = time.perf_counter(), 0, []
    last_eval_step = state.step if resume else -1
    try:
        while state.step < max_steps:
            # learning rate for this step: a pure function of progress through the run
            frac = (state.step + 1) / max_steps if budget_s is None else elapsed() / budget_s
            warm = t.warmup if t.warmup < 1 else t.warmup / max_steps if budget_s is None else 0.0
            mult = lr_multiplier(frac, t.schedule, warm, t.min_lr_ratio, t.decay)
            if t.warmup >= 1 and budget_s is not None:  # warmup in steps under a time budget
                mult *= min(1.0, (state.step + 1) / t.warmup)
            set_lr_multiplier(optimizers, mult)

            # forward and backward over grad_accum micro-batches; gradients add up in .grad
            step_loss = torch.zeros((), device=device)
            for micro in range(grad_accum):
                x, y = loader.next_batch()
                with D.grad_sync(model, sync=micro == grad_accum - 1), autocast:
                    _, loss = model(x, y)
                (loss / grad_accum).backward()
                step_loss += loss.detach() / grad_accum
            grad_norm = D.clip_grad_norm_(model.parameters(), t.grad_clip or float("inf"))
            for opt in optimizers:
                opt.step()
            for opt in optimizers:
                opt.zero_grad(set_to_none=True)

            train_loss = D.all_reduce_mean(step_loss, dist).item()
            if not math.isfinite(train_loss):
                raise ConfigError(
                    f"training diverged at step {state.step + 1} (loss {train_loss}); lower train.lr or raise warmup"
                )
            state.step += 1
            state.tokens += tokens_per_step
            state.interval_loss_sum += train_loss
            state.interval_loss_count += 1
            interval_tokens += tokens_per_step

            # ---- logging -----------------------------------------------------------------------
            now = time.perf_counter()
            tok_s = interval_tokens / max(now - interval_start, 1e-9)
            mfu = flops_per_token * tok_s / peak
            if state.step % t.log_interval == 0 and main:
                step_rates.append(tok_s)
                record = {"kind": "train", "step": state.step, "tokens": state.tokens, "train_loss": train_loss,
                          "lr": current_lr(optimizers), "grad_norm": grad_norm, "tokens_per_s": tok_s,
                          "mfu": mfu, "elapsed_s": elapsed()}  # fmt: skip
                metrics.write(record)
                loggers.log(record)
                interval_start, interval_tokens = time.perf_counter(), 0
            progress.update(state.step, elapsed(), train_loss, state.prev_val_loss, tok_s, mfu)

            # ---- is the run over? ---------------------------------------------------------------------
            out_of_time = budget_s is not None and D.broadcast_flag(elapsed() >= budget_s, dist, device)
            done = state.step >= max_steps or out_of_time
            if budget_s is None:
                eval_due = state.step % t.eval_interval == 0
            else:
                eval_due = D.broadcast_flag(elapsed() >= state.next_eval_s, dist, device)

            # ---- validation, best checkpoint, early stopping, overfitting --------------------------
            if eval_due or done:
                if budget_s is not None:
                    state.next_eval_s += budget_s / t.evals_per_budget
                val_loss, val_bpb = evaluate_now()
                last_eval_step = state.step
                stop = after_evaluation(
                    state, cfg, val_loss, val_bpb, raw_model, run_dir, optimizers, metrics, loggers, say, elapsed(),
                    main, init_meta,
                )  # fmt: skip
                if t.samples and (main or fsdp):  # sharded: every rank generates, rank 0 writes
                    show_samples(raw_model, tokenizer, cfg, state.step, run_dir, say, device, write=main)
                if main:
                    plot_losses(run_dir / "metrics.jsonl", run_dir / "plots" / "loss.png", state.best_step)
                if stop:
                    state.status = "early_stopped"
                    done = True
                interval_start, interval_tokens = (
                    time.perf_counter(),
                    0,
                )  # evaluation time is not training speed

            # ---- checkpoint (weights, optimizer, schedule position, RNG, data position) ---------------
            ckpt_every = t.checkpoint_interval or t.eval_interval
            if (
                (budget_s is None and state.step % ckpt_every == 0)
                or (budget_s is not None and eval_due)
                or done
            ):
                if done and state.status == "running":
                    state.status = "time_budget" if out_of_time and state.step < max_steps else "completed"
                save_step_checkpoint(
                    run_dir, raw_model, optimizers, loader, state, cfg, elapsed(), dist, init_meta
                )
            if done:
                break
    finally:
        progress.close()
        if loggers is not None:
            loggers.close()

    # ---- 7. wrap up ---------------------------------------------------------------------------------
    if last_eval_step != state.step:  # e.g. resumed a finished run: nothing new, evaluate for the summary
        evaluate_now()
    summary = {
        "status": state.status,
        "steps": state.step,
        "tokens_seen": state.tokens,
        "best_step": state.best_step,
        "best_val_loss": state.best_val_loss,
        "best_val_bpb": state.best_val_bpb,
        "best_val_ppl": math.exp(state.best_val_loss) if state.best_val_loss is not None else None,
        "final_val_loss": state.prev_val_loss,
        "final_train_loss": state.prev_train_loss,
        "overfitting_steps": state.overfit_steps,
        "wall_time_s": round(elapsed(), 2),
        "parameters": n_params,
        "tokens_per_s": statistics.median(step_rates) if step_rates else None,
        "mfu": (flops_per_token * statistics.median(step_rates) / peak) if step_rates else None,
        "peak_flops": peak,
        "device": str(device),
        "dtype": t.dtype,
        "world_size": dist.world_size,
        "run_dir": str(run_dir),
        "best_checkpoint": str(ckpt_root / "best") if state.best_step is not None else None,
    }
    if main:
        _write_json(run_dir / "summary.json", summary)
        plot_losses(run_dir / "metrics.jsonl", run_dir / "plots" / "loss.png", state.best_step)
        say(
            f"[bold]{state.status}[/] after {state.step} steps, {state.tokens:,} tokens, {elapsed():.0f}s; "
            f"best val loss {_fmt(state.best_val_loss)} (bpb {_fmt(state.best_val_bpb)}) at step {state.best_step}; "
            f"run folder {run_dir}"
        )
    D.barrier(dist)
    D.cleanup(dist)
    return summary


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    shards_dir: Path,
    split: str,
    batch_size: int,
    seq_len: int,
    max_batches: int,
    token_bytes: torch.Tensor,
    autocast: torch.autocast,
    device: torch.device,
    dist: D.DistInfo,
) -> tuple[float, float]:
    """(mean loss in nats per token, bits per byte) over the first `max_batches` batches of `split`.

    The same batches every time, so evaluations are comparable. Bits per byte does not depend on
    the tokenizer: total nats over target tokens / (ln 2 · total UTF-8 bytes of those tokens).
    Targets of -1 (masked) and special tokens (0 bytes) still count as nats but add no bytes.
    """
    from fornalha.data.loader import iter_eval_batches

    per_rank = math.ceil(max_batches / dist.world_size)
    sums = torch.zeros(3, dtype=torch.float64, device=device)  # nats, tokens, bytes
    batches = iter_eval_batches(
        shards_dir, split, batch_size, seq_len, max_batches=per_rank, device=str(device),
        rank=dist.rank, world_size=dist.world_size,
    )  # fmt: skip
    while True:
        batch = next(batches, None)
        # Under FSDP2 every forward is a collective, so all ranks run the same number: a rank whose
        # share of a short split ran out runs fully masked batches (targets -1 add nothing).
        if not D.any_rank(batch is not None, dist, device):
            break
        if batch is None:
            x = torch.zeros(1, seq_len, dtype=torch.long, device=device)
            batch = x, torch.full_like(x, -1)
        x, y = batch
        with autocast:
            _, loss = model(x, y, loss_reduction="none")
        mask = y >= 0
        sums[0] += loss.double()[mask].sum()
        sums[1] += mask.sum()
        sums[2] += token_bytes[y[mask]].sum()
    D.all_reduce_sum(sums, dist)
    nats, count, n_bytes = sums.tolist()
    if count == 0:
        raise ConfigError(
            f"the {split} split has too few tokens for one evaluation batch of {seq_len} tokens"
        )
    return nats / count, nats / (math.log(2) * max(n_bytes, 1.0))


def after_evaluation(
    state: TrainState,
    cfg: RunConfig,
    val_loss: float,
    val_bpb: float,
    model: GPT,
    run_dir: Path,
    optimizers: list[torch.optim.Optimizer],
    metrics: MetricsLog | None,
    loggers: ExternalLoggers | None,
    say,
    elapsed: float,
    main: bool,
    init_meta: dict | None,
) -> bool:
    """Record an evaluation; keep the best checkpoint; watch for overfitting. True = stop early."""
    t = cfg.train
    train_loss = state.interval_loss_sum / max(state.interval_loss_count, 1)
    state.interval_loss_sum, state.interval_loss_count = 0.0, 0
    gap = val_loss - train_loss  # generalization gap: how much worse on unseen text

    # overfitting: validation got worse (than last time, and clearly worse than the best) while
    # training kept getting better. The 0.5% margin keeps evaluation noise from crying wolf.
    overfitting = (
        state.prev_val_loss is not None
        and state.prev_train_loss is not None
        and state.best_val_loss is not None
        and val_loss > state.prev_val_loss
        and val_loss > state.best_val_loss * 1.005
        and train_loss < state.prev_train_loss
    )
    if overfitting:
        state.overfit_steps.append(state.step)
        say(
            f"[bold yellow]overfitting:[/] validation loss rose {state.prev_val_loss:.4f} -> {val_loss:.4f} while "
            f"training loss fell {state.prev_train_loss:.4f} -> {train_loss:.4f} (gap {gap:.4f}); the model is "
            "memorising its training text. More data, a smaller model, dropout or stopping earlier will help."
        )
    state.prev_val_loss, state.prev_train_loss = val_loss, train_loss

    improved = state.best_val_loss is None or val_loss < state.best_val_loss - t.min_delta
    if improved:  # the same decision on every rank (val_loss was all-reduced)
        state.best_val_loss, state.best_val_bpb, state.best_step = val_loss, val_bpb, state.step
        state.evals_since_best = 0
        weights = model_state_for_saving(model, keep=main)  # every rank: FSDP2 shards are gathered
        if main:
            save_checkpoint(
                run_dir / "checkpoints" / "best",
                weights,
                checkpoint_meta(model, state, cfg, val_loss, val_bpb, init_meta),
            )
    else:
        state.evals_since_best += 1

    if main:
        record = {"kind": "eval", "step": state.step, "tokens": state.tokens, "train_loss": train_loss,
                  "val_loss": val_loss, "val_bpb": val_bpb, "val_ppl": math.exp(min(val_loss, 50)),
                  "gap": gap, "lr": current_lr(optimizers), "elapsed_s": elapsed,
                  "overfitting": overfitting, "best": improved}  # fmt: skip
        metrics.write(record)
        loggers.log(record)
        say(
            f"step {state.step:>6} | train {train_loss:.4f} | val {val_loss:.4f} | bpb {val_bpb:.4f} | "
            f"ppl {math.exp(min(val_loss, 50)):.2f} | gap {gap:+.4f}"
            + (" | [green]best[/]" if improved else "")
        )
    if t.patience is not None and state.evals_since_best >= t.patience:
        say(
            f"[bold]early stopping:[/] no improvement for {t.patience} evaluations; "
            f"the best model (step {state.best_step}, val loss {state.best_val_loss:.4f}) is in checkpoints/best"
        )
        return True
    return False


@torch.no_grad()
def show_samples(
    model: GPT, tokenizer, cfg: RunConfig, step: int, run_dir: Path, say, device, write: bool = True
) -> None:
    """A few generations from the current weights, printed and appended to samples.jsonl.

    Sampling runs under a forked random generator, so it never changes the training run. Under
    FSDP2 every rank runs this (each forward is a collective) and draws the same tokens; only the
    one with write=True prints and writes them.
    """
    t = cfg.train
    prompt = [tokenizer.bos_id] + tokenizer.encode(t.sample_prompt)
    prompt = prompt[-(model.config.block_size // 2) :]
    idx = torch.tensor([prompt] * t.samples, dtype=torch.long, device=device)
    devices = [device] if device.type == "cuda" else []
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(t.seed + step)
        out = model.generate(idx, t.sample_tokens, temperature=t.sample_temperature, top_k=200)
    model.train(was_training)
    if not write:
        return
    specials = set(tokenizer.special_ids.values())
    with open(run_dir / "samples.jsonl", "a") as f:
        for row in out.tolist():
            text = t.sample_prompt + tokenizer.decode([i for i in row[len(prompt) :] if i not in specials])
            f.write(json.dumps({"step": step, "text": text}) + "\n")
            say(f"[dim]sample:[/] {text[:300]!r}")


# --------------------------------------------------------------------------------------------
# Checkpoints: save and restore everything a bit-exact resume needs
# --------------------------------------------------------------------------------------------


def checkpoint_meta(
    model: GPT, state: TrainState, cfg: RunConfig, val_loss, val_bpb, init_meta
) -> dict[str, Any]:
    return {
        "model_config": model.config.to_dict(),
        "step": state.step,
        "tokens_seen": state.tokens,
        "val_loss": val_loss,
        "val_bpb": val_bpb,
        "run_config": cfg.to_dict(),
        "lineage": {
            "parent": init_meta.get("path") if init_meta else None,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    }


def save_step_checkpoint(
    run_dir: Path,
    model: GPT,
    optimizers: list[torch.optim.Optimizer],
    loader,
    state: TrainState,
    cfg: RunConfig,
    elapsed: float,
    dist: D.DistInfo,
    init_meta: dict | None,
) -> None:
    """RUN_DIR/checkpoints/step-NNNNNN/: weights, optimizer, TrainState, RNG and loader state; keep K newest.

    Every rank calls this: the RNG states are gathered, and so are FSDP2's shards; rank 0 writes.
    """
    rngs = D.gather_objects(rng_state(), dist)  # every rank's generators, so each resumes its own
    weights = model_state_for_saving(model, keep=dist.is_main)
    opt_tensors, opt_json = optimizer_state_to_tensors(optimizers, keep=dist.is_main)
    if not dist.is_main:
        return
    rng_tensors = {f"{r}.{k}": v for r, s in enumerate(rngs) for k, v in s["tensors"].items()}
    saved_state = asdict(state) | {"elapsed_s": elapsed}
    root = run_dir / "checkpoints"
    save_checkpoint(
        root / f"step-{state.step:06d}",
        weights,
        checkpoint_meta(model, state, cfg, state.prev_val_loss, None, init_meta),
        extra_tensors={"optimizer": opt_tensors, "rng": rng_tensors},
        extra_json={
            "optimizer": opt_json,
            "state": saved_state,
            "rng": [s["json"] for s in rngs],
            "loader": loader.state_dict(),
        },
    )
    prune_checkpoints(root, cfg.train.keep_checkpoints)


def restore_weights(ckpt: Path, model: GPT) -> None:
    """Load a step checkpoint's weights into the (not yet sharded or wrapped) model."""
    weights, meta = load_checkpoint(ckpt)
    if meta["model_config"] != model.config.to_dict():
        raise CheckpointError(
            f"checkpoint {ckpt} has model config {meta['model_config']}, the run asks for {model.config.to_dict()}; "
            "resume with the run's own config.yaml"
        )
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise CheckpointError(
            f"checkpoint {ckpt} does not fit the model: missing {missing}, unexpected {unexpected}"
        )


def restore(ckpt: Path, optimizers, loader, dist: D.DistInfo) -> TrainState:
    """Load a step checkpoint into the optimizers (sharded like their parameters under FSDP2), the
    loader and the RNGs; return its TrainState. The weights went in first (`restore_weights`)."""
    load_optimizer_state(
        optimizers, load_extra(ckpt, "optimizer"), json.loads((ckpt / "optimizer.json").read_text())
    )
    loader_state = dict(load_extra(ckpt, "loader"))
    loader_state["rank"] = dist.rank  # rank 0 saved it; every rank is at the same position
    loader.load_state_dict(loader_state)
    rng_json = json.loads((ckpt / "rng.json").read_text())
    rng_tensors = load_file_tensors(ckpt / "rng.safetensors")
    rank = dist.rank if dist.rank < len(rng_json) else 0
    set_rng_state(
        rng_json[rank], {k.split(".", 1)[1]: v for k, v in rng_tensors.items() if k.startswith(f"{rank}.")}
    )
    saved = json.loads((ckpt / "state.json").read_text())
    return TrainState(**{k: v for k, v in saved.items() if k in TrainState.__dataclass_fields__})


def load_file_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) generator states, split into JSON and tensors."""
    version, mt, gauss = random.getstate()
    np_state = np.random.get_state()
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{i}"] = s
    return {
        "json": {
            "python": [version, list(mt), gauss],
            "numpy": [
                np_state[0],
                np_state[1].tolist(),
                int(np_state[2]),
                int(np_state[3]),
                float(np_state[4]),
            ],
        },
        "tensors": tensors,
    }


def set_rng_state(js: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, mt, gauss = js["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = js["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


class Progress:
    """A rich progress bar: step, losses, tokens/s, MFU and ETA (steps, or seconds under a budget)."""

    def __init__(
        self, enabled: bool, total_steps: int | None, budget_s: float | None, start_step: int
    ) -> None:
        self.bar = None
        if not enabled:
            return
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("{task.description}"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self.by_time = total_steps is None
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


def _rank() -> int:
    import os

    return int(os.environ.get("RANK", "0"))


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


if __name__ == "__main__":  # pragma: no cover - use `fornalha train`
    warnings.warn("run `fornalha train` instead", stacklevel=1)
    sys.exit(2)
