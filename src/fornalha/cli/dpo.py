"""`fornalha finetune dpo`: preference fine-tuning, a thin command over `fornalha.finetune.dpo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fornalha.cli.options import DeviceOpt, LoraAlphaOpt, LoraOpt, ResumeOpt, SetOpt, TimeBudgetOpt


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
    sets: SetOpt = None,
    time_budget: TimeBudgetOpt = None,
    lora: LoraOpt = None,
    lora_alpha: LoraAlphaOpt = None,
    held_out: Annotated[
        float, typer.Option("--held-out", help="Share of prompts held out for evaluation.")
    ] = 0.1,
    resume: ResumeOpt = False,
    device: DeviceOpt = None,
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
