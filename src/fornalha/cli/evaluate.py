"""`fornalha eval`: loss, perplexity, bits per byte and multiple-choice accuracy of a trained run.

A thin command over `fornalha.evaluate.evaluate_run`; the numbers go to a rich table, to
RUN_DIR/eval.json (and `--json OUT`), and with `--report` into RUN_DIR/report.html.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from fornalha.errors import CheckpointError, ConfigError

console = Console()
err_console = Console(stderr=True)


def eval_command(
    run: Annotated[Path, typer.Option("--run", help="Run folder from `fornalha train`.")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Prepared dataset folder (or token shards folder) for loss / ppl / bpb."),
    ] = None,
    split: Annotated[str, typer.Option("--split", help="Dataset split to score.")] = "val",
    hellaswag: Annotated[
        Path | None, typer.Option("--hellaswag", help="HellaSwag-format JSONL: {ctx, endings, label}.")
    ] = None,
    blimp: Annotated[
        Path | None, typer.Option("--blimp", help="BLiMP-format JSONL: {sentence_good, sentence_bad}.")
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option("--limit", help="Multiple-choice examples per task, spread evenly over each file."),
    ] = None,
    checkpoint: Annotated[
        str, typer.Option("--checkpoint", help="best (lowest validation loss) or last.")
    ] = "best",
    max_tokens: Annotated[
        int | None, typer.Option("--max-tokens", help="Score at most this many tokens of --data.")
    ] = None,
    stride: Annotated[
        int | None,
        typer.Option("--stride", help="Window stride for --data (default: the context length, no overlap)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Sequences per forward pass.")] = 16,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Also write the results to this JSON file.")
    ] = None,
    report: Annotated[
        bool, typer.Option("--report", help="Write RUN_DIR/report.html (with 3 samples).")
    ] = False,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or mps.")] = "auto",
) -> None:
    """Evaluate a trained run: loss, perplexity and bits per byte on a dataset split, and zero-shot
    multiple-choice accuracy next to the chance level.

    Example:

        fornalha eval --run runs/demo --data data/demo --blimp ../shared/data/eval/blimp_pairs_000_099.jsonl --limit 500 --report
    """
    from fornalha.device import pick_device
    from fornalha.evaluate import evaluate_run
    from fornalha.evaluate.report import eval_table_rows, write_report
    from fornalha.outputs import check_file_target

    if json_out is not None:  # refused before the work, not after it
        check_file_target(json_out, is_ours=_is_eval_json(json_out))

    if not run.is_dir():
        raise CheckpointError(f"run folder not found: {run} (train one with `fornalha train … --out {run}`)")
    if checkpoint not in ("best", "last"):
        raise ConfigError(f"--checkpoint must be best or last, got {checkpoint!r}")
    for name, value in (("--limit", limit), ("--max-tokens", max_tokens), ("--stride", stride)):
        if value is not None and value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    if batch_size <= 0:
        raise ConfigError(f"--batch-size must be positive, got {batch_size}")
    if data is None and hellaswag is None and blimp is None and not report:
        raise ConfigError("nothing to evaluate: give --data, --hellaswag and/or --blimp (or --report)")

    dev = pick_device(device)
    results = evaluate_run(
        run,
        data=data,
        split=split,
        hellaswag=hellaswag,
        blimp=blimp,
        limit=limit,
        which=checkpoint,
        max_tokens=max_tokens,
        stride=stride,
        batch_size=batch_size,
        samples=3 if report else 0,
        device=str(dev),
        log=lambda msg: err_console.print(f"[dim]eval: {msg}[/]"),
    )

    table = Table(title=f"fornalha eval · {run} · step {results.get('step')}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("chance level", justify="right")
    for metric, value, chance in eval_table_rows(results):
        table.add_row(metric, value, chance)
    console.print(table)

    text = json.dumps(results, indent=2, ensure_ascii=False)
    (run / "eval.json").write_text(text + "\n", encoding="utf-8")
    written = [str(run / "eval.json")]
    if json_out is not None:
        check_file_target(json_out, is_ours=_is_eval_json(json_out))
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(text + "\n", encoding="utf-8")
        written.append(str(json_out))
    if report:
        written.append(str(write_report(run, dataset_dir=data, eval_results=results)))
    console.print("wrote " + ", ".join(written))


def _is_eval_json(path: Path) -> bool:
    """An earlier `fornalha eval --json` result (safe to replace), as opposed to a user's file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and {"loss", "multiple_choice"} <= data.keys()


def register(app: typer.Typer) -> None:
    """Add `fornalha eval` to the main app."""
    app.command("eval")(eval_command)
