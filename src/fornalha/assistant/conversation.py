"""One chat turn's prompt: the conversation fitted into the context window, grounded in passages.

    turn = prepare_chat(messages, tokenizer, context=2048, reserve=256, retriever=retriever)
    turn.ids          # the prompt's token ids, ending in the generation prompt <|assistant|>
    turn.sources      # the passages quoted in the prompt (retrieval.Hit), best first
    turn.dropped      # how many of the oldest messages were left out
    turn.note         # what to tell the user when some were, else None

The one function behind `POST /v1/chat/completions` (and so the chat page, which sends its whole
conversation every turn) and `fornalha chat`. A model sees at most ``context`` tokens, and the reply
needs ``reserve`` of them, so the prompt gets ``budget = context - reserve``. It is filled in order
of importance:

    1. the system prompt and the newest message: always kept (if even they do not fit, the
       prompt is returned too long and the caller refuses the request);
    2. the passages retrieved for the newest user message, best first, inside the system message
       ("[1] title: text"), numbered so the answer can cite them. They may take at most
       ``passage_share`` of the room left by step 1 when there is earlier conversation to keep
       (all of it otherwise); the last passage that fits only in part is cut at a token boundary;
    3. as many of the most recent earlier messages as still fit. The oldest are dropped, never a
       message from the middle, and a kept history never starts with an assistant reply whose
       question was dropped.

Every count is taken on the real token ids (``tokenizer.encode_chat``), so what fits is exact for
any chat template. The messages passed in are never modified: a caller that keeps a history (the
terminal chat) drops ``dropped`` messages from its own copy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from fornalha.assistant.retrieval import Hit, Retriever

#: What the system message says before the passages.
GROUNDING = "Answer from these passages of the user's documents when they help, citing them as [1], [2]:"
#: A passage cut to fit keeps at least this many tokens, else it is left out.
MIN_PASSAGE_TOKENS = 8


def default_reserve(context: int, wanted: int = 256) -> int:
    """Tokens kept free for the reply when the caller does not say: ``wanted``, at most a quarter of
    the context window."""
    return max(1, min(wanted, context // 4))


@dataclass
class PreparedChat:
    """The prompt of one chat turn and what was done to make it fit (see `prepare_chat`)."""

    ids: list[int]
    messages: list[dict[str, str]]
    context: int
    dropped: int = 0
    kept: int = 0
    sources: list[Hit] = field(default_factory=list)

    @property
    def note(self) -> str | None:
        """One sentence for the user when older messages were left out, else None."""
        if not self.dropped:
            return None
        s = "" if self.dropped == 1 else "s"
        return (
            f"{self.dropped} oldest message{s} left out: the conversation no longer fits the model's "
            f"{self.context}-token context window (the system prompt is kept)"
        )

    def info(self) -> dict[str, Any]:
        """The ``conversation`` extension field of a chat completion."""
        return {
            "dropped_messages": self.dropped,
            "kept_messages": self.kept,
            "prompt_tokens": len(self.ids),
            "context_window": self.context,
            "note": self.note,
        }


def prepare_chat(
    messages: Sequence[dict[str, str]],
    tokenizer: Any,
    *,
    context: int,
    reserve: int = 0,
    retriever: Retriever | None = None,
    top_k: int = 3,
    passage_share: float = 0.5,
) -> PreparedChat:
    """Fit ``messages`` (role/content dicts, OpenAI order) and retrieved passages into ``context - reserve``
    tokens; see the module docstring for the order in which the room is given out."""
    msgs = [{"role": m["role"], "content": m["content"]} for m in messages]
    system = msgs[0]["content"] if msgs and msgs[0]["role"] == "system" else None
    turns = msgs[1:] if system is not None else msgs
    newest, older = turns[-1:], turns[:-1]
    budget = context - reserve

    def render(system_text: str | None, history: list[dict[str, str]]) -> list[int]:
        head = [{"role": "system", "content": system_text}] if system_text is not None else []
        return tokenizer.encode_chat(head + history + newest, add_generation_prompt=True)

    # 1. what is always kept
    base = len(render(system, []))
    # 2. the passages, in the system message
    hits: list[Hit] = []
    query = next((m["content"] for m in reversed(turns) if m["role"] == "user"), "")
    if retriever is not None and top_k > 0 and query.strip() and base < budget:
        room = budget - base
        limit = base + (int(room * passage_share) if older else room)
        hits = _fit_passages(retriever.search(query, top_k), system, render, limit, tokenizer)
    system_text = _grounded(system, hits) if hits else system
    # 3. the most recent earlier messages that still fit (binary search: more messages, more tokens)
    lo, hi = 0, len(older)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if len(render(system_text, older[len(older) - mid :])) <= budget:
            lo = mid
        else:
            hi = mid - 1
    kept = older[len(older) - lo :] if lo else []
    while kept and kept[0]["role"] == "assistant":
        kept = kept[1:]
    final = ([{"role": "system", "content": system_text}] if system_text is not None else []) + kept + newest
    return PreparedChat(
        ids=render(system_text, kept), messages=final, context=context, dropped=len(older) - len(kept),
        kept=len(kept) + len(newest), sources=hits,
    )  # fmt: skip


def _grounded(system: str | None, hits: Sequence[Hit]) -> str:
    """The system message with the passages appended, numbered from [1]."""
    parts = [system] if system else []
    parts.append(GROUNDING)
    parts += [f"[{i}] {h.passage.title}: {h.passage.text}" for i, h in enumerate(hits, start=1)]
    return "\n\n".join(parts)


def _fit_passages(hits: list[Hit], system, render, limit: int, tokenizer: Any) -> list[Hit]:
    """The hits, best first, that fit within ``limit`` prompt tokens; the last one possibly cut."""
    used: list[Hit] = []
    for hit in hits:
        n = len(render(_grounded(system, [*used, hit]), []))
        if n <= limit:
            used.append(hit)
            continue
        ids = tokenizer.encode(hit.passage.text)
        keep = len(ids) - (n - limit)
        while keep >= MIN_PASSAGE_TOKENS:  # decoding a cut may re-encode longer: shrink until it fits
            text = tokenizer.decode(ids[:keep]).rstrip() + " …"
            cut = Hit(replace(hit.passage, text=text), hit.score, hit.bm25)
            if len(render(_grounded(system, [*used, cut]), [])) <= limit:
                used.append(cut)
                break
            keep -= max(1, keep // 8)
        break
    return used
