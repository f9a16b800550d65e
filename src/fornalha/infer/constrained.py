"""Structured output: a grammar turned into a token mask, request by request.

An application that calls a model wants JSON it can parse, or a function call it can run — not
free text that is *usually* right. The reliable way is to make a wrong output impossible: at every
decoding step, forbid the tokens that would leave the set of acceptable texts, by setting their
logits to -inf before sampling. The model still chooses, but only among the tokens that keep the
text a prefix of some valid answer::

    JSON schema / tool list ─► grammar (llguidance's Lark dialect, JSON schemas embedded with %json)
    request admitted        ─► a matcher: the parser state of that one request
    every step              ─► matcher ─► allowed-token bitmask ─► logits[not allowed] = -inf ─► sample
    token sampled           ─► matcher.consume_token(token)
    nothing can follow      ─► the request finishes ("stop"): the grammar closed the JSON

The hard part — knowing, for a parser state, which of the 50,000 tokens of a vocabulary (each a
byte string that may cross a grammar boundary, like ``"}`` or ``,"``) can come next — is what the
well-kept `llguidance` library does (an Earley parser walking a trie of the tokens; tens of
microseconds per mask). This module adapts it to fornalha:

* `GrammarVocabulary` — the tokenizer as llguidance sees it (every token's bytes; special tokens
  marked so no grammar produces them); one per engine, built once.
* `Constraint` — one request's matcher; the sampler asks it for the mask, the engine feeds it
  each token.
* grammar builders for the OpenAI features: `json_object_grammar`, `json_schema_grammar`,
  `tool_call_grammar` (tool calls are JSON too: the same machinery) and `ToolCallParser`, which
  reads the calls back out of the generated text, incrementally for streaming.

JSON is generated compact (no whitespace between tokens: ``{"a":1,"b":[2]}``): whitespace that
the grammar allowed anywhere would let a model pad forever. Strings and numbers have no length
limit unless the schema gives one (``maxLength``, ``maximum``, ``enum``): a request that reaches
``max_tokens`` inside the JSON ends with finish reason "length" and an unfinished text.

Tool calls are written ``<tool_call>{"name":"NAME","arguments":{...}}</tool_call>`` (the format of
the Hermes/Qwen chat models), one after another when several are allowed. The tool list is given
to the model in the system prompt (`tools_system_prompt`), and earlier calls in the conversation
are rendered in the same format (`render_tool_call`), so what the model reads and what it writes
agree.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from fornalha.errors import ConfigError, FornalhaError

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
CACHED_GRAMMARS = 32  # compiled grammars kept per engine (see GrammarVocabulary.constraint)
MAX_PARALLEL_CALLS = 8  # with parallel tool calls, at most this many in one answer (so it always ends)
_COMPACT = {"whitespace_flexible": False}  # llguidance's JSON options: no free whitespace


def _llguidance() -> Any:
    try:
        import llguidance
    except ImportError:  # pragma: no cover - the serve extra installs it
        raise FornalhaError(
            "structured output needs the llguidance package: pip install 'fornalha[serve]'"
        ) from None
    return llguidance


# --------------------------------------------------------------------------------------------
# Grammars
# --------------------------------------------------------------------------------------------


def _compact(schema: Mapping[str, Any]) -> dict[str, Any]:
    """The schema with llguidance's "no free whitespace" option (a schema's own x-guidance wins)."""
    if not isinstance(schema, Mapping):
        raise ConfigError(f"a JSON schema must be an object, got {type(schema).__name__}")
    own = schema.get("x-guidance", {})
    if not isinstance(own, Mapping):
        raise ConfigError("x-guidance must be an object of llguidance JSON options")
    return {**schema, "x-guidance": {**_COMPACT, **own}}


def _json(schema: Mapping[str, Any]) -> str:
    """A Lark rule body that matches one JSON value of `schema`."""
    return "%json" + json.dumps(_compact(schema), ensure_ascii=False)


def _lark_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a Lark string literal is a JSON string


def check_grammar(grammar: str) -> str:
    """Return `grammar` if llguidance accepts it, else raise ConfigError with its message (an
    unknown type, a dangling $ref, a malformed pattern …)."""
    llg = _llguidance()
    try:
        is_error, messages = llg.LLMatcher.validate_grammar_with_warnings(grammar)
    except (ValueError, TypeError, RuntimeError) as exc:
        raise ConfigError(f"invalid grammar: {exc}") from None
    if is_error:
        raise ConfigError(_first_line(messages[0]))
    return grammar


def _first_line(message: str) -> str:
    """llguidance's error without its position prefix and grammar listing."""
    first = message.strip().splitlines()[0] if message.strip() else "invalid grammar"
    return re.sub(r"^at \d+\(\d+\): ", "", first)


def json_schema_grammar(schema: Mapping[str, Any]) -> str:
    """A grammar for one JSON value valid against `schema` (checked: ConfigError if invalid)."""
    llg = _llguidance()
    return check_grammar(llg.LLMatcher.grammar_from_lark(f"start: {_json(schema)}"))


def json_object_grammar() -> str:
    """Any JSON object (OpenAI's ``response_format={"type": "json_object"}``)."""
    return json_schema_grammar({"type": "object"})


def not_starting_with(prefix: str) -> str:
    """A regular expression for every text that does not begin with `prefix` (for "auto" tool
    choice: free text, as long as it does not start like a tool call). Without look-ahead, spelled
    out: a proper prefix of it and nothing more, or its first i characters and then another one."""
    alts = [""] + [re.escape(prefix[:i]) for i in range(1, len(prefix))]
    alts += [re.escape(prefix[:i]) + f"[^{re.escape(prefix[i])}](?s:.*)" for i in range(len(prefix))]
    return "|".join(alts)


def render_tool_call(name: str, arguments: Any) -> str:
    """One call as the model writes it; `arguments` is a JSON string or an already parsed value."""
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    body = json.dumps({"name": name, "arguments": args}, ensure_ascii=False, separators=(",", ":"))
    return f"{TOOL_CALL_OPEN}{body}{TOOL_CALL_CLOSE}"


def tool_call_grammar(
    tools: Sequence[Mapping[str, Any]],
    choice: Literal["auto", "required"] | str = "auto",
    parallel: bool = True,
    content_schema: Mapping[str, Any] | None = None,
) -> str:
    """A grammar for an answer that calls tools.

    tools: ``[{"name", "parameters"}]`` (parameters: a JSON schema of the arguments object; None
        means any object). choice: "auto" (text or calls), "required" (at least one call) or a tool
        name (exactly that tool). parallel: up to `MAX_PARALLEL_CALLS` calls, else one.
        content_schema: under "auto", the text answer must be JSON of this schema instead of free
        text (``response_format`` together with tools).

    Each call is ``<tool_call>{"name":"NAME","arguments":ARGS}</tool_call>`` with ARGS valid
    against that tool's parameters; the name and the key order are fixed by the grammar, which is
    what lets `ToolCallParser` stream the arguments while they are generated.
    """
    llg = _llguidance()
    if not tools:
        raise ConfigError("tool calling needs at least one tool")
    names = [t["name"] for t in tools]
    if choice not in ("auto", "required"):
        if choice not in names:
            raise ConfigError(f"tool_choice names {choice!r}, which is not among the tools {names}")
        tools = [t for t in tools if t["name"] == choice]
        parallel = False
    rules, alts = [], []
    for i, tool in enumerate(tools):
        params = dict(tool.get("parameters") or {})
        if params.setdefault("type", "object") != "object":  # arguments are always a JSON object
            raise ConfigError(f"the parameters of tool {tool['name']!r} must be a schema of type object")
        head = _lark_string(f'{TOOL_CALL_OPEN}{{"name":{json.dumps(tool["name"])},"arguments":')
        rules.append(f"call_{i}: {head} {_json(params)} {_lark_string('}' + TOOL_CALL_CLOSE)}")
        alts.append(f"call_{i}")
    calls = f"call{{1,{MAX_PARALLEL_CALLS}}}" if parallel else "call"
    if choice == "auto":
        content = _json(content_schema) if content_schema is not None else "TEXT"
        start = f"start: content | {calls}\ncontent: {content}\nTEXT: /{not_starting_with(TOOL_CALL_OPEN)}/"
    else:
        start = f"start: {calls}"
    lark = "\n".join([start, "call: " + " | ".join(alts), *rules])
    return check_grammar(llg.LLMatcher.grammar_from_lark(lark))


def tools_system_prompt(tools: Sequence[Mapping[str, Any]]) -> str:
    """The text that tells the model which tools it has and how to call them."""
    listing = "\n".join(json.dumps(dict(t), ensure_ascii=False) for t in tools)
    return (
        "You can call functions. Their signatures, one per line:\n"
        f"<tools>\n{listing}\n</tools>\n"
        "To call one, answer with "
        f'{TOOL_CALL_OPEN}{{"name":NAME,"arguments":{{...}}}}{TOOL_CALL_CLOSE} for each call.'
    )


# --------------------------------------------------------------------------------------------
# Reading tool calls back out of the text (incrementally, for streaming)
# --------------------------------------------------------------------------------------------

_HEAD = re.compile(re.escape(TOOL_CALL_OPEN) + r'\{"name":("(?:[^"\\]|\\.)*"),"arguments":')


@dataclass
class ToolCallDelta:
    """What a new piece of text added: content text, a new call (index and name), or more of a
    call's arguments (index and the text piece)."""

    kind: Literal["content", "call", "arguments"]
    text: str = ""
    index: int = 0


class ToolCallParser:
    """Splits an answer generated under `tool_call_grammar` into content or calls.

    `feed(text)` takes each new piece and returns the deltas it completes; `calls` holds
    ``[{"name", "arguments"}]`` (arguments as a JSON string, as OpenAI sends them) and `content`
    the text answer. The grammar guarantees the layout, so the parser only has to find where each
    part ends: the head of a call by a regular expression, its arguments by a JSON decoder (the
    arguments end when they decode as a complete object — until then every new character belongs
    to them, so they can be streamed at once).
    """

    def __init__(self, may_be_content: bool = True) -> None:
        self.buf = ""
        self.mode: str | None = None if may_be_content else "calls"
        self.content = ""
        self.calls: list[dict[str, str]] = []
        self._pos = 0  # where the unparsed part of buf starts
        self._state = "head"  # head -> arguments -> close -> head ...
        self._decoder = json.JSONDecoder()

    def feed(self, text: str) -> list[ToolCallDelta]:
        self.buf += text
        out: list[ToolCallDelta] = []
        if self.mode is None:
            if self.buf.startswith(TOOL_CALL_OPEN):
                self.mode = "calls"
            elif not TOOL_CALL_OPEN.startswith(self.buf):
                self.mode, text = "content", self.buf
        if self.mode == "content":
            self.content += text
            if text:
                out.append(ToolCallDelta("content", text))
            return out
        while self.mode == "calls":
            if self._state == "head":
                m = _HEAD.match(self.buf, self._pos)
                if m is None:
                    break
                self.calls.append({"name": json.loads(m.group(1)), "arguments": ""})
                out.append(ToolCallDelta("call", self.calls[-1]["name"], len(self.calls) - 1))
                self._pos, self._state = m.end(), "arguments"
            elif self._state == "arguments":
                call = self.calls[-1]
                start = self._pos - len(call["arguments"])
                try:
                    _, end = self._decoder.raw_decode(self.buf, start)
                except json.JSONDecodeError:
                    end = None
                piece = self.buf[self._pos : end if end is not None else len(self.buf)]
                if piece:
                    call["arguments"] += piece
                    out.append(ToolCallDelta("arguments", piece, len(self.calls) - 1))
                self._pos += len(piece)
                if end is None:
                    break
                self._state = "close"
            else:
                close = "}" + TOOL_CALL_CLOSE
                if not self.buf.startswith(close, self._pos):
                    break
                self._pos, self._state = self._pos + len(close), "head"
        return out

    def flush(self) -> list[ToolCallDelta]:
        """The end of the answer: text still held back because it might have become a call
        (a prefix of the tool-call tag) is content after all."""
        if self.mode is not None:
            return []
        self.mode, self.content = "content", self.buf
        return [ToolCallDelta("content", self.buf)] if self.buf else []

    @property
    def complete(self) -> bool:
        """Every call begun is closed (False while one is cut off, e.g. by max_tokens)."""
        return self.mode == "calls" and self._state == "head" and self._pos == len(self.buf)


# --------------------------------------------------------------------------------------------
# The vocabulary as llguidance sees it, and one request's constraint
# --------------------------------------------------------------------------------------------


class _EncodeStr:
    """llguidance's tokenizer wrapper: every token's bytes plus an encode function (str only)."""

    def __init__(self, tokenizer: Any, tokens: list[bytes], special: list[int]) -> None:
        self._tokenizer = tokenizer
        self.tokens = tokens
        self.eos_token_id = tokenizer.eos_id
        self.bos_token_id = getattr(tokenizer, "bos_id", None)
        self.special_token_ids = special

    def __call__(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TypeError("text only")  # tells llguidance to pass str, not bytes
        return self._tokenizer.encode(text)


class GrammarVocabulary:
    """The tokenizer prepared for llguidance, and the bitmask → bool-mask conversion.

    tokenizer: anything with `decode_bytes`, `encode`, `eos_id`, `special_ids` (fornalha's
        `Tokenizer` protocol). vocab_size: the model's (it may be larger than the tokenizer's;
        the extra rows are never allowed). stop_ids: the tokens that end a request; a grammar
        allows them where the text is complete.

    Special tokens (`<|user|>`, `<|unk|>` …) are given to llguidance with a leading 0xFF byte,
    its convention for "not text": no grammar can produce them.
    """

    def __init__(self, tokenizer: Any, vocab_size: int, stop_ids: Sequence[int]) -> None:
        llg = _llguidance()
        special = set(getattr(tokenizer, "special_ids", {}).values())
        unk = getattr(tokenizer, "unk_id", None)
        if unk is not None:
            special.add(unk)
        n = min(int(getattr(tokenizer, "vocab_size", vocab_size)), vocab_size)
        tokens = []
        for i in range(n):
            b = tokenizer.decode_bytes([i])
            tokens.append(b"\xff" + b if i in special else b)
        tokens += [b""] * (vocab_size - n)
        self.vocab_size = vocab_size
        self.stop_ids = sorted(set(stop_ids))
        if not self.stop_ids:
            raise ConfigError("structured output needs an end-of-text token to end the answer")
        wrapper = llg.TokenizerWrapper(_EncodeStr(tokenizer, tokens, sorted(special)))
        self.lltokenizer = llg.LLTokenizer(wrapper, eos_token=self.stop_ids)
        self._words = (vocab_size + 31) // 32
        self._compiled: OrderedDict[str, Any] = OrderedDict()  # grammar -> a fresh matcher to copy
        self._shifts = torch.arange(32, dtype=torch.int32)

    def constraint(self, grammar: str) -> Constraint:
        """A new request's constraint; ConfigError if the grammar does not compile. The last
        `CACHED_GRAMMARS` grammars stay compiled: the n samples of a request, or an application
        sending the same schema again, get a copy of the parser instead of a new compilation."""
        fresh = self._compiled.get(grammar)
        if fresh is None:
            llg = _llguidance()
            try:
                fresh = llg.LLMatcher(self.lltokenizer, grammar, log_level=0)
            except (ValueError, TypeError, RuntimeError) as exc:
                raise ConfigError(f"invalid grammar: {exc}") from None
            if fresh.is_error():
                raise ConfigError(_first_line(fresh.get_error()))
            self._compiled[grammar] = fresh
            if len(self._compiled) > CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(grammar)
        return Constraint(fresh.deep_copy(), self)

    def allowed(self, constraints: Sequence[Constraint]) -> torch.Tensor:
        """Bool mask [len(constraints), vocab_size]: the tokens each request may take next.

        llguidance writes one bit per token (32 tokens per int32 word, lowest bit first), row by
        row on this thread: on a 2-core machine its thread pool (`LLExecutor`) was slower, a median
        0.29 ms against 0.055 ms for 8 rows and a p90 of 3.6 ms against 0.13 ms, waiting for a core
        that torch's threads held (benchmarks/LOG.md). A row with nothing allowed (the grammar
        cannot go on with this vocabulary) gets its stop tokens, so it ends."""
        bits = torch.zeros(len(constraints), self._words, dtype=torch.int32)
        for i, c in enumerate(constraints):
            c.matcher.unsafe_compute_mask_ptr(bits[i].data_ptr(), self._words * 4)
        mask = ((bits.unsqueeze(-1) >> self._shifts) & 1).view(len(constraints), -1)[:, : self.vocab_size]
        mask = mask.bool()
        dead = ~mask.any(dim=-1)
        if dead.any():
            mask[dead.nonzero().flatten().unsqueeze(-1), torch.tensor(self.stop_ids)] = True
        return mask


class Constraint:
    """One request's grammar state. The sampler masks with it (`GrammarVocabulary.allowed`);
    the engine calls `consume(token)` for each generated token and ends the request when
    `finished` (no token but a stop token can follow)."""

    def __init__(self, matcher: Any, vocabulary: GrammarVocabulary) -> None:
        self.matcher = matcher
        self.vocabulary = vocabulary

    def consume(self, token: int) -> bool:
        return bool(self.matcher.consume_token(token))

    @property
    def finished(self) -> bool:
        return bool(self.matcher.is_stopped())


def mask_logits(logits: torch.Tensor, rows: Sequence[int], constraints: Sequence[Constraint]) -> torch.Tensor:
    """A copy of logits [B, V] where, for each constrained row rows[i], every token constraints[i]
    does not allow is -inf. The other rows are returned untouched."""
    allowed = constraints[0].vocabulary.allowed(constraints).to(logits.device)
    idx = torch.as_tensor(list(rows), device=logits.device)
    out = logits.clone()
    out[idx] = logits[idx].masked_fill(~allowed, float("-inf"))
    return out
