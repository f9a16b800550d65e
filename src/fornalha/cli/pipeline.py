"""`fornalha pipeline`: every stage, in order, in one folder.

    OUT/dataset/     1. data prepare      cleaned, deduplicated, split documents + report.json
    OUT/tokenizer/   2. tokenizer train   byte-level BPE (or char) on the train split
    OUT/shards/      3. data tokenize     binary token shards, train and val apart
    OUT/             4. train             checkpoints/, metrics.jsonl, plots/loss.png, summary.json
    OUT/eval.json    5. eval              val loss / ppl / bits per byte (+ BLiMP, HellaSwag if given)
    OUT/report.html  6. report            data, tokenizer, curves, overfitting verdict, evals, samples

The whole run fits a wall-clock budget (`--minutes`, 9 by default): the data, tokenizer and
shard stages take what they take, and training gets what is left minus a reserve for evaluation.
Each stage's output is cached, so running the pipeline again with `--overwrite` retrains the
model but reuses the prepared data, the tokenizer and the shards.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from fornalha.errors import ConfigError

console = Console(stderr=True)

EVAL_RESERVE_MIN = 0.75  # minutes kept for evaluation, samples and the report
# What training, eval and the report write into OUT; `--overwrite` removes the owned files among them.
RUN_FILES = (
    "checkpoints",
    "plots",
    "metrics.jsonl",
    "summary.json",
    "config.yaml",
    "eval.json",
    "report.html",
)
SAMPLE_PROMPTS = {"code": ["def ", "class ", "import "], "prose": ["The ", "He said", "\n"]}


def _stage(n: int, title: str) -> None:
    console.rule(f"[bold]{n}. {title}")


def pipeline_command(
    preset: Annotated[
        str,
        typer.Option(
            help="Training preset: tiny (2-core CPU), small, gpt2-124m; assistant: pre-train, then chat SFT, "
            "then held-out answers before/after (docs/finetune.md)."
        ),
    ] = "tiny",
    source: Annotated[
        list[str] | None,
        typer.Option("--source", "-s", help="Data source (repeatable); default builtin: (Python's stdlib)."),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Pipeline folder (a run folder plus its data).")
    ] = Path("runs/pipeline"),
    minutes: Annotated[
        float | None,
        typer.Option(
            "--minutes", help="Wall-clock budget for the whole pipeline, in minutes (9; assistant: 14)."
        ),
    ] = None,
    vocab_size: Annotated[
        int | None, typer.Option(help="Tokenizer vocabulary (default: the preset's data.vocab_size).")
    ] = None,
    tokenizer_kind: Annotated[str, typer.Option("--tokenizer", help="bpe or char.")] = "bpe",
    val_fraction: Annotated[
        float | None, typer.Option(help="Share of validation data (default 0.05).")
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="doc (hash per document) or tail (last X% of each).")
    ] = None,
    max_bytes: Annotated[int | None, typer.Option(help="Per source: read at most N bytes.")] = None,
    sets: Annotated[
        list[str] | None, typer.Option("--set", help="Training config override, e.g. --set model.n_layer=6.")
    ] = None,
    blimp: Annotated[Path | None, typer.Option(help="BLiMP-format JSONL to evaluate on.")] = None,
    hellaswag: Annotated[Path | None, typer.Option(help="HellaSwag-format JSONL to evaluate on.")] = None,
    limit: Annotated[int, typer.Option(help="Examples per multiple-choice task.")] = 500,
    device: Annotated[str, typer.Option(help="auto (cuda -> mps -> cpu), cpu, cuda, mps.")] = "auto",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an earlier run in OUT (data caches are kept).")
    ] = False,
    sft_data: Annotated[
        list[str] | None,
        typer.Option(
            "--sft-data", help="assistant: chat data (repeatable); default ../shared/data/sft Q&A sets."
        ),
    ] = None,
    sft_sets: Annotated[
        list[str] | None,
        typer.Option("--sft-set", help="assistant: fine-tuning config override (repeatable)."),
    ] = None,
    questions: Annotated[int, typer.Option(help="assistant: held-out questions answered before/after.")] = 48,
    max_answer_tokens: Annotated[
        int, typer.Option(help="assistant: longest greedy answer, in tokens.")
    ] = 128,
    base_only: Annotated[bool, typer.Option("--base-only", hidden=True)] = False,
) -> None:
    """Run every stage: prepare -> tokenizer -> shards -> train -> eval -> samples -> report.html.

    Examples:

      fornalha pipeline --preset tiny --out runs/demo

      fornalha pipeline --preset tiny --source ../shared/data/tinyshakespeare.txt --split tail --out runs/shakespeare

      fornalha pipeline --source ../shared/data/pt --minutes 20 --set model.n_layer=6 --out runs/pt

      fornalha pipeline --preset assistant --out runs/assistant
    """
    if preset == "assistant" and not base_only:
        from fornalha.cli.pipeline_assistant import DEFAULT_MINUTES, assistant_pipeline

        more = dict(vocab_size=vocab_size, tokenizer_kind=tokenizer_kind, val_fraction=val_fraction, split=split,
                    max_bytes=max_bytes, blimp=blimp, hellaswag=hellaswag, limit=limit, base_only=True)  # fmt: skip
        assistant_pipeline(out, minutes or DEFAULT_MINUTES, source, sft_data, sets, sft_sets, questions,
                           max_answer_tokens, device, overwrite, more)  # fmt: skip
        return
    minutes = minutes or 9.0
    from fornalha.cli.data_prepare import print_report
    from fornalha.cli.tokenizer import save_tokenizer
    from fornalha.data.prepare import PrepareConfig, SourceEntry, prepare
    from fornalha.data.split import override as override_split
    from fornalha.evaluate import evaluate_run
    from fornalha.evaluate.report import write_report
    from fornalha.outputs import claim
    from fornalha.tokenizer import train_tokenizer
    from fornalha.tokenizer.encode_dataset import tokenize_dataset
    from fornalha.train.config import load_config
    from fornalha.train.trainer import train

    t0 = time.perf_counter()
    if minutes <= EVAL_RESERVE_MIN + 0.5:
        raise ConfigError(f"--minutes must leave time to train: give more than {EVAL_RESERVE_MIN + 0.5}")
    if tokenizer_kind not in ("bpe", "char"):
        raise ConfigError(f"--tokenizer must be bpe or char, got {tokenizer_kind!r}")
    # Resolve the training config first, so a bad --set fails before any work is done.
    cfg = load_config(preset, None, list(sets or []))
    vocab = vocab_size or cfg.data.vocab_size
    sources = source or ["builtin:"]
    pcfg = PrepareConfig(sources=[SourceEntry(source=s) for s in sources])
    pcfg.split = override_split(pcfg.split, mode=split, val_fraction=val_fraction)
    if max_bytes is not None:
        pcfg.max_bytes = max_bytes
    owned = claim(out, "pipeline")  # a folder that is not an earlier pipeline's: refused, untouched
    owned.record([])  # creates OUT with its ownership manifest before the stages write into it
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out} already holds a run; pass --overwrite to train again (data caches are kept)"
            )
        owned.remove_owned(RUN_FILES)  # only what an earlier pipeline wrote; the user's files stay

    # 1. data ---------------------------------------------------------------------------------
    _stage(1, "data prepare")
    dataset_dir = out / "dataset"
    report = prepare(pcfg, dataset_dir, progress=True)
    print_report(report)

    # 2. tokenizer ----------------------------------------------------------------------------
    _stage(2, f"tokenizer train ({tokenizer_kind}{'' if tokenizer_kind == 'char' else f', vocab {vocab}'})")
    tok_dir = out / "tokenizer"
    tok_owned = claim(tok_dir, "tokenizer train")
    tok_stats: dict = {}
    t_tok = time.perf_counter()
    tok_marker = tok_dir / "fornalha_pipeline.json"
    tok_key = {"dataset": report.cache_key, "kind": tokenizer_kind, "vocab_size": vocab}
    if tok_marker.is_file() and json.loads(tok_marker.read_text()) == tok_key:
        console.print(f"reusing the tokenizer in {tok_dir} (same data and settings)")
        tok_stats = {"reused": True}
    else:
        tokenizer = train_tokenizer(dataset_dir, vocab, kind=tokenizer_kind, stats=tok_stats)
        save_tokenizer(tokenizer, tok_owned)
        if report.cache_key is not None:
            tok_marker.write_text(json.dumps(tok_key))
            tok_owned.record([tok_marker.name])
        mb = tok_stats.get("bytes", 0) / 1e6
        console.print(
            f"trained on {mb:.1f} MB in {time.perf_counter() - t_tok:.1f} s -> {tokenizer.vocab_size} tokens"
        )

    # 3. shards -------------------------------------------------------------------------------
    _stage(3, "data tokenize")
    shards_dir = out / "shards"
    index = tokenize_dataset(dataset_dir, tok_dir, shards_dir, progress=True)
    for name, s in index["splits"].items():
        console.print(f"{name}: {s['tokens']:,} tokens, {s['bytes'] / max(1, s['tokens']):.2f} bytes/token")

    # 4. train --------------------------------------------------------------------------------
    elapsed_min = (time.perf_counter() - t0) / 60
    budget = minutes - elapsed_min - EVAL_RESERVE_MIN
    if budget < 0.25:
        raise ConfigError(
            f"the data stages took {elapsed_min:.1f} of the {minutes} minutes; give more --minutes "
            "or less data (--max-bytes)"
        )
    _stage(4, f"train (preset {preset}, {budget:.1f} minutes)")
    overrides = [
        *(sets or []),
        f"data.path={json.dumps(str(shards_dir))}",
        f"data.tokenizer={json.dumps(str(tok_dir))}",
        f"train.time_budget_minutes={budget:.3f}",
        f"train.device={device}",
    ]
    cfg = load_config(preset, None, overrides)
    try:
        summary = train(cfg, out, console=console)
    finally:  # what training wrote belongs to this pipeline (so --overwrite may replace it)
        for name in RUN_FILES:
            owned.record_tree(name)

    # 5. eval ---------------------------------------------------------------------------------
    _stage(5, "eval")
    is_code = all(s.startswith("builtin") for s in sources)
    results = evaluate_run(
        out,
        data=dataset_dir,
        split="val",
        hellaswag=hellaswag,
        blimp=blimp,
        limit=limit,
        max_tokens=200_000,
        samples=3,
        sample_prompts=SAMPLE_PROMPTS["code" if is_code else "prose"],
        device=_auto_device() if device == "auto" else device,
        log=lambda m: console.print(m),
    )
    (out / "eval.json").write_text(json.dumps(results, indent=2))
    owned.record(["eval.json"])
    loss = results["loss"] or {}
    console.print(
        f"val loss {loss.get('loss', float('nan')):.4f}  ppl {loss.get('ppl', float('nan')):.2f}  "
        f"bpb {loss.get('bpb', float('nan')):.4f}"
    )
    for task, r in results["multiple_choice"].items():
        console.print(f"{task}: accuracy {r['accuracy']:.3f} (chance {r['chance']:.2f}, n={r['n']})")

    # 6. samples and report -------------------------------------------------------------------
    _stage(6, "samples and report")
    for s in results["samples"]:
        console.print(f"[bold cyan]{s['prompt']!r}[/] -> {s['prompt'] + s['text']!r}", highlight=False)
    html = write_report(out, dataset_dir=dataset_dir, tokenizer_stats=tok_stats, eval_results=results)
    owned.record_tree("report.html")
    total = time.perf_counter() - t0
    console.print(
        f"\n[bold green]done[/] in {total / 60:.1f} min: best val bpb "
        f"{summary.get('best_val_bpb', float('nan')):.4f} at step {summary.get('best_step')}; "
        f"report: {html}"
    )


def _auto_device() -> str:
    from fornalha.device import pick_device

    return str(pick_device("auto", announce=False))


def register(app: typer.Typer) -> None:
    app.command("pipeline", no_args_is_help=False)(pipeline_command)
