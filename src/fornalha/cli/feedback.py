"""`fornalha feedback export`: the serving store's ratings as training data (`fornalha.improve.feedback`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

feedback_app = typer.Typer(help="Data from what users said: fornalha feedback export.", no_args_is_help=True)


@feedback_app.command("export", no_args_is_help=True)
def export_command(
    db: Annotated[
        str, typer.Option("--db", help="The serving store's URL, e.g. sqlite:///runs/chat/serve.db.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Folder for train/ and held_out/ JSONL and report.json.")
    ],
    held_out: Annotated[
        float, typer.Option("--held-out", help="Share of conversations held out (by conversation).")
    ] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the train/held-out split.")] = 0,
) -> None:
    """Export rated answers as SFT examples, preference pairs and unpaired examples (docs/dpo.md).

    Liked answers and user corrections become SFT examples; a liked or corrected answer and a
    disliked one to the same prompt become a preference pair (what `fornalha finetune dpo --data`
    reads); every rated answer is also written with its label. PII-scrubbed, deduplicated, split
    into train/ and held_out/ by conversation; OUT/report.json counts them per kind and model.

    Example:

      fornalha feedback export --db sqlite:///runs/chat/serve.db --out data/feedback
    """
    from rich.console import Console
    from rich.table import Table

    from fornalha.improve.feedback import KINDS, SPLITS, export_examples, write_export
    from fornalha.outputs import claim

    result = export_examples(db, held_out, seed)  # read everything before claiming --out
    owned = claim(out, "feedback export")  # someone else's folder: refused, untouched
    stage = owned.staging()
    write_export(result, stage)
    owned.publish(stage, last=["report.json"])

    report, console = result.report, Console()
    table = Table(title=f"feedback export → {out}", title_justify="left")
    table.add_column("")
    for kind in KINDS:
        table.add_column(kind, justify="right")
    for split in SPLITS:
        table.add_row(split, *(str(report["counts"][split][k]) for k in KINDS))
    for model, counts in report["per_model"].items():
        table.add_row(f"model {model}", *(str(counts[k]) for k in KINDS), style="dim")
    console.print(table)
    skipped = ", ".join(f"{n} {why}" for why, n in report["skipped"].items()) or "none"
    pii = ", ".join(f"{n} {kind}" for kind, n in report["pii_replaced"].items()) or "none"
    console.print(
        f"{report['rated_answers']} rated answers ({report['ratings'].get('liked', 0)} liked, "
        f"{report['ratings'].get('disliked', 0)} disliked, {report['corrections']} corrections); "
        f"skipped: {skipped}; PII replaced: {pii}"
    )


def register(app: typer.Typer) -> None:
    """Add `feedback export` to the main app."""
    app.add_typer(feedback_app, name="feedback")
