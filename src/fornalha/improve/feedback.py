"""Training data from what users said: the serving store's ratings → SFT examples and preference pairs.

`fornalha serve` keeps every chat completion (its messages and answer) and every rating of one
(`POST /v1/feedback`: rating ±1, an optional comment, an optional corrected answer, the user) in
its store (`fornalha.serve.store`). `export_feedback(db_url, out_dir)` turns them into data:

    1. read   each chat completion that has feedback, with its prompt messages and its answer;
              the newest rating of a completion is its rating (a user may change their mind)
    2. scrub  every message and answer with the data stage's PII scrubber (`fornalha.data.pii`)
    3. build, per prompt (the same messages before the answer):
              sft            liked answers and every user correction: {"messages": [..., assistant]}
              preferences    chosen ∈ liked answers and corrections × rejected ∈ disliked answers
                             of the same prompt; a correction of a disliked answer pairs with it
                             directly: {"messages", "chosen", "rejected"} (what `finetune dpo` reads)
              unpaired       every rated answer with its label: {"messages", "completion", "label", "comments"}
    4. dedupe each kind (the same text twice is one example)
    5. split  train / held_out BY CONVERSATION: a conversation is known by its opening (system and
              first user message); a hash of it picks the side, so a held-out prompt is never
              trained on, and later turns of one conversation stay with the first
    6. write  OUT/{train,held_out}/{sft,preferences,unpaired}.jsonl and OUT/report.json: counts per
              kind and split, per model version (the `model` the server answered as), and what was
              skipped and why (prompts not logged, not a chat, several choices, empty answer)

Rows are read in id order and sorted, so the same store always gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from fornalha.data.pii import scrub
from fornalha.errors import DataError

KINDS = ("sft", "preferences", "unpaired")
SPLITS = ("train", "held_out")


@dataclass
class RatedAnswer:
    """One chat completion with its newest rating (and any correction), PII-scrubbed."""

    completion_id: str
    model: str
    messages: list[dict[str, str]]  # the prompt: everything before the answer
    answer: str
    rating: int  # +1 liked, -1 disliked
    corrections: list[str] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    user: str | None = None


@dataclass
class ExportResult:
    examples: dict[str, dict[str, list[dict[str, Any]]]]  # split -> kind -> records
    report: dict[str, Any]


# --------------------------------------------------------------------------------------------
# 1-2. Reading the store
# --------------------------------------------------------------------------------------------


def _text(content: Any) -> str | None:
    """Message content as text: a string, or OpenAI's list of {"type": "text", "text"} parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts) and parts:
            return "".join(parts)
    return None


def read_rated_answers(
    db_url: str, since: float | None = None
) -> tuple[list[RatedAnswer], Counter[str], Counter[str]]:
    """(rated answers, skipped reasons, PII replacements) from the store at `db_url` (read-only);
    `since` (a Unix time): only completions made from then on (`fornalha improve`)."""
    from fornalha.serve.store import completions, feedback, make_engine

    try:
        url = sa.engine.make_url(db_url)
    except sa.exc.ArgumentError:
        raise DataError(f"--db {db_url!r} is not a database URL (e.g. sqlite:///RUN/serve.db)") from None
    is_file_db = url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:")
    if is_file_db and not Path(url.database).is_file():  # never create an empty database at a typo
        raise DataError(f"--db {db_url}: no such database file")
    engine = make_engine(db_url)
    try:
        query = (
            sa.select(feedback, completions.c.model, completions.c.endpoint, completions.c.request,
                      completions.c.output, completions.c.prompts_logged)
            .join(completions, feedback.c.completion_id == completions.c.id)
            .order_by(feedback.c.id)
        )  # fmt: skip
        if since is not None:
            query = query.where(completions.c.created >= since)
        with engine.connect() as conn:
            rows = conn.execute(query).all()
    except sa.exc.SQLAlchemyError as exc:
        raise DataError(
            f"--db {db_url}: cannot read the serving store's completions and feedback ({exc})"
        ) from None
    finally:
        engine.dispose()

    skipped: Counter[str] = Counter()
    pii: Counter[str] = Counter()
    answers: dict[str, RatedAnswer] = {}

    def clean(text: str) -> str:
        new, counts = scrub(text)
        pii.update(counts)
        return new

    passed: set[str] = set()  # completions skipped already (counted once, however often rated)

    def skip(cid: str, why: str) -> None:
        skipped[why] += 1
        passed.add(cid)

    for row in rows:
        r = row._mapping
        cid = r["completion_id"]
        if cid in passed:
            continue
        if cid in answers:  # a newer rating of the same answer replaces the older one
            answers[cid].rating = int(r["rating"])
            answers[cid].corrections += [clean(r["correction"])] if r["correction"] else []
            answers[cid].comments += [clean(r["comment"])] if r["comment"] else []
            continue
        if not r["prompts_logged"] or r["request"] is None:
            skip(cid, "prompts not logged")
            continue
        if r["endpoint"] != "chat.completions":
            skip(cid, "not a chat completion")
            continue
        request, output = json.loads(r["request"]), json.loads(r["output"] or "[]")
        if len(output) != 1:
            skip(cid, "not exactly one choice")
            continue
        messages = []
        for m in request.get("messages") or []:
            text = _text(m.get("content")) if isinstance(m, dict) else None
            if text is None or m.get("role") not in ("system", "user", "assistant"):
                messages = []
                break
            messages.append({"role": m["role"], "content": clean(text)})
        if not messages or messages[-1]["role"] != "user":
            skip(cid, "messages unreadable or not ending with a user turn")
            continue
        answer = clean(output[0])
        if not answer.strip():
            skip(cid, "empty answer")
            continue
        answers[cid] = RatedAnswer(
            cid, r["model"] or "unknown", messages, answer, int(r["rating"]),
            [clean(r["correction"])] if r["correction"] else [], [clean(r["comment"])] if r["comment"] else [],
            r["user"],
        )  # fmt: skip
    return list(answers.values()), skipped, pii


# --------------------------------------------------------------------------------------------
# 3-5. Examples, deduplicated and split by conversation
# --------------------------------------------------------------------------------------------


def _key(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def conversation_id(messages: list[dict[str, str]]) -> str:
    """A conversation is known by its opening: the system messages and the first user message."""
    opening = []
    for m in messages:
        opening.append(m)
        if m["role"] == "user":
            break
    return _key(opening)[:16]


def split_of(conversation: str, held_out: float, seed: int = 0) -> str:
    bucket = int(_key([conversation, seed])[:16], 16) / 16**16
    return "held_out" if bucket < held_out else "train"


def build_examples(answers: Iterable[RatedAnswer]) -> list[tuple[str, dict[str, Any]]]:
    """(kind, record) for every SFT example, preference pair and unpaired example, deduplicated."""
    by_prompt: dict[str, list[RatedAnswer]] = defaultdict(list)
    for a in answers:
        by_prompt[_key(a.messages)].append(a)
    out: list[tuple[str, dict[str, Any]]] = []
    seen: set[str] = set()

    def add(kind: str, record: dict[str, Any], identity: Any) -> None:
        k = _key([kind, identity])
        if k not in seen:
            seen.add(k)
            out.append((kind, record))

    for group in by_prompt.values():
        messages = group[0].messages
        conv = conversation_id(messages)
        # chosen candidates: liked answers and corrections; rejected: disliked answers
        good: list[tuple[str, str, str]] = []  # (text, "liked" | "correction", model)
        bad: list[tuple[str, str]] = []  # (text, model)
        for a in group:
            if a.rating > 0:
                good.append((a.answer, "liked", a.model))
            else:
                bad.append((a.answer, a.model))
            good += [(c, "correction", a.model) for c in a.corrections]
            add("unpaired", {"messages": messages, "completion": a.answer, "label": a.rating > 0,
                             "comments": a.comments, "model": a.model, "conversation": conv},
                [messages, a.answer, a.rating > 0])  # fmt: skip
        for text, source, model in good:
            add("sft", {"messages": [*messages, {"role": "assistant", "content": text}], "source": source,
                        "model": model, "conversation": conv}, [messages, text])  # fmt: skip
        for chosen, source, chosen_model in good:
            for rejected, model in bad:  # a pair counts for the model whose answer was turned down
                if chosen.strip() != rejected.strip():
                    add("preferences", {"messages": messages, "chosen": chosen, "rejected": rejected,
                                        "chosen_source": source, "chosen_model": chosen_model, "model": model,
                                        "conversation": conv}, [messages, chosen, rejected])  # fmt: skip
    return out


def export_examples(
    db_url: str, held_out: float = 0.1, seed: int = 0, since: float | None = None
) -> ExportResult:
    """Everything `export_feedback` writes, in memory (`since`: see `read_rated_answers`)."""
    if not 0.0 <= held_out < 1.0:
        raise DataError(f"--held-out must be in [0, 1), got {held_out}")
    answers, skipped, pii = read_rated_answers(db_url, since)
    examples: dict[str, dict[str, list]] = {s: {k: [] for k in KINDS} for s in SPLITS}
    per_model: dict[str, Counter[str]] = defaultdict(Counter)
    for kind, record in build_examples(answers):
        split = split_of(record["conversation"], held_out, seed)
        examples[split][kind].append(record)
        per_model[record["model"]][kind] += 1
    for split in SPLITS:
        for kind in KINDS:
            examples[split][kind].sort(key=lambda r: json.dumps(r, sort_keys=True, ensure_ascii=False))
    ratings = Counter("liked" if a.rating > 0 else "disliked" for a in answers)
    report = {
        "format": "fornalha-feedback-export",
        "version": 1,
        "db": _redact(db_url),
        "held_out_fraction": held_out,
        "rated_answers": len(answers),
        "ratings": dict(ratings),
        "corrections": sum(len(a.corrections) for a in answers),
        "conversations": {s: len({r["conversation"] for k in KINDS for r in examples[s][k]}) for s in SPLITS},
        "counts": {s: {k: len(examples[s][k]) for k in KINDS} for s in SPLITS},
        "per_model": {m: {k: c[k] for k in KINDS} for m, c in sorted(per_model.items())},
        "skipped": dict(skipped),
        "pii_replaced": dict(pii),
    }
    return ExportResult(examples, report)


def _redact(url: str) -> str:
    """The database URL without its password."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return "<invalid url>"


# --------------------------------------------------------------------------------------------
# 6. Writing
# --------------------------------------------------------------------------------------------


def write_export(result: ExportResult, folder: Path) -> list[str]:
    """Write the JSONL files and report.json into `folder` (a staging folder); returns the names."""
    names = []
    for split in SPLITS:
        (folder / split).mkdir(parents=True, exist_ok=True)
        for kind in KINDS:
            path = folder / split / f"{kind}.jsonl"
            with open(path, "w", encoding="utf-8") as f:
                for record in result.examples[split][kind]:
                    f.write(json.dumps(record, ensure_ascii=False) + "\n")
            names.append(f"{split}/{kind}.jsonl")
    (folder / "report.json").write_text(json.dumps(result.report, indent=2, ensure_ascii=False) + "\n")
    return [*names, "report.json"]
