"""`fornalha pipeline --preset assistant`: pre-train, fine-tune for chat, measure the answers.

    OUT/base/                 1-6. the whole `fornalha pipeline` on a corpus (Portuguese books by
                                   default): dataset, tokenizer, shards, the base model, its report
    OUT/                      7.   chat SFT of the base model: checkpoints/, metrics.jsonl, sft_report.json
                                   (OUT is the assistant's run folder: `fornalha serve --run OUT`)
    OUT/assistant_eval.json   8.   held-out questions, before and after SFT: answer loss, chrF of
    OUT/report.html                greedy answers against the references, end-of-turn rate; every answer

The held-out questions are split off by question group before fine-tuning (chat_data.py): the
model never sees them, nor (for the Aira set, ~30 paraphrases per answer) their answers.
The wall-clock budget (`--minutes`) is shared: the pre-training pipeline gets `PRETRAIN_SHARE` of
it, fine-tuning what is left minus a reserve for the answer evaluation and the report.
The last stdout line is JSON with the before/after figures.
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path

from rich.console import Console

from fornalha.errors import ConfigError

console = Console(stderr=True)

DEFAULT_MINUTES = 14.0
PRETRAIN_SHARE = 0.5  # of --minutes, for the whole pre-training pipeline (data stages included)
EVAL_RESERVE_MIN = 2.0  # kept for the before/after answer evaluation and the report
# Fine-tuning under a few minutes: fewer, smaller held-out evaluations (the user's --sft-set wins).
SFT_SETS = ("train.eval_batches=8", "train.evals_per_budget=4")
DEFAULT_CORPUS = "pt"  # under the shared data folder
DEFAULT_SFT_DATA = ("sft/aira1_qa_pt.jsonl", "sft/oasst1_en_100_sft.jsonl")
OWN_FILES = ("assistant_eval.json", "report.html")


def shared_data_dir() -> Path | None:
    """../shared/data seen from the working folder or from the source checkout, if it exists."""
    for root in (Path.cwd(), Path(__file__).resolve().parents[3]):
        candidate = root.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return None


def assistant_pipeline(
    out: Path,
    minutes: float,
    source: list[str] | None,
    sft_data: list[str] | None,
    sets: list[str] | None,
    sft_sets: list[str] | None,
    questions: int,
    max_answer_tokens: int,
    device: str,
    overwrite: bool,
    pretrain_kwargs: dict,
) -> dict:
    from fornalha.checkpoint import load_run
    from fornalha.cli.finetune import SFT_FILES
    from fornalha.cli.pipeline import pipeline_command
    from fornalha.finetune.answers import evaluate_answers, pick_questions
    from fornalha.finetune.chat_data import read_chat_data, split_examples
    from fornalha.finetune.sft import SFTSettings, finetune_sft
    from fornalha.outputs import claim

    t0 = time.perf_counter()
    shared = shared_data_dir()
    if not source or not sft_data:
        if shared is None:
            raise ConfigError("../shared/data not found: give --source CORPUS and --sft-data FILE")
        source = source or [str(shared / DEFAULT_CORPUS)]
        sft_data = sft_data or [str(shared / p) for p in DEFAULT_SFT_DATA]
    if minutes <= EVAL_RESERVE_MIN + 1.5:
        raise ConfigError(
            f"--minutes must leave time to pre-train and fine-tune: give more than {EVAL_RESERVE_MIN + 1.5}"
        )
    owned = claim(out, "pipeline")
    owned.record([])
    if (out / "checkpoints").is_dir() and any((out / "checkpoints").iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out} already holds an assistant; pass --overwrite to train again (data caches are kept)"
            )
        owned.remove_owned([*SFT_FILES, *OWN_FILES])

    # 1-6. the pre-training pipeline, in OUT/base -----------------------------------------------
    pipeline_command(
        preset="assistant", source=source, out=out / "base", minutes=minutes * PRETRAIN_SHARE, sets=sets,
        device=device, overwrite=overwrite, **pretrain_kwargs,
    )  # fmt: skip
    base = out / "base"

    # 7. chat SFT into OUT ------------------------------------------------------------------------
    budget = minutes - (time.perf_counter() - t0) / 60 - EVAL_RESERVE_MIN
    if budget < 0.25:
        raise ConfigError(f"pre-training used the time of --minutes {minutes}; give more --minutes")
    console.rule(f"[bold]7. chat fine-tuning ({budget:.1f} minutes)")
    settings = SFTSettings(str(base), list(sft_data))
    overrides = [
        *(sft_sets or []),
        f"train.time_budget_minutes={budget:.3f}",
        f"train.device={json.dumps(device)}",
    ]
    try:
        sft_report = finetune_sft(settings, out, overrides, console=console)
    finally:
        for name in SFT_FILES:
            owned.record_tree(name)

    # 8. answers to held-out questions, before and after -------------------------------------------
    console.rule(f"[bold]8. held-out answers, before and after ({questions} questions)")
    data = read_chat_data(settings.data)
    _, held = split_examples(data.examples, settings.val_fraction, settings.split_seed)
    chosen = pick_questions(held, questions)
    figures = {}
    for when, run in (("before", base), ("after", out)):
        model, tokenizer, _ = load_run(run, device=_device(device))
        figures[when] = evaluate_answers(model, tokenizer, chosen, max_answer_tokens, device=_device(device))
        f = figures[when]
        console.print(
            f"{when:>6}: answer loss {f['answer_loss']:.4f}  chrF {f['chrf']:.2f}  "
            f"end-of-turn {f['end_of_turn_rate']:.0%}  ({f['questions']} questions)"
        )
    result = {
        "answer_loss_before": figures["before"]["answer_loss"],
        "answer_loss_after": figures["after"]["answer_loss"],
        "chrf_before": figures["before"]["chrf"],
        "chrf_after": figures["after"]["chrf"],
        "end_of_turn_rate_before": figures["before"]["end_of_turn_rate"],
        "end_of_turn_rate_after": figures["after"]["end_of_turn_rate"],
        "questions": figures["after"]["questions"],
        "held_out_conversations": sft_report["held_out_conversations"],
        "sft_val_loss_before": sft_report["answer_loss_before"],
        "sft_val_loss_after": sft_report["answer_loss_after"],
        "base_val_bpb": _base_bpb(base),
        "wall_time_s": round(time.perf_counter() - t0, 1),
        "run": str(out),
    }
    (out / "assistant_eval.json").write_text(
        json.dumps(
            {**result, "answers": {k: v["answers"] for k, v in figures.items()}}, indent=2, ensure_ascii=False
        )
    )
    (out / "report.html").write_text(render_report(result, figures), encoding="utf-8")
    owned.record(OWN_FILES)
    console.print(
        f"\n[bold green]done[/] in {result['wall_time_s'] / 60:.1f} min; serve it with: fornalha serve --run {out}; "
        f"report: {out / 'report.html'}"
    )
    print(json.dumps(result))
    return result


def _device(device: str) -> str:
    from fornalha.device import pick_device

    return str(pick_device(device, announce=False))


def _base_bpb(base: Path) -> float | None:
    try:
        return json.loads((base / "eval.json").read_text())["loss"]["bpb"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def render_report(result: dict, figures: dict) -> str:
    """One self-contained page: what was built, the before/after table, and every answer side by side."""
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(b['question'])}</td><td>{e(b['reference'])}</td><td>{e(b['answer'])}"
        f"{'' if b['ended'] else ' <i>(no end-of-turn)</i>'}</td><td>{e(a['answer'])}"
        f"{'' if a['ended'] else ' <i>(no end-of-turn)</i>'}</td></tr>"
        for b, a in zip(figures["before"]["answers"], figures["after"]["answers"])
    )
    r = result
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>fornalha assistant</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;line-height:1.45}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ccc;padding:.4em;vertical-align:top;font-size:.9em}}
th{{background:#f3f3f3}}.num td{{text-align:right}}</style></head><body>
<h1>An assistant, forged in {r["wall_time_s"] / 60:.1f} minutes</h1>
<p>A small GPT was pre-trained on a corpus (<a href="base/report.html">its report</a>, validation
{"" if r["base_val_bpb"] is None else f"{r['base_val_bpb']:.3f} "}bits per byte), then fine-tuned on chat data with the loss on
the assistant's words only. Below: how it answers {r["questions"]} held-out questions it never saw,
before fine-tuning (the base model) and after.</p>
<table class="num"><tr><th></th><th>before SFT</th><th>after SFT</th><th>what it measures</th></tr>
<tr><td>answer loss (nats/token)</td><td>{r["answer_loss_before"]:.3f}</td><td>{r["answer_loss_after"]:.3f}</td>
<td style="text-align:left">how likely the model finds the reference answer (lower is better)</td></tr>
<tr><td>chrF</td><td>{r["chrf_before"]:.1f}</td><td>{r["chrf_after"]:.1f}</td>
<td style="text-align:left">character n-gram overlap of its greedy answer with the reference, 0-100</td></tr>
<tr><td>ends its turn</td><td>{r["end_of_turn_rate_before"]:.0%}</td><td>{r["end_of_turn_rate_after"]:.0%}</td>
<td style="text-align:left">answers closed with the end-of-turn token before the length limit</td></tr></table>
<p>Fine-tuning curve: <img src="plots/loss.png" alt="SFT loss curve" style="max-width:100%"></p>
<h2>Every answer</h2><table><tr><th>question</th><th>reference</th><th>before SFT</th><th>after SFT</th></tr>{rows}</table>
</body></html>
"""
