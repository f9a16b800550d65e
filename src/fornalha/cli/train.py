"""`fornalha train` and `fornalha sweep`: thin commands over `fornalha.train`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from fornalha.cli.options import DeviceOpt, ResumeOpt, SetOpt, TimeBudgetOpt
from fornalha.errors import ConfigError

PRESET_HELP = "Preset: tiny (2-core CPU, minutes), small, gpt2-124m (one GPU)."


def _cli_overrides(
    sets: list[str] | None,
    data: str | None,
    tokenizer: str | None,
    vocab_size: int | None,
    time_budget: float | None,
    device: str | None,
    init_from: str | None = None,
) -> list[str]:
    """--set values first, then the dedicated flags (which win)."""
    out = list(sets or [])
    if init_from is not None:
        out.append(f"train.init_from={json.dumps(init_from)}")
    if data is not None:  # JSON quoting: a path is always a string, whatever it looks like
        out.append(f"data.path={json.dumps(data)}")
    if tokenizer is not None:
        out.append(f"data.tokenizer={json.dumps(tokenizer)}")
    if vocab_size is not None:
        out.append(f"data.vocab_size={vocab_size}")
    if time_budget is not None:
        out.append(f"train.time_budget_minutes={time_budget}")
    if device is not None:
        out.append(f"train.device={device}")
    return out


def train_command(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Run folder to write (checkpoints, metrics, plots); --print-config needs none."
        ),
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="Prepared dataset folder or token-shards folder.")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help=PRESET_HELP)] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML config file (see config.yaml of a run).")
    ] = None,
    tokenizer: Annotated[
        str | None,
        typer.Option(
            "--tokenizer", help="Tokenizer folder, or 'char'. Omitted: train a BPE tokenizer on --data."
        ),
    ] = None,
    vocab_size: Annotated[
        int | None,
        typer.Option(
            "--vocab-size", help="Vocabulary of the BPE tokenizer trained when --tokenizer is omitted."
        ),
    ] = None,
    sets: SetOpt = None,
    resume: ResumeOpt = False,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="With --resume: when no checkpoint is valid, train again from step 0 "
            "(damaged checkpoints are kept in checkpoints/damaged/, best/ until beaten).",
        ),
    ] = False,
    init_from: Annotated[
        str | None,
        typer.Option("--init-from", help="Start from this run's (or checkpoint's) weights: fine-tuning."),
    ] = None,
    time_budget: TimeBudgetOpt = None,
    device: DeviceOpt = None,
    print_config: Annotated[
        bool, typer.Option("--print-config", help="Print the resolved config and exit.")
    ] = False,
) -> None:
    """Train a GPT from scratch (or resume, or fine-tune with --init-from RUN).

    --out must be new, empty or a run folder; one process at a time writes it. Ctrl-C saves a
    checkpoint and prints the command that resumes (a second Ctrl-C aborts at once).

    Examples:

      fornalha train --preset tiny --data data/shakespeare --tokenizer char --out runs/a

      fornalha train --preset tiny --data data/pt --time-budget 10 --out runs/b

      fornalha train --config my.yaml --data shards/pt --set depth=6 --set train.lr=2e-3 --out runs/c

      fornalha train --out runs/c --resume

      fornalha train --preset tiny --data data/pt --init-from runs/b --set train.lr=3e-4 --out runs/tuned

      torchrun --nproc_per_node=2 -m fornalha.cli train --preset tiny --data shards/pt --out runs/ddp
    """
    from fornalha.train.config import load_config

    if out is None and not print_config:
        raise ConfigError("--out is required: the run folder to write (only --print-config runs without it)")
    run_config = out / "config.yaml" if out is not None else None
    if resume and preset is None and config is None and run_config is not None and run_config.is_file():
        config = run_config  # resume with the run's own resolved config
    if preset is None and config is None:
        preset = "tiny"
    overrides = _cli_overrides(sets, data, tokenizer, vocab_size, time_budget, device, init_from)
    cfg = load_config(preset, config, overrides)
    if print_config:
        print(cfg.to_yaml(), end="")
        return
    from fornalha.train.lock import check_out_folder
    from fornalha.train.trainer import train

    check_out_folder(out)
    train(cfg, out, resume=resume, restart=restart)


def sweep_command(
    out: Annotated[Path, typer.Option("--out", help="Sweep folder: one run folder per trial, plus results.")],
    params: Annotated[
        list[str],
        typer.Option(
            "--param", help="A swept key and its values, e.g. --param train.lr=1e-3,3e-3 (repeatable)."
        ),
    ],
    data: Annotated[
        str | None, typer.Option("--data", help="Prepared dataset folder or token-shards folder.")
    ] = None,
    preset: Annotated[str | None, typer.Option("--preset", help=PRESET_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help="YAML config file.")] = None,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="Tokenizer folder, or 'char'.")] = None,
    vocab_size: Annotated[
        int | None, typer.Option("--vocab-size", help="BPE vocabulary when training one.")
    ] = None,
    sets: SetOpt = None,
    random_n: Annotated[
        int | None, typer.Option("--random", help="Run N random combinations instead of the full grid.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for --random.")] = 0,
    time_budget: Annotated[float | None, typer.Option("--time-budget", help="Minutes per trial.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda, mps.")] = None,
) -> None:
    """Grid or random search over config keys; each trial trains with early stopping.

    Example:

      fornalha sweep --preset tiny --data shards/pt --out sweeps/a --param model.n_layer=2,4 --param train.lr=1e-3,3e-3

    Results: a table, SWEEP_DIR/sweep.csv, sweep.json and sweep.png (val bpb against each key).
    """
    from fornalha.outputs import claim
    from fornalha.train.sweep import parse_param, run_sweep

    if preset is None and config is None:
        preset = "tiny"
    owned = claim(out, "sweep")  # a non-empty folder that is not an earlier sweep's: refused
    owned.record([])  # the manifest first: an interrupted sweep can be resumed in the same --out
    run_sweep(
        [parse_param(p) for p in params],
        out,
        preset=preset,
        config_file=config,
        overrides=_cli_overrides(sets, data, tokenizer, vocab_size, time_budget, device),
        random_n=random_n,
        seed=seed,
    )
    owned.record(p.name for p in out.iterdir() if p.is_file() and p.name.startswith("sweep."))


def register(app: typer.Typer) -> None:
    """Add `train` and `sweep` to the main app."""
    app.command("train", no_args_is_help=True)(train_command)
    app.command("sweep", no_args_is_help=True)(sweep_command)
