"""Chat data for supervised fine-tuning: files in, conversations out, then token ids and a loss mask.

    files (JSONL, JSON, Parquet, a Hugging Face `datasets` folder; or folders of them)
      └─ records: one dict each, with its file and line number
           └─ adapters: each known shape becomes conversations [{"role", "content"}, ...]
                messages     {"messages": [{"role", "content"}, ...]}  (also ShareGPT "conversations")
                prompt/completion  {"prompt", "completion"}  (also question/answer, prompt/response)
                alpaca       {"instruction", "input"?, "output"}
                self-instruct {"instruction", "instances": [{"input", "output"}, ...]}  (one per instance)
                oasst tree   {"prompt": {"text", "role": "prompter", "replies": [...]}}: the best path
      └─ split: held-out conversations by a *group* (the question, the OpenAssistant tree, Aira's answer)
      └─ render: token ids + mask (1 = an assistant token the model learns to produce)

A record no adapter understands (bad JSON, missing keys, wrong types, no assistant reply) is
skipped and counted with its file and line number; `ChatData.skipped` holds them for the report.

The held-out split is by group, not by record, and deterministic (a hash of the group key): when
the same question appears twice, or 30 paraphrases of one question share an answer (the Aira set),
all of them land on the same side, so "held out" means the model never saw that question or answer.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fornalha.errors import DataError

Message = dict[str, str]
Conversation = list[Message]

#: File suffixes read as records (a folder is searched for these, recursively).
SUFFIXES = (".jsonl", ".json", ".parquet")
ROLE_NAMES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
}
PAIR_KEYS = (("prompt", "completion"), ("prompt", "response"), ("question", "answer"), ("input", "output"))


@dataclass
class Example:
    """One conversation, where it came from, and the group that decides its split."""

    messages: Conversation
    source: str  # "file:line"
    group: str


@dataclass
class ChatData:
    """Conversations read from files, with the records that were skipped (and why)."""

    examples: list[Example] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # ("file:line", reason)
    files: list[str] = field(default_factory=list)

    def summary(self, shown: int = 5) -> str:
        """One paragraph for the terminal: counts, and the first few skipped records."""
        text = f"{len(self.examples):,} conversations from {len(self.files)} file(s)"
        if self.skipped:
            text += f"; {len(self.skipped):,} bad records skipped: " + "; ".join(
                f"{where}: {why}" for where, why in self.skipped[:shown]
            )
            text += " …" if len(self.skipped) > shown else ""
        return text


# --------------------------------------------------------------------------------------------
# Adapters: one record -> conversations
# --------------------------------------------------------------------------------------------


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise DataError(f"{what} must be a string, got {type(value).__name__}")
    return value


def _messages(items: Any, role_key: str = "role", content_key: str = "content") -> Conversation:
    if not isinstance(items, list) or not items:
        raise DataError("messages must be a non-empty list")
    out = []
    for i, m in enumerate(items):
        if not isinstance(m, Mapping) or role_key not in m or content_key not in m:
            raise DataError(f"message {i} needs {role_key!r} and {content_key!r}")
        role = ROLE_NAMES.get(str(m[role_key]).lower())
        if role is None:
            raise DataError(f"message {i} has unknown role {m[role_key]!r}")
        out.append({"role": role, "content": _text(m[content_key], f"message {i} {content_key}")})
    return out


def _oasst_best_path(root: Mapping[str, Any]) -> Conversation:
    """An OpenAssistant tree's best conversation: from the prompt, each assistant turn is the reply
    ranked best (rank 0) and each user turn the first reply; deleted and synthetic messages skipped."""
    path: Conversation = []
    node: Mapping[str, Any] | None = root
    while node is not None:
        role = ROLE_NAMES.get(str(node.get("role")))
        if role is None:
            raise DataError(f"oasst message has unknown role {node.get('role')!r}")
        path.append({"role": role, "content": _text(node.get("text"), "oasst message text")})
        replies = [
            r for r in node.get("replies") or []
            if isinstance(r, Mapping) and not r.get("deleted") and not r.get("synthetic")
        ]  # fmt: skip
        ranked = sorted(replies, key=lambda r: r["rank"] if isinstance(r.get("rank"), int) else 1 << 30)
        node = ranked[0] if ranked else None
    return path


def conversations_of(record: Any) -> list[tuple[Conversation, str | None]]:
    """The conversations in one record, each with its group key (None: group by its first question).

    Raises DataError for a record of no known shape."""
    if not isinstance(record, Mapping):
        raise DataError(f"a record must be a JSON object, got {type(record).__name__}")
    tree = record.get("message_tree_id")
    if "messages" in record:
        return [(_messages(record["messages"]), tree)]
    if "conversations" in record:  # ShareGPT: [{"from": "human", "value": ...}]
        return [(_messages(record["conversations"], "from", "value"), None)]
    if isinstance(record.get("prompt"), Mapping) and "replies" in record["prompt"]:
        return [(_oasst_best_path(record["prompt"]), tree)]
    if "instruction" in record and "instances" in record:  # self-instruct
        instances = record["instances"]
        if not isinstance(instances, list) or not instances:
            raise DataError("instances must be a non-empty list")
        instruction = _text(record["instruction"], "instruction")
        out = []
        for i, inst in enumerate(instances):
            if not isinstance(inst, Mapping):
                raise DataError(f"instance {i} must be an object")
            extra = _text(inst.get("input", ""), f"instance {i} input")
            user = instruction + (f"\n\n{extra}" if extra.strip() else "")
            answer = _text(inst.get("output"), f"instance {i} output")
            out.append(([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], None))
        return out
    if "instruction" in record and "output" in record:  # Alpaca
        extra = _text(record.get("input", ""), "input")
        user = _text(record["instruction"], "instruction") + (f"\n\n{extra}" if extra.strip() else "")
        answer = _text(record["output"], "output")
        return [([{"role": "user", "content": user}, {"role": "assistant", "content": answer}], None)]
    for q, a in PAIR_KEYS:
        if q in record and a in record:
            convo = [
                {"role": "user", "content": _text(record[q], q)},
                {"role": "assistant", "content": _text(record[a], a)},
            ]
            group = record.get("answer_id")  # Aira: paraphrases of one question share an answer
            return [(convo, None if group is None else f"answer:{group}")]
    raise DataError(
        "unknown record shape: expected messages, prompt/completion, instruction/instances, "
        f"instruction/output or an oasst tree; keys: {', '.join(sorted(map(str, record))[:8])}"
    )


def check_conversation(messages: Conversation) -> Conversation:
    """Drop turns after the last assistant reply; refuse a conversation with nothing to learn."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=-1)
    if last < 0:
        raise DataError("no assistant reply to learn")
    messages = messages[: last + 1]
    if not messages[-1]["content"].strip():
        raise DataError("the last assistant reply is empty")
    return messages


# --------------------------------------------------------------------------------------------
# Files -> records
# --------------------------------------------------------------------------------------------


def _is_hf_dataset(path: Path) -> bool:
    names = {"dataset_info.json", "state.json", "dataset_dict.json"}
    return path.is_dir() and any((path / n).is_file() for n in names)


def _records_of_file(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, record) of one file; a line that is not JSON yields a DataError as its record."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # pyarrow raises its own error types for a damaged file
            raise DataError(f"{path}: cannot read Parquet: {exc}") from None
        for i, row in enumerate(table.to_pylist(), start=1):
            yield i, row
        return
    with open(path, encoding="utf-8", errors="replace") as f:
        if path.suffix == ".json":
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}: not valid JSON: {exc}") from None
            rows = data if isinstance(data, list) else [data]
            yield from enumerate(rows, start=1)
            return
        for i, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as exc:
                yield i, DataError(f"not valid JSON ({exc.msg})")


def _records_of_hf_dataset(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path} is a Hugging Face dataset folder: pip install datasets to read it") from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises FileNotFoundError/ValueError/... for broken folders
        raise DataError(f"{path}: cannot load the Hugging Face dataset: {exc}") from None
    parts = [loaded[k] for k in sorted(loaded)] if isinstance(loaded, datasets.DatasetDict) else [loaded]
    n = 0
    for part in parts:
        for row in part:
            n += 1
            yield n, row


def find_files(path: Path) -> list[Path]:
    """The files (and Hugging Face dataset folders) a --data argument names."""
    if not path.exists():
        raise DataError(f"--data {path} does not exist")
    if path.is_file() or _is_hf_dataset(path):
        return [path]
    found: list[Path] = []
    for p in sorted(path.rglob("*")):
        if any(parent in found for parent in p.parents):
            continue  # inside a dataset folder already taken whole
        if _is_hf_dataset(p) or (p.is_file() and p.suffix in SUFFIXES):
            found.append(p)
    if not found:
        raise DataError(f"--data {path} holds no {', '.join(SUFFIXES)} file or Hugging Face dataset folder")
    return found


def read_chat_data(paths: Sequence[str | Path]) -> ChatData:
    """Read every conversation in `paths` (files or folders); bad records are skipped and counted."""
    data = ChatData()
    for top in paths:
        for path in find_files(Path(top)):
            if path.is_file() and path.suffix not in SUFFIXES:
                raise DataError(f"--data {path}: unsupported file type (use {', '.join(SUFFIXES)})")
            data.files.append(str(path))
            records = _records_of_hf_dataset(path) if path.is_dir() else _records_of_file(path)
            for line, record in records:
                where = f"{path.name}:{line}"
                try:
                    if isinstance(record, DataError):
                        raise record
                    for k, (messages, group) in enumerate(conversations_of(record)):
                        messages = check_conversation(messages)
                        first_user = next((m["content"] for m in messages if m["role"] == "user"), "")
                        key = group or f"question:{first_user.strip().lower()}"
                        data.examples.append(Example(messages, where + (f"#{k}" if k else ""), key))
                except DataError as exc:
                    data.skipped.append((where, str(exc)))
    if not data.examples:
        raise DataError(
            f"no usable conversation in {', '.join(map(str, paths))}"
            + (f" ({len(data.skipped)} bad records, first: {data.skipped[0][0]}: {data.skipped[0][1]})"
               if data.skipped else "")
        )  # fmt: skip
    return data


# --------------------------------------------------------------------------------------------
# Held-out split
# --------------------------------------------------------------------------------------------


def group_score(group: str, seed: int = 0) -> float:
    """A group's place in [0, 1): a hash of (seed, group). Groups scoring below val_fraction are held out."""
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_examples(
    examples: Sequence[Example], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Example], list[Example]]:
    """(train, held-out) by group, deterministic. With few groups, where no score falls below
    val_fraction, the lowest-scoring group is held out, so a small data set still has a held-out part."""
    if not 0 < val_fraction < 1:
        raise DataError(f"the held-out fraction must be between 0 and 1, got {val_fraction}")
    scores = {e.group: group_score(e.group, seed) for e in examples}
    cut = max(val_fraction, min(scores.values()) + 1e-12)
    train = [e for e in examples if scores[e.group] >= cut]
    held = [e for e in examples if scores[e.group] < cut]
    if not train or not held:
        raise DataError(
            f"{len(examples)} conversations in {len(scores)} question group(s) cannot be split into "
            "non-empty train and held-out parts; give more data (at least two different questions)"
        )
    return train, held


# --------------------------------------------------------------------------------------------
# Rendering: conversation -> ids and loss mask
# --------------------------------------------------------------------------------------------


def render_with_mask(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int]]:
    """Token ids of a conversation and its mask (1 = an assistant token to learn, with its end token).

    fornalha's own tokenizers use `fornalha.tokenizer.chat.render_chat_with_mask`. A foreign
    tokenizer (`fornalha import hf`) has its own chat template, so the mask comes from rendering the
    conversation turn by turn: the text each assistant turn adds after the generation prompt
    (its reply and the template's end-of-turn) is learned, the rest is context. Each piece is
    encoded on its own, so a prompt is tokenized exactly as it is at inference.
    """
    if getattr(tokenizer, "kind", None) != "hf":
        from fornalha.tokenizer.chat import render_chat_with_mask

        return render_chat_with_mask(tokenizer, messages)
    ids: list[int] = []
    mask: list[int] = []
    done = ""  # the text rendered so far
    for i, message in enumerate(messages):
        if message["role"] == "assistant":
            prompt = tokenizer.render_chat(messages[:i], add_generation_prompt=True)
            full = tokenizer.render_chat(messages[: i + 1], add_generation_prompt=False)
            if not prompt.startswith(done) or not full.startswith(prompt):
                raise DataError(
                    "the model's chat template does not render a conversation as a growing prefix "
                    "(it rewrites earlier turns), so the assistant tokens cannot be masked"
                )
            for text, trained in ((prompt[len(done) :], 0), (full[len(prompt) :], 1)):
                piece = tokenizer.encode(text) if text else []
                ids += piece
                mask += [trained] * len(piece)
            done = full
    return ids, mask


def prompt_ids(tokenizer: Any, messages: Sequence[Mapping[str, str]]) -> list[int]:
    """The ids that ask the model for the next assistant reply (the conversation + generation prompt)."""
    return list(tokenizer.encode_chat(list(messages), add_generation_prompt=True))
