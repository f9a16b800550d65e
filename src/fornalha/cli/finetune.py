"""`fornalha finetune …`: fine-tuning commands over `fornalha.finetune` (a sub-app; `sft` first)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fornalha.cli.options import (
    DeviceOpt,
    LoraAlphaOpt,
    LoraOpt,
    RestartOpt,
    ResumeOpt,
    SetOpt,
    TimeBudgetOpt,
)

finetune_app = typer.Typer(
    name="finetune",
    help="Fine-tune a trained run: sft (chat: answer like an assistant), dpo (prefer the chosen answers).",
    no_args_is_help=True,
)

# What an SFT run writes into --out; --overwrite removes the files among them that it created.
SFT_FILES = (
    "checkpoints",
    "plots",
    "tokenizer",
    "metrics.jsonl",
    "summary.json",
    "config.yaml",
    "samples.jsonl",
    "sft.json",
    "sft_report.json",
)


@finetune_app.command("sft", no_args_is_help=True)
def sft_command(
    out: Annotated[
        Path, typer.Option("--out", help="Run folder to write (a new run, or this command's own).")
    ],
    run: Annotated[
        str | None, typer.Option("--run", help="Base run: its best checkpoint and tokenizer are the start.")
    ] = None,
    data: Annotated[
        list[str] | None,
        typer.Option(
            "--data",
            help="Chat data: a JSONL/JSON/Parquet file, a Hugging Face dataset folder, or a folder of them "
            "(repeatable). Shapes: messages; prompt/completion; instruction/instances; instruction/output; "
            "OpenAssistant trees.",
        ),
    ] = None,
    sets: SetOpt = None,
    time_budget: TimeBudgetOpt = None,
    val_fraction: Annotated[
        float,
        typer.Option("--val-fraction", help="Share of questions held out (by question, deterministic)."),
    ] = 0.1,
    pack: Annotated[
        bool,
        typer.Option("--pack/--no-pack", help="Pack several conversations per row (document-masked)."),
    ] = True,
    device: DeviceOpt = None,
    resume: ResumeOpt = False,
    restart: RestartOpt = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier SFT run in --out (only its own files).")
    ] = False,
    lora: LoraOpt = None,
    lora_alpha: LoraAlphaOpt = None,
) -> None:
    """Supervised fine-tuning for chat: loss on the assistant's tokens only, a held-out split by
    question, and the held-out answer loss before and after in OUT/sft_report.json.

    Runs the training loop of `fornalha train` (schedules, early stopping, best/, exact resume,
    Ctrl-C saves a checkpoint). Bad records are skipped and reported with their line numbers.

    Examples:

      fornalha finetune sft --run runs/base --data ../shared/data/sft/aira1_qa_pt.jsonl --out runs/chat

      fornalha finetune sft --run runs/base --data ../shared/data/sft --time-budget 5 --set train.lr=3e-4 --out runs/chat

      fornalha finetune sft --run runs/base --data ../shared/data/sft --lora 8 --out runs/chat-lora

      fornalha finetune sft --out runs/chat --resume
    """
    import json

    from fornalha.errors import ConfigError
    from fornalha.finetune.sft import SFTSettings, finetune_sft, load_settings
    from fornalha.outputs import claim

    if resume:
        settings = load_settings(out)
        if run is not None or data:
            given = SFTSettings(
                run or settings.base_run,
                list(data or settings.data),
                val_fraction,
                pack,
                lora=lora,
                lora_alpha=lora_alpha,
            )
            if (given.base_run, given.data) != (settings.base_run, settings.data):
                raise ConfigError(
                    f"--resume continues {out} with its own --run and --data (from {out / 'sft.json'}); "
                    "leave them out, or start a new --out"
                )
    else:
        if run is None or not data:
            raise ConfigError("give --run BASE_RUN and at least one --data FILE_OR_DIR (or --resume)")
        if lora is not None and lora < 1:
            raise ConfigError(f"--lora rank must be a positive integer, got {lora}")
        settings = SFTSettings(run, list(data), val_fraction, pack, lora=lora, lora_alpha=lora_alpha)
    overrides = list(sets or [])
    if time_budget is not None:
        overrides.append(f"train.time_budget_minutes={time_budget}")
    if device is not None:
        overrides.append(f"train.device={json.dumps(device)}")

    owned = claim(out, "finetune sft")  # someone else's folder is refused before anything is written
    if not resume and (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
            )
        owned.remove_owned(SFT_FILES)
    owned.record([])
    try:
        finetune_sft(settings, out, overrides, resume=resume, restart=restart)
    finally:
        for name in SFT_FILES:
            owned.record_tree(name)


def register(app: typer.Typer) -> None:
    """Add the `finetune` group to the main app."""
    app.add_typer(finetune_app, name="finetune")


# `fornalha finetune dpo` lives in its own module (cli/dpo.py) and joins this group.
from fornalha.cli import dpo as _dpo  # noqa: E402

_dpo.register(finetune_app)
