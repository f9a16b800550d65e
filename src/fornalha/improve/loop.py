"""`fornalha improve`: the whole loop in one command — what users said → a better model, served.

    1. export    the ratings of the serving store (`fornalha.improve.feedback`), since the champion
                 was created (or all of them): preference pairs, SFT examples, split by
                 conversation into train and held-out; too few pairs → a DataError (exit 2),
                 nothing trained, nothing promoted
    2. fine-tune the champion: DPO on the train pairs (`fornalha.finetune.dpo`, THE training loop
                 with a DPO Task; `--lora R` trains adapters only)
    3. register  the result as the challenger, with its lineage: parent = the champion, the hashes
                 of the feedback files it learned from, `created_by = fornalha improve`
    4. gate      both models measured now on the same data (`fornalha.improve.gate.measure_on`):
                 held-out validation bpb (the champion's own dataset, or `--val-data`) may not get
                 worse beyond the tolerance, AND preference accuracy on the feedback-derived
                 held-out pairs (never trained on) must rise by more than `min_gain`
    5. promote   or refuse; the decision and its numbers are recorded in the registry either way.
                 A `fornalha serve --registry DIR` that polls the champion alias switches by itself.
    6. report    WORK/improve.html and WORK/improve.json: the feedback used, before/after numbers,
                 the decision and why.

`min_gain` defaults to the noise level of the held-out set: a share measured on n independent
units moves by about 1/sqrt(n) (two standard errors of a coin flip, 2·sqrt(0.25/n)) by chance
alone, so the challenger must beat the champion by more than that. The units are the held-out
*conversations*, not the pairs: the pairs of one prompt share their answers (a liked answer pairs
with every disliked one), so they are not independent draws. Fine-tuning on random labels then
fails the gate (its held-out "gain" is noise); learning a real preference passes it.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fornalha.errors import ConfigError, DataError
from fornalha.improve.gate import MAX_VAL_TOKENS, GatePolicy

OWNER_COMMAND = "improve"
METHODS = ("dpo", "sft", "both")
REPORT_HTML = "improve.html"
REPORT_JSON = "improve.json"


@dataclass
class ImproveSettings:
    """Everything `fornalha improve` decides with (written to WORK/improve.json)."""

    method: str = "dpo"  # dpo | sft | both (sft first, then dpo on top)
    since: str = "champion"  # "champion": feedback on answers given since the champion was created; "all"
    held_out: float = 0.2  # share of conversations held out for the gate
    seed: int = 0
    min_pairs: int = 10  # fewest training preference pairs worth a fine-tune
    min_held_out_pairs: int = 4  # fewest held-out pairs the gate can judge on
    beta: float = 0.1
    lora: int | None = None
    tolerance: float = GatePolicy.bpb_tolerance  # bits per byte
    metric: str = GatePolicy.feedback_metric
    min_gain: float | None = None  # None: 1/sqrt(held-out conversations) for preference_accuracy, 0 otherwise
    val_data: str | None = None  # None: the champion's training dataset (its config's data.path)
    max_tokens: int = MAX_VAL_TOKENS
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.since not in ("champion", "all"):
            raise ConfigError(f"--since must be champion or all, got {self.since!r}")
        if not 0.0 < self.held_out < 1.0:
            raise ConfigError(f"--held-out must be between 0 and 1, got {self.held_out}")
        if self.min_pairs < 1 or self.min_held_out_pairs < 1:
            raise ConfigError("--min-pairs must be at least 1")
        if self.lora is not None and self.lora < 1:
            raise ConfigError(f"--lora rank must be a positive integer, got {self.lora}")


@dataclass
class ImproveResult:
    promoted: bool
    champion_before: str
    challenger: str
    champion_after: str
    decision: str
    reasons: list[str]
    work: str
    report: str
    numbers: dict[str, Any] = field(default_factory=dict)


def noise_margin(n: int) -> float:
    """How far a share measured on n independent units moves by chance: two standard errors of a coin flip."""
    return 1.0 / math.sqrt(max(n, 1))


def validation_data(champion: dict[str, Any], given: str | None) -> Path:
    """The dataset the gate measures bpb on: `given`, else the champion's own training data."""
    if given is not None:
        path = Path(given)
        if not path.is_dir():
            raise DataError(f"--val-data {given} is not a dataset or shards folder")
        return path
    data_path = ((champion.get("config") or {}).get("data") or {}).get("path")
    if data_path and Path(data_path).is_dir():
        return Path(data_path)
    raise ConfigError(
        f"the champion {champion['id']} names no validation dataset on this machine "
        f"(its config's data.path: {data_path or 'none'}); pass --val-data DIR (a prepared dataset or shards folder)"
    )


def _pairs_file(folder: Path, split: str) -> Path:
    return folder / split / "preferences.jsonl"


def _finetune_sft(start: Path, data: Path, out: Path, sets: list[str], time_budget: float | None,
                  settings: ImproveSettings, console: Any) -> dict[str, Any]:  # fmt: skip
    """SFT on the liked answers and corrections (`fornalha finetune sft`'s function, its defaults)."""
    try:
        from fornalha.finetune.sft import SFTSettings, finetune_sft
    except ImportError:
        raise ConfigError(
            "--method sft/both needs `fornalha finetune sft` (fornalha.finetune.sft), which this build "
            "does not have; use --method dpo"
        ) from None
    overrides = [*sets, f"train.device={settings.device}"]
    if time_budget is not None:
        overrides.append(f"train.time_budget_minutes={time_budget}")
    sft = SFTSettings(base_run=str(start), data=[str(data)], lora=settings.lora)
    return finetune_sft(sft, out, overrides, console=console)


def improve(
    registry: str | Path,
    db: str,
    work: str | Path,
    settings: ImproveSettings,
    sets: list[str] | None = None,
    time_budget: float | None = None,
    console: Any = None,
) -> ImproveResult:
    """Run the loop (module docstring) once; returns the decision. Raises DataError on too little feedback."""
    from rich.console import Console

    from fornalha.finetune.dpo import DPOSettings, finetune_dpo
    from fornalha.improve.feedback import export_examples, write_export
    from fornalha.improve.gate import make_gate, measure_on
    from fornalha.improve.registry import Registry, RegistryError, write_report
    from fornalha.outputs import claim

    console = console or Console(stderr=True)
    say = console.print
    registry, work, sets = Path(registry), Path(work), list(sets or [])
    started = time.time()

    # 0. what we start from, checked before anything is written
    reg = Registry.open(registry, db)
    try:
        champion_id = reg.alias("champion")
        if champion_id is None:
            raise RegistryError(f"{registry} has no champion: register a run first")
        champion = reg.version(champion_id)
        champion_dir = reg.path(champion_id)
        val_data = validation_data(champion, settings.val_data)
        if (work / "dpo").exists() or (work / "sft").exists():
            raise ConfigError(f"--out {work} already holds an improve round; choose a new --out")
        work_out = claim(work, OWNER_COMMAND)  # someone else's folder: refused untouched

        # 1. export the feedback
        since = champion.get("created_ts") if settings.since == "champion" else None
        export = export_examples(db, settings.held_out, settings.seed, since=since)
        counts = export.report["counts"]
        n_train, n_held = counts["train"]["preferences"], counts["held_out"]["preferences"]
        n_held_conv = len({r["conversation"] for r in export.examples["held_out"]["preferences"]})
        when = f"since the champion {champion_id} was created" if since is not None else "in the store"
        if n_train < settings.min_pairs or n_held < settings.min_held_out_pairs:
            raise DataError(
                f"too little feedback {when}: {n_train} training and {n_held} held-out preference pairs "
                f"(need at least {settings.min_pairs} and {settings.min_held_out_pairs}); nothing was trained "
                "or promoted — collect more ratings (a liked and a disliked answer to one prompt, or a "
                "correction, make a pair)"
            )
        say(f"feedback {when}: {export.report['rated_answers']} rated answers → {n_train} train and "
            f"{n_held} held-out preference pairs, {counts['train']['sft']} SFT examples")  # fmt: skip
        work_out.record([])  # creates WORK with its ownership manifest
        fb_dir = work / "feedback"
        fb_out = claim(fb_dir, "feedback export")
        stage = fb_out.staging()
        write_export(export, stage)
        fb_out.publish(stage, last=["report.json"])
        train_pairs, held_pairs = _pairs_file(fb_dir, "train"), _pairs_file(fb_dir, "held_out")

        # 2. fine-tune the champion
        start = champion_dir
        finetune: dict[str, Any] = {}
        if settings.method in ("sft", "both"):
            sft_data = fb_dir / "train" / "sft.jsonl"
            finetune["sft"] = _finetune_sft(
                start, sft_data, work / "sft", sets, time_budget, settings, console
            )
            start = work / "sft"
        if settings.method in ("dpo", "both"):
            dpo = DPOSettings(beta=settings.beta, lora=settings.lora)
            finetune["dpo"] = finetune_dpo(start, train_pairs, work / "dpo", dpo, sets, time_budget,
                                           settings.device, console=console)  # fmt: skip
            start = work / "dpo"

        # 3. register the challenger with its lineage
        record = reg.register(
            start, parent=champion_id, data_paths=[train_pairs, held_pairs], created_by="fornalha improve",
            note=f"fornalha improve ({settings.method}) on {n_train} feedback pairs {when}",
        )  # fmt: skip
        say(f"registered {start} as {record['id']} (challenger, parent {champion_id})")

        # 4-5. the gate, measured now on the same data, then promote or refuse
        min_gain = settings.min_gain
        if min_gain is None:
            min_gain = noise_margin(n_held_conv) if settings.metric == "preference_accuracy" else 0.0
        policy = GatePolicy(
            bpb_tolerance=settings.tolerance, feedback_metric=settings.metric, min_gain=min_gain
        )
        measure = measure_on(val_data, held_pairs, max_tokens=settings.max_tokens, max_pairs=None,
                             device=settings.device)  # fmt: skip
        source = (f"measured now: val bpb on {val_data}, {n_held} held-out feedback pairs "
                  f"from {n_held_conv} conversations")  # fmt: skip
        decision = reg.promote(record["id"], gate=make_gate(policy, measure, source),
                               created_by="fornalha improve")  # fmt: skip
        write_report(reg)
    finally:
        reg.close()
    for reason in decision.reasons or []:
        say(f"  {reason}")

    # 6. the report
    result = ImproveResult(
        promoted=decision.promoted, champion_before=champion_id, challenger=record["id"],
        champion_after=decision.champion_after or champion_id, decision=decision.id,
        reasons=list(decision.reasons or []), work=str(work), report=str(work / REPORT_HTML),
        numbers=decision.numbers or {},
    )  # fmt: skip
    summary = {
        "format": "fornalha-improve", "version": 1, "registry": str(registry.resolve()),
        "started": started, "seconds": round(time.time() - started, 1),
        "settings": asdict(settings) | {"min_gain_used": min_gain, "sets": sets, "time_budget": time_budget},
        "since": since, "held_out_conversations": n_held_conv, "val_data": str(val_data), "feedback": export.report,
        "finetune": finetune, "policy": decision.policy, "result": asdict(result),
    }  # fmt: skip
    write_improve_report(work, summary)
    work_out = claim(work, OWNER_COMMAND)
    work_out.record([REPORT_JSON, REPORT_HTML])
    return result


# ---- the report -----------------------------------------------------------------------------------
_HTML = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>fornalha improve</title>
<style>body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:62em;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}.ok{color:#176b21;font-weight:700}.no{color:#a31515;font-weight:700}code{font-size:.9em}</style>
</head><body>
<h1>fornalha improve:
{% if r.promoted %}<span class="ok">{{ r.challenger }} promoted</span>{% else %}<span class="no">{{ r.challenger }} refused</span>{% endif %}</h1>
<p>Registry <code>{{ s.registry }}</code>. Champion before: <b>{{ r.champion_before }}</b>; after: <b>{{ r.champion_after }}</b>
(decision {{ r.decision }}, {{ s.seconds }} s). Method: {{ s.settings.method }}{% if s.settings.lora %}, LoRA rank {{ s.settings.lora }}{% endif %}.</p>
<h2>Why</h2>
<p>Rule: <code>{{ s.policy.rule if s.policy else "none" }}</code>
{% if s.settings.min_gain is none %}(the minimum gain is the noise level of {{ n_held }} held-out conversations, 1/√n){% endif %}.</p>
<table><tr><th>check</th><th>rule</th><th>champion {{ r.champion_before }}</th><th>challenger {{ r.challenger }}</th><th>result</th></tr>
{% for c in checks %}<tr><td>{{ c.name }}</td><td>{{ c.rule }}</td><td>{{ fmt(c.champion) }}</td><td>{{ fmt(c.challenger) }}</td>
<td class="{{ 'ok' if c.passed else 'no' }}">{{ "pass" if c.passed else "fail" }}</td></tr>{% endfor %}</table>
<ul>{% for x in r.reasons %}<li>{{ x }}</li>{% endfor %}</ul>
<h2>Feedback used</h2>
<p>{{ s.feedback.rated_answers }} rated answers ({{ s.feedback.ratings.liked or 0 }} liked, {{ s.feedback.ratings.disliked or 0 }} disliked,
{{ s.feedback.corrections }} corrections) {% if s.since %}given since the champion was created{% else %}in the whole store{% endif %}.</p>
<table><tr><th></th>{% for k in kinds %}<th>{{ k }}</th>{% endfor %}</tr>
{% for split, c in s.feedback.counts.items() %}<tr><td>{{ split }}</td>{% for k in kinds %}<td>{{ c[k] }}</td>{% endfor %}</tr>{% endfor %}
{% for m, c in s.feedback.per_model.items() %}<tr><td>model {{ m }}</td>{% for k in kinds %}<td>{{ c[k] }}</td>{% endfor %}</tr>{% endfor %}</table>
{% if s.feedback.skipped %}<p>Skipped: {% for k, v in s.feedback.skipped.items() %}{{ v }} {{ k }}; {% endfor %}</p>{% endif %}
<h2>Fine-tuning</h2>
{% if dpo %}<p>DPO on {{ dpo.data.train_pairs }} pairs ({{ dpo.data.held_out_pairs }} of them held out inside the run), {{ dpo.steps }} steps,
best step {{ dpo.best_step }}. Figures relative to the frozen start model (implicit reward):</p>
<table><tr><th>metric</th><th>start</th><th>best</th></tr>
{% for k in ["preference_accuracy", "reward_margin", "logp_accuracy", "val_loss"] %}<tr><td>{{ k }}</td><td>{{ fmt(dpo.before.get(k)) }}</td>
<td>{{ fmt(dpo.after.get(k)) }}</td></tr>{% endfor %}</table>{% endif %}
{% if s.finetune.sft is defined %}<p>SFT on the liked answers and corrections first.</p>{% endif %}
<h2>All numbers</h2><pre>{{ numbers }}</pre>
</body></html>
"""


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4f}"
    return "—" if x is None else str(x)


def write_improve_report(work: Path, summary: dict[str, Any]) -> Path:
    """WORK/improve.json (every number) and WORK/improve.html (what changed and why)."""
    import jinja2

    from fornalha.files import write_text_atomic
    from fornalha.improve.feedback import KINDS

    r = summary["result"]
    html = jinja2.Environment(autoescape=True).from_string(_HTML).render(
        s=summary, r=r, checks=(r["numbers"] or {}).get("checks", []), fmt=_fmt, kinds=KINDS,
        dpo=summary["finetune"].get("dpo"), n_held=summary["held_out_conversations"],
        numbers=json.dumps(r["numbers"], indent=2),
    )  # fmt: skip
    write_text_atomic(work / REPORT_JSON, json.dumps(summary, indent=2, default=str) + "\n")
    write_text_atomic(work / REPORT_HTML, html)
    return work / REPORT_HTML
