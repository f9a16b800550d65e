"""Hyperparameter sweeps: a grid (or a random sample of it) over config keys, one run per trial.

    fornalha sweep --preset tiny --data SHARDS --out sweeps/lr \
        --param model.n_layer=2,4 --param train.lr=1e-3,3e-3 [--random 3]

Every trial is an ordinary run folder (SWEEP_DIR/trial-000/ …) trained with early stopping
(patience defaults to 3 evaluations if the config leaves it off). A finished trial (its
summary.json exists) is skipped when the sweep is run again, so an interrupted sweep resumes.
Results: a rich table, SWEEP_DIR/sweep.csv and sweep.json, and SWEEP_DIR/sweep.png with the best
validation bits per byte against each swept key.
"""

from __future__ import annotations

import csv
import itertools
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from fornalha.errors import ConfigError
from fornalha.train.config import load_config, parse_override


def parse_param(text: str) -> tuple[str, list[Any]]:
    """'train.lr=1e-3,3e-3' -> ('train.lr', [0.001, 0.003]); each value parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--param expects key=v1,v2,…, got {text!r}")
    key, raw = text.split("=", 1)
    values = []
    for part in raw.split(","):
        (_, value) = parse_override(f"{key}={part}")
        values.append(value)
    if not raw.strip() or not values:
        raise ConfigError(f"--param {key}: no values given")
    parse_override(f"{key}={raw.split(',')[0]}")  # checks the key
    return key.strip(), values


def make_trials(
    params: Sequence[tuple[str, list[Any]]], random_n: int | None = None, seed: int = 0
) -> list[dict]:
    """Every combination (grid), or `random_n` of them drawn without replacement."""
    keys = [k for k, _ in params]
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*[v for _, v in params])]
    if random_n is not None:
        if random_n < 1:
            raise ConfigError(f"--random must be positive, got {random_n}")
        grid = random.Random(seed).sample(grid, min(random_n, len(grid)))
    return grid


def run_sweep(
    params: Sequence[tuple[str, list[Any]]],
    out: str | Path,
    *,
    preset: str | None = None,
    config_file: str | Path | None = None,
    overrides: Sequence[str] = (),
    random_n: int | None = None,
    seed: int = 0,
    console: Console | None = None,
) -> list[dict[str, Any]]:
    """Run every trial and return one result row per trial (also written to sweep.csv/json)."""
    from fornalha.train.trainer import train

    console = console or Console(stderr=True)
    if not params:
        raise ConfigError("a sweep needs at least one --param key=v1,v2")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    trials = make_trials(params, random_n, seed)
    # every trial's config is checked before the first one trains
    configs = []
    for trial in trials:
        sets = list(overrides) + [
            f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in trial.items()
        ]
        cfg = load_config(preset, config_file, sets)
        if cfg.train.patience is None:
            cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"patience": 3})})
        configs.append(cfg)

    rows: list[dict[str, Any]] = []
    for i, (trial, cfg) in enumerate(zip(trials, configs)):
        run_dir = out / f"trial-{i:03d}"
        done = run_dir / "summary.json"
        label = ", ".join(f"{k}={v}" for k, v in trial.items())
        if done.is_file():
            console.print(f"[dim]trial {i} ({label}): already done[/]")
            summary = json.loads(done.read_text())
        else:
            console.print(f"[bold]trial {i + 1}/{len(trials)}[/]: {label}")
            summary = train(cfg, run_dir, resume=(run_dir / "checkpoints").is_dir(), console=console)
        rows.append(
            {
                "trial": i,
                **trial,
                "best_val_bpb": summary.get("best_val_bpb"),
                "best_val_loss": summary.get("best_val_loss"),
                "best_step": summary.get("best_step"),
                "status": summary.get("status"),
                "wall_time_s": summary.get("wall_time_s"),
                "run_dir": str(run_dir),
            }
        )
        write_results(rows, out)

    write_results(rows, out)
    print_table(rows, [k for k, _ in params], console)
    plot_sweep(rows, [k for k, _ in params], out / "sweep.png")
    return rows


def write_results(rows: list[dict[str, Any]], out: Path) -> None:
    (out / "sweep.json").write_text(json.dumps(rows, indent=2) + "\n")
    if rows:
        with open(out / "sweep.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)


def _best_first(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["best_val_bpb"] is None, r["best_val_bpb"] or 0.0))


def print_table(rows: list[dict[str, Any]], keys: list[str], console: Console) -> None:
    table = Table(title="sweep (best first)")
    for col in ["trial", *keys, "val bpb", "val loss", "best step", "status", "time (s)"]:
        table.add_column(col)
    for r in _best_first(rows):
        f = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
        table.add_row(
            str(r["trial"]), *[str(r[k]) for k in keys], f(r["best_val_bpb"]), f(r["best_val_loss"]),
            str(r["best_step"]), str(r["status"]), f"{r['wall_time_s'] or 0:.0f}",
        )  # fmt: skip
    console.print(table)


def plot_sweep(rows: list[dict[str, Any]], keys: list[str], path: Path) -> None:
    """One panel per swept key: best validation bits per byte of every trial against that key."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.8), dpi=110, squeeze=False)
    for ax, key in zip(axes[0], keys):
        pts = [(r[key], r["best_val_bpb"]) for r in rows if r["best_val_bpb"] is not None]
        numeric = all(isinstance(x, int | float) and not isinstance(x, bool) for x, _ in pts)
        if numeric:
            ax.scatter([x for x, _ in pts], [y for _, y in pts])
            if len({x for x, _ in pts}) > 1 and min(x for x, _ in pts) > 0:
                xs = sorted({x for x, _ in pts})
                if xs[-1] / xs[0] >= 10:
                    ax.set_xscale("log")
        else:
            labels = sorted({str(x) for x, _ in pts})
            ax.scatter([labels.index(str(x)) for x, _ in pts], [y for _, y in pts])
            ax.set_xticks(range(len(labels)), labels)
        ax.set_xlabel(key)
        ax.set_ylabel("best val bits per byte")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
