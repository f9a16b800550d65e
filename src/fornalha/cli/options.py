"""Options several commands share (`train`, `finetune sft|dpo`; the gate of `improve` and `registry promote`), written once.

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

# ---- the evaluation gate (`fornalha improve`, `fornalha registry promote`) ----------------------------
ToleranceOpt = Annotated[
    float, typer.Option("--tolerance", help="Bits per byte the challenger may lose on validation.")
]
GateMetricOpt = Annotated[
    str, typer.Option("--metric", help="Feedback metric: preference_accuracy or reward_margin.")
]
MIN_GAIN_HELP = "Required gain on the feedback metric"
MinGainOpt = Annotated[float, typer.Option("--min-gain", help=MIN_GAIN_HELP + ".")]
#: `fornalha improve`'s: no value means the noise level of the held-out set (fornalha.improve.loop).
NoiseMinGainOpt = Annotated[
    float | None,
    typer.Option(
        "--min-gain",
        help=MIN_GAIN_HELP + " (default: 1/sqrt(held-out conversations) for preference_accuracy, "
        "0 for reward_margin).",
    ),
]
