"""Structured output and tool calling on ``/v1/chat/completions``, in OpenAI's shapes.

The engine only knows grammars (`fornalha.infer.constrained`); this module translates:

    request: response_format / tools / tool_choice ─► grammar_for(req) ─► SamplingParams.grammar
             messages (+ tool calls and tool results) ─► template_messages(req) ─► chat template
    answer:  generated text ─► ChoiceReader ─► message.content, or message.tool_calls with
             finish_reason "tool_calls" (whole, or as streamed deltas)

``response_format``: ``{"type": "text"}`` (free, the default), ``{"type": "json_object"}`` (any JSON
object) or ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``. A schema
llguidance cannot compile is a 400 naming ``response_format`` (or ``tools``).

``tools`` are described to the model in the system prompt; ``tool_choice`` "auto" (the default
with tools) lets it answer in text (or in the ``response_format``) or call tools, "required" makes
it call at least one, ``{"type": "function", "function": {"name": …}}`` exactly that one, "none"
none. ``parallel_tool_calls: false`` allows one call per answer.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from fornalha.errors import ConfigError
from fornalha.infer.constrained import (
    ToolCallParser,
    json_object_grammar,
    json_schema_grammar,
    render_tool_call,
    tool_call_grammar,
    tools_system_prompt,
)
from fornalha.serve.errors import APIError
from fornalha.serve.protocol import ChatCompletionRequest


def _tool_choice(req: ChatCompletionRequest) -> str | None:
    """The tool choice: "auto", "required", a tool name, or None when no tool may be called."""
    choice = req.tool_choice
    if choice is None:
        return "auto" if req.tools else None
    if not req.tools:
        raise APIError(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
    if choice == "none":
        return None
    return choice if isinstance(choice, str) else choice.function.name


def _content_schema(req: ChatCompletionRequest) -> dict[str, Any] | None:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "object"}
    assert fmt.json_schema is not None  # the protocol model checks it
    return fmt.json_schema.schema_ if fmt.json_schema.schema_ is not None else {}


def grammar_for(req: ChatCompletionRequest) -> str | None:
    """The grammar the answer must follow, or None for free text; APIError 400 if it is invalid."""
    choice = _tool_choice(req)
    schema = _content_schema(req)
    try:
        content = None
        if schema is not None:
            content = json_object_grammar() if schema == {"type": "object"} else json_schema_grammar(schema)
    except ConfigError as exc:
        raise APIError(
            400, f"response_format: {exc}", param="response_format", code="invalid_schema"
        ) from None
    if choice is None:
        return content
    assert req.tools is not None
    tools = [{"name": t.function.name, "parameters": t.function.parameters} for t in req.tools]
    try:
        return tool_call_grammar(tools, choice, req.parallel_tool_calls is not False, content_schema=schema)
    except ConfigError as exc:
        param = "tool_choice" if "tool_choice" in str(exc) else "tools"
        raise APIError(400, f"{param}: {exc}", param=param, code="invalid_schema") from None


def template_messages(req: ChatCompletionRequest) -> list[dict[str, str]]:
    """The conversation for the chat template: the tools described in the system message, an
    assistant's earlier calls written as it writes them, a tool's result as a user turn."""
    out: list[dict[str, str]] = []
    names: dict[str, str] = {}  # tool_call_id -> function name
    for m in req.messages:
        role, content = m.role, m.content or ""
        if role == "developer":
            role = "system"
        if m.tool_calls:
            for call in m.tool_calls:
                names[call.id] = call.function.name
                try:
                    content += render_tool_call(call.function.name, call.function.arguments)
                except json.JSONDecodeError:
                    raise APIError(400, f"the arguments of tool call {call.id!r} are not JSON",
                                   param="messages", code="invalid_value") from None  # fmt: skip
        if role == "tool":
            result = {"name": names.get(m.tool_call_id or "", m.name), "content": content}
            role, content = "user", f"<tool_response>{json.dumps(result, ensure_ascii=False)}</tool_response>"
        out.append({"role": role, "content": content})
    if req.tools:
        described = tools_system_prompt([t.function.model_dump(exclude_none=True) for t in req.tools])
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + described}
        else:
            out.insert(0, {"role": "system", "content": described})
    return out


class ChoiceReader:
    """Turns one choice's generated text into OpenAI's message: plain content, or tool calls.

    `delta(text)` gives the streamed delta for a new piece of text (``{"content": …}`` or
    ``{"tool_calls": [{"index", "id", "type", "function": {"name", "arguments"}}]}``, later pieces
    of the arguments as ``{"index", "function": {"arguments"}}``); `message(text, finish)` the
    whole message and finish reason of a non-streamed answer. Finish reason "stop" becomes
    "tool_calls" when the answer is calls.
    """

    def __init__(self, req: ChatCompletionRequest) -> None:
        choice = _tool_choice(req)
        self.tools = choice is not None
        self.may_be_content = choice == "auto"
        self._stream = ToolCallParser(self.may_be_content)
        self._ids: list[str] = []

    def _id(self, index: int) -> str:
        while len(self._ids) <= index:
            self._ids.append(f"call_{uuid.uuid4().hex[:24]}")
        return self._ids[index]

    def delta(self, text: str, finished: bool = False) -> dict[str, Any]:
        if not self.tools:
            return {"content": text} if text else {}
        content, calls = "", []
        deltas = self._stream.feed(text) + (self._stream.flush() if finished else [])
        for d in deltas:
            if d.kind == "content":
                content += d.text
            elif d.kind == "call":
                calls.append({"index": d.index, "id": self._id(d.index), "type": "function",
                              "function": {"name": d.text, "arguments": ""}})  # fmt: skip
            elif calls and calls[-1]["index"] == d.index:
                calls[-1]["function"]["arguments"] += d.text
            else:
                calls.append({"index": d.index, "function": {"arguments": d.text}})
        out: dict[str, Any] = {}
        if content:
            out["content"] = content
        if calls:
            out["tool_calls"] = calls
        return out

    def finish_reason(self, reason: str | None) -> str | None:
        if reason == "stop" and self.tools and self._stream.mode == "calls":
            return "tool_calls"
        return reason

    def message(self, text: str, reason: str | None) -> tuple[dict[str, Any], str | None]:
        if not self.tools:
            return {"role": "assistant", "content": text}, reason
        parser = ToolCallParser(self.may_be_content)
        parser.feed(text)
        if parser.mode != "calls":
            return {"role": "assistant", "content": text}, reason
        calls = [
            {"id": self._id(i), "type": "function", "function": dict(c)} for i, c in enumerate(parser.calls)
        ]
        return {"role": "assistant", "content": None, "tool_calls": calls}, (
            "tool_calls" if reason == "stop" else reason
        )
