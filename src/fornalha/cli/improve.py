"""`fornalha improve`: feedback → fine-tune → gate → promote, one command over `fornalha.improve.loop`."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from fornalha.cli.options import (
    GateMetricOpt,
    LoraOpt,
    NoiseMinGainOpt,
    SetOpt,
    TimeBudgetOpt,
    ToleranceOpt,
)
from fornalha.improve.gate import MAX_VAL_TOKENS, GatePolicy

REFUSED_EXIT = 3  # as `fornalha registry promote`


def improve_command(
    registry: Annotated[
        Path,
        typer.Option(
            "--registry", envvar="FORNALHA_REGISTRY", help="The registry folder (its champion is improved)."
        ),
    ],
    db: Annotated[
        str,
        typer.Option(
            "--db", envvar="FORNALHA_DB", help="The serving store's URL, e.g. sqlite:///models/fornalha.db."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Work folder: feedback/, dpo/, improve.html (default improve/REGISTRY-TIME)."
        ),
    ] = None,
    method: Annotated[str, typer.Option("--method", help="dpo, sft or both (sft, then dpo).")] = "dpo",
    sets: SetOpt = None,
    time_budget: TimeBudgetOpt = None,
    lora: LoraOpt = None,
    since: Annotated[
        str, typer.Option("--since", help="champion: feedback since the champion was created; all.")
    ] = "champion",
    val_data: Annotated[
        Path | None,
        typer.Option("--val-data", help="Dataset for the bpb check (default: the champion's training data)."),
    ] = None,
    tolerance: ToleranceOpt = GatePolicy.bpb_tolerance,
    metric: GateMetricOpt = GatePolicy.feedback_metric,
    min_gain: NoiseMinGainOpt = None,
    min_pairs: Annotated[
        int, typer.Option("--min-pairs", help="Fewest training preference pairs worth a fine-tune.")
    ] = 10,
    held_out: Annotated[
        float, typer.Option("--held-out", help="Share of conversations held out for the gate.")
    ] = 0.2,
    beta: Annotated[float, typer.Option("--beta", help="DPO's β.")] = 0.1,
    max_tokens: Annotated[
        int, typer.Option("--max-tokens", help="Validation tokens scored per model.")
    ] = MAX_VAL_TOKENS,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, mps or auto.")] = "cpu",
) -> None:
    """Improve the registry's champion from its users' feedback, and promote it only if it is better.

    Exports the ratings kept by `fornalha serve` (since the champion was created), fine-tunes the
    champion on them (DPO on the preference pairs), registers the result as the challenger, and runs
    the evaluation gate on held-out data: validation bpb not worse beyond --tolerance AND preference
    accuracy on the held-out feedback pairs higher by more than --min-gain. A `fornalha serve
    --registry` running on the registry switches to a promoted version by itself. Writes
    OUT/improve.html. Exit 0: promoted; 3: refused; 2: bad input or too little feedback.

    Example:

      fornalha improve --registry models --db sqlite:///models/fornalha.db --set train.max_steps=100
    """
    from fornalha.improve.loop import ImproveSettings, improve

    settings = ImproveSettings(
        method=method, since=since, held_out=held_out, min_pairs=min_pairs, beta=beta, lora=lora,
        tolerance=tolerance, metric=metric, min_gain=min_gain,
        val_data=None if val_data is None else str(val_data), max_tokens=max_tokens, device=device,
    )  # fmt: skip
    if out is None:
        out = Path("improve") / f"{registry.resolve().name}-{time.strftime('%Y%m%d-%H%M%S')}"
    result = improve(registry, db, out, settings, sets or [], time_budget)
    verdict = "promoted" if result.promoted else "refused"
    typer.echo(f"{verdict} {result.challenger}: champion {result.champion_before} -> {result.champion_after} "
               f"(decision {result.decision}); report: {result.report}")  # fmt: skip
    if not result.promoted:
        raise typer.Exit(REFUSED_EXIT)


def register(app: typer.Typer) -> None:
    """Add `improve` to the main app."""
    app.command("improve", no_args_is_help=True)(improve_command)
