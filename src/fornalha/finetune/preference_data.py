"""Preference pairs: a conversation, the answer people preferred, and the one they did not.

One pair is `PreferencePair(messages, chosen, rejected)`: `messages` is the conversation so far
(ending with a user turn), `chosen` and `rejected` are two assistant replies to it. A JSONL file
holds one pair per line, in any of these shapes (recognised per line):

    {"messages": [...], "chosen": "...", "rejected": "..."}     OpenAssistant pairs; `fornalha feedback export`
    {"prompt": "...", "chosen": "...", "rejected": "..."}       a single user turn (TRL's "prompt" format)
    {"chosen": "\\n\\nHuman: … \\n\\nAssistant: …", "rejected": "…"}
                                                                Anthropic HH: two whole transcripts that differ
                                                                in the last assistant turn only

`chosen`/`rejected` may also be a message `{"role": "assistant", "content": ...}` or a list whose
last message is the reply. A line that is not JSON, has none of these shapes, or has empty or
identical replies is counted as bad with its line number and skipped (`PreferenceFile.bad`).

Encoding (`encode_pair`): the conversation plus one reply is rendered with the chat template
(`render_chat_with_mask`); the loss mask keeps the *final* reply's tokens and its `<|end|>` only.
A pair longer than the context is cut: the oldest prompt tokens go first, the reply keeps its
start (at least half the context stays prompt when the prompt is that long).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fornalha.errors import DataError
from fornalha.tokenizer.chat import render_chat_with_mask


@dataclass
class PreferencePair:
    messages: list[dict[str, str]]  # the conversation before the reply (ends with a user turn)
    chosen: str
    rejected: str
    line: int = 0  # 1-based line in its file (0: made in code)


@dataclass
class PreferenceFile:
    pairs: list[PreferencePair]
    bad: list[tuple[int, str]] = field(default_factory=list)  # (line number, reason)
    shapes: dict[str, int] = field(default_factory=dict)  # how many lines of each shape
    sha256: str = ""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """An Anthropic HH transcript ("\\n\\nHuman: …\\n\\nAssistant: …") as chat messages."""
    if not isinstance(text, str):
        raise DataError("an HH transcript must be a string")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise DataError("an HH transcript must start with '\\n\\nHuman: '")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        messages.append({"role": "user" if speaker == "Human" else "assistant", "content": content.strip()})
    if not messages:
        raise DataError("no '\\n\\nHuman:' / '\\n\\nAssistant:' turns in the transcript")
    return messages


def _reply(value: Any, what: str) -> str:
    """A reply given as a string, an assistant message, or a list of messages ending with one."""
    if isinstance(value, list) and value:
        value = value[-1]
    if isinstance(value, Mapping):
        if value.get("role", "assistant") != "assistant":
            raise DataError(f"'{what}' must be an assistant reply, got role {value.get('role')!r}")
        value = value.get("content")
    if not isinstance(value, str):
        raise DataError(f"'{what}' must be a string or an assistant message")
    if not value.strip():
        raise DataError(f"'{what}' is empty")
    return value


def _messages(value: Any) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise DataError("'messages' must be a non-empty list of {role, content}")
    out = []
    for m in value:
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or m.get("role") not in (
            "system", "user", "assistant",
        ):  # fmt: skip
            raise DataError("each message needs a role (system|user|assistant) and a string content")
        out.append({"role": m["role"], "content": m["content"]})
    if out[-1]["role"] == "assistant":
        raise DataError("'messages' must end with a user turn (the replies are 'chosen'/'rejected')")
    return out


def pair_from_record(record: Any, line: int = 0) -> tuple[PreferencePair, str]:
    """(pair, shape name) from one JSON record; DataError when it has no known shape."""
    if not isinstance(record, Mapping):
        raise DataError("a record must be a JSON object")
    if "chosen" not in record or "rejected" not in record:
        raise DataError("a record needs 'chosen' and 'rejected'")
    if "messages" in record:
        messages, shape = _messages(record["messages"]), "messages"
        chosen, rejected = _reply(record["chosen"], "chosen"), _reply(record["rejected"], "rejected")
    elif "prompt" in record:
        if not isinstance(record["prompt"], str) or not record["prompt"].strip():
            raise DataError("'prompt' must be a non-empty string")
        messages, shape = [{"role": "user", "content": record["prompt"]}], "prompt"
        chosen, rejected = _reply(record["chosen"], "chosen"), _reply(record["rejected"], "rejected")
    elif isinstance(record["chosen"], str) and isinstance(record["rejected"], str):
        good, bad = parse_hh_transcript(record["chosen"]), parse_hh_transcript(record["rejected"])
        if good[-1]["role"] != "assistant" or bad[-1]["role"] != "assistant":
            raise DataError("an HH transcript must end with an Assistant turn")
        if good[:-1] != bad[:-1]:
            raise DataError("the two HH transcripts differ before their last Assistant turn")
        messages, shape = good[:-1], "hh"
        chosen, rejected = _reply(good[-1], "chosen"), _reply(bad[-1], "rejected")
        if not messages:
            raise DataError("an HH transcript needs a Human turn before the last Assistant turn")
    else:
        raise DataError("no 'messages' or 'prompt', and 'chosen'/'rejected' are not HH transcripts")
    if chosen.strip() == rejected.strip():
        raise DataError("'chosen' and 'rejected' are the same reply")
    return PreferencePair(messages, chosen, rejected, line), shape


def read_preference_file(path: str | Path) -> PreferenceFile:
    """Every pair of a JSONL file (see the module docstring); bad lines counted with their numbers."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"--data {path}: no such file")
    raw = path.read_bytes()
    result = PreferenceFile(pairs=[], sha256=hashlib.sha256(raw).hexdigest())
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"--data {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            pair, shape = pair_from_record(json.loads(line), number)
        except json.JSONDecodeError as exc:
            result.bad.append((number, f"not JSON ({exc.msg})"))
            continue
        except DataError as exc:
            result.bad.append((number, str(exc)))
            continue
        result.pairs.append(pair)
        result.shapes[shape] = result.shapes.get(shape, 0) + 1
    return result


def split_pairs(
    pairs: Sequence[PreferencePair], held_out: float, seed: int = 0
) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out) by conversation: every pair of one prompt lands on the same side, chosen by
    a hash of the prompt (deterministic, independent of the file's order)."""
    if not 0.0 < held_out < 1.0:
        raise DataError(f"the held-out fraction must be between 0 and 1, got {held_out}")
    train, test = [], []
    for pair in pairs:
        key = json.dumps(pair.messages, sort_keys=True) + f"#{seed}"
        bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
        (test if bucket < held_out else train).append(pair)
    if not train or not test:
        raise DataError(
            f"{len(pairs)} pairs over {len({json.dumps(p.messages) for p in pairs})} prompts are too few "
            f"to hold out {held_out:.0%} of the prompts and train on the rest"
        )
    return train, test


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


@dataclass
class EncodedReply:
    ids: list[int]  # prompt + reply tokens
    mask: list[int]  # 1 on the reply's tokens (and its <|end|>)
    truncated: bool


def encode_reply(tokenizer, messages: list[dict[str, str]], reply: str, max_len: int) -> EncodedReply:
    """Render the conversation plus one assistant reply; the mask covers the reply only."""
    prompt_ids, _ = render_chat_with_mask(tokenizer, messages, add_generation_prompt=False)
    ids, mask = render_chat_with_mask(tokenizer, [*messages, {"role": "assistant", "content": reply}])
    n_prompt = len(prompt_ids) + 1  # the reply's <|assistant|> role token is context too
    mask = [0] * n_prompt + mask[n_prompt:]
    if len(ids) <= max_len:
        return EncodedReply(ids, mask, False)
    n_reply = len(ids) - n_prompt
    keep_prompt = max(max_len - n_reply, min(n_prompt, max_len // 2))
    keep_reply = max_len - keep_prompt
    ids = ids[n_prompt - keep_prompt : n_prompt + keep_reply]
    mask = mask[n_prompt - keep_prompt : n_prompt + keep_reply]
    return EncodedReply(ids, mask, True)


def encode_pair(tokenizer, pair: PreferencePair, max_len: int) -> tuple[EncodedReply, EncodedReply]:
    """(chosen, rejected), each at most `max_len` tokens (the model's context)."""
    return (
        encode_reply(tokenizer, pair.messages, pair.chosen, max_len),
        encode_reply(tokenizer, pair.messages, pair.rejected, max_len),
    )
