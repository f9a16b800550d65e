"""`fornalha data prepare`: collect, clean, deduplicate and split text into a dataset folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fornalha.errors import ConfigError

EXAMPLE = """
[bold]Examples[/]

  fornalha data prepare --source builtin: --out data/stdlib
  fornalha data prepare --source ../shared/data/pt --source "notes/**/*.md::2" --out data/pt
  fornalha data prepare --source ../shared/data/tinyshakespeare.txt --split tail --val-fraction 0.1 --out data/shakespeare
  fornalha data prepare --source hf:./saved_dataset@train --text-field content --out data/hf
  fornalha data prepare --recipe recipe.yaml --out data/mix
  fornalha data prepare --source builtin: --engine datatrove --workers 4 --out data/stdlib

Sources: PATH (file or folder), GLOB, hf:org/name[:config][@split], http(s)://URL, builtin: (the
Python standard library). Append ::WEIGHT to repeat (2) or subsample (0.5) a source in train.
"""


def prepare_command(
    out: Annotated[Path, typer.Option("--out", "-o", help="Dataset folder to write.")],
    source: Annotated[
        list[str] | None,
        typer.Option(
            "--source", "-s", help="PATH, GLOB, hf:org/name[:config][@split], URL or builtin:; ::WEIGHT"
        ),
    ] = None,
    recipe: Annotated[
        Path | None, typer.Option(help="YAML recipe: sources, weights, cleaning config.")
    ] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Share of validation (default 0.05).")] = None,
    split: Annotated[
        str | None, typer.Option(help="doc (hash per document) or tail (last X% of each).")
    ] = None,
    text_field: Annotated[str, typer.Option(help="JSON/HF field holding the text.")] = "text",
    column: Annotated[
        str | None, typer.Option(help="CSV/TSV/parquet column (default: --text-field).")
    ] = None,
    preset: Annotated[
        str | None, typer.Option(help="Filter thresholds: auto (per file kind), code, prose.")
    ] = None,
    no_dedup: Annotated[bool, typer.Option("--no-dedup", help="Keep exact and near duplicates.")] = False,
    no_pii: Annotated[
        bool, typer.Option("--no-pii", help="Do not scrub e-mails, phones, IPs, cards.")
    ] = False,
    no_filters: Annotated[bool, typer.Option("--no-filters", help="Skip the quality filters.")] = False,
    near_dup_threshold: Annotated[
        float | None, typer.Option(help="Jaccard similarity for near dups.")
    ] = None,
    language: Annotated[
        list[str] | None, typer.Option("--language", help="Keep only these languages (langdetect), e.g. pt.")
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default: all cores).")] = None,
    engine: Annotated[
        str, typer.Option(help="local (own process pool) or datatrove (LocalPipelineExecutor, same output).")
    ] = "local",
    max_docs: Annotated[int | None, typer.Option(help="Per source: read at most N documents.")] = None,
    max_bytes: Annotated[int | None, typer.Option(help="Per source: read at most N bytes.")] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="Rebuild even if the inputs are unchanged.")
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or table.")] = False,
) -> None:
    """Collect, clean, deduplicate, scrub and split text into DATASET_DIR (train/ val/ manifest.json report.json)."""
    from fornalha.data.prepare import PrepareConfig, SourceEntry, prepare
    from fornalha.data.split import override as override_split

    cfg = PrepareConfig.from_yaml(recipe) if recipe else PrepareConfig()
    for src in source or []:
        cfg.sources.append(SourceEntry(source=src, text_field=text_field, column=column))
    if recipe is None or text_field != "text" or column:
        for entry in cfg.sources:
            entry.text_field, entry.column = text_field, column or entry.column
    cfg.split = override_split(cfg.split, mode=split, val_fraction=val_fraction)
    if preset is not None:
        if preset not in ("auto", "code", "prose"):
            raise ConfigError(f"--preset must be auto, code or prose, got {preset!r}")
        cfg.clean.preset = preset  # type: ignore[assignment]
    if no_dedup:
        cfg.dedup.exact = cfg.dedup.near = False
    if no_pii:
        cfg.pii.enabled = False
    if no_filters:
        cfg.clean.filters = False
    if near_dup_threshold is not None:
        if not 0.05 <= near_dup_threshold <= 0.98:
            raise ConfigError(f"--near-dup-threshold must be in [0.05, 0.98], got {near_dup_threshold}")
        cfg.dedup.near_threshold = near_dup_threshold
    if language:
        cfg.clean.language.enabled = True
        cfg.clean.language.languages = language
    if max_docs is not None:
        cfg.max_docs = max_docs
    if max_bytes is not None:
        cfg.max_bytes = max_bytes
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    if engine not in ("local", "datatrove"):
        raise ConfigError(f"--engine must be local or datatrove, got {engine!r}")

    report = prepare(cfg, out, workers=workers, progress=not quiet, use_cache=not no_cache, engine=engine)
    if not quiet:
        print_report(report)


def print_report(report) -> None:  # noqa: ANN001 - PrepareReport, imported lazily
    """Print the per-source and per-reason tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"data prepare -> {report.out_dir}", title_justify="left")
    for col in ("source", "docs in", "MB in", "docs out", "MB out", "dropped", "skipped"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for name, s in report.sources.items():
        table.add_row(
            name, f"{s.docs_in:,}", f"{s.bytes_in / 1e6:.2f}", f"{s.docs_out:,}", f"{s.bytes_out / 1e6:.2f}",
            f"{sum(s.dropped.values()):,}", f"{sum(s.skipped.values()):,}",
        )  # fmt: skip
    console.print(table)
    reasons = report.reasons()
    if reasons:
        why = Table(title="dropped / skipped documents per reason", title_justify="left")
        why.add_column("reason")
        why.add_column("documents", justify="right")
        for reason, count in reasons.most_common():
            why.add_row(reason, f"{count:,}")
        console.print(why)
    splits = ", ".join(
        f"{k}: {v['documents']:,} docs, {v['bytes'] / 1e6:.2f} MB" for k, v in report.splits.items()
    )
    console.print(f"splits: {splits}")
    if report.pii:
        console.print("PII replaced: " + ", ".join(f"{k} {v}" for k, v in sorted(report.pii.items())))
    for note in report.notes:
        console.print(f"[yellow]note:[/] {note}")
    if report.cached:
        console.print(f"[green]cached:[/] inputs and config unchanged, reused {report.out_dir}")
    else:
        console.print(
            f"{report.bytes_in / 1e6:.1f} MB in {report.seconds:.1f} s "
            f"({report.mb_per_s:.2f} MB/s, {report.workers} workers)"
        )


def register(app: typer.Typer) -> None:
    """Add ``prepare`` to the ``data`` command group."""
    app.command(
        "prepare",
        help=(prepare_command.__doc__ or "") + "\n\n" + EXAMPLE,
        no_args_is_help=True,
    )(prepare_command)
