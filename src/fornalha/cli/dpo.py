"""`fornalha finetune dpo`: preference fine-tuning, a thin command over `fornalha.finetune.dpo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def dpo_command(
    run: Annotated[Path, typer.Option("--run", help="The run to start from (its best checkpoint): π_ref.")],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            help="JSONL preference pairs: {messages|prompt, chosen, rejected} or HH {chosen, rejected} transcripts.",
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="New run folder for the fine-tuned model.")],
    beta: Annotated[
        float, typer.Option("--beta", help="How far the model may move from the start model (DPO's β).")
    ] = 0.1,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a config key, e.g. --set train.lr=1e-4 --set max_steps=300."),
    ] = None,
    time_budget: Annotated[
        float | None, typer.Option("--time-budget", help="Wall-clock minutes for training.")
    ] = None,
    lora: Annotated[
        int | None,
        typer.Option(
            "--lora", help="Train LoRA adapters of this rank instead of every weight (merged on save)."
        ),
    ] = None,
    lora_alpha: Annotated[
        float | None,
        typer.Option("--lora-alpha", help="LoRA scale numerator: scale = alpha / rank (default 2·rank)."),
    ] = None,
    held_out: Annotated[
        float, typer.Option("--held-out", help="Share of prompts held out for evaluation.")
    ] = 0.1,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the run in --out from its newest valid checkpoint.")
    ] = False,
    device: Annotated[
        str | None, typer.Option("--device", help="auto (cuda -> mps -> cpu), cpu, cuda, mps.")
    ] = None,
) -> None:
    """Direct Preference Optimization against the frozen start model (docs/dpo.md).

    Reports, on held-out prompts, preference accuracy, reward margin and the DPO loss of the start
    model and of the best checkpoint (OUT/dpo_report.json). OUT is an ordinary run folder:
    fornalha chat/serve/eval/export --run OUT use it (LoRA adapters are merged into best/).

    Examples:

      fornalha finetune dpo --run runs/chat --data ../shared/data/preference/oasst1_en_100_pairs.jsonl --out runs/dpo

      fornalha finetune dpo --run runs/chat --data pairs.jsonl --out runs/dpo-lora --lora 8 --time-budget 5

      fornalha finetune dpo --run runs/chat --data pairs.jsonl --out runs/dpo --resume
    """
    from fornalha.finetune.dpo import DPOSettings, finetune_dpo

    settings = DPOSettings(beta=beta, held_out=held_out, lora=lora, lora_alpha=lora_alpha)
    finetune_dpo(run, data, out, settings, sets or [], time_budget, device, resume)


def register(app: typer.Typer) -> None:
    """Add `dpo` to the `finetune` sub-app."""
    app.command("dpo", no_args_is_help=True)(dpo_command)
