"""Options several training commands share (`train`, `finetune sft`, `finetune dpo`), written once.

Each is an `Annotated` type for a typer parameter: ``resume: ResumeOpt = False``.
"""

from __future__ import annotations

from typing import Annotated

import typer

SET_HELP = "Override a config key, e.g. --set train.lr=3e-3 --set max_steps=300 --set depth=6 (repeatable)."

SetOpt = Annotated[list[str] | None, typer.Option("--set", help=SET_HELP)]
TimeBudgetOpt = Annotated[
    float | None,
    typer.Option("--time-budget", help="Wall-clock minutes; the schedule and evaluations fit to it."),
]
ResumeOpt = Annotated[
    bool, typer.Option("--resume", help="Continue the run in --out from its newest valid checkpoint.")
]
RestartOpt = Annotated[
    bool,
    typer.Option("--restart", help="With --resume: when no checkpoint is valid, start again from step 0."),
]
DeviceOpt = Annotated[str | None, typer.Option("--device", help="auto (cuda -> mps -> cpu), cpu, cuda, mps.")]
LoraOpt = Annotated[
    int | None,
    typer.Option("--lora", help="Train LoRA adapters of this rank instead of every weight (merged on save)."),
]
LoraAlphaOpt = Annotated[
    float | None,
    typer.Option("--lora-alpha", help="LoRA scale numerator: scale = alpha / rank (default 2·rank)."),
]
