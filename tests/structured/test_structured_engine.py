"""Grammar-constrained generation in the engine: outputs validate, rows stay independent."""

from __future__ import annotations

import json

import pytest
import torch
from structured_helpers import PERSON, bpe_tokenizer, char_tokenizer, hf_tokenizer, random_model, validate

from fornalha.errors import ConfigError
from fornalha.infer import Engine, SamplingParams
from fornalha.infer.constrained import (
    TOOL_CALL_OPEN,
    ToolCallParser,
    json_object_grammar,
    json_schema_grammar,
    mask_logits,
    render_tool_call,
    tool_call_grammar,
)

TOOLS = [
    {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"enum": ["Lisboa", "Porto"]}, "days": {"type": "integer", "minimum": 1,
                                                                         "maximum": 7}},
            "required": ["city", "days"],
            "additionalProperties": False,
        },
    },
    {
        "name": "add",
        "parameters": {
            "type": "object",
            "properties": {"xs": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 99},
                                  "minItems": 1, "maxItems": 3}},
            "required": ["xs"],
            "additionalProperties": False,
        },
    },
]  # fmt: skip
SCHEMAS = {t["name"]: t["parameters"] for t in TOOLS}


def engine_for(tok, batch: int = 4) -> Engine:
    # exact float32 paths: the comparisons below are token for token
    return Engine(random_model(tok.vocab_size), tok, max_batch_size=batch, decode_weights=None, kv_cache=None)


@pytest.mark.parametrize("make_tok", [char_tokenizer, bpe_tokenizer, hf_tokenizer], ids=["char", "bpe", "hf"])
def test_every_output_validates_against_the_schema(make_tok):
    """Nested object, enum, array, required fields, bounded strings: greedy and 5 seeded samples all
    finish by themselves ("stop") as valid JSON; nothing follows the closing brace."""
    tok = make_tok()
    engine = engine_for(tok)
    grammar = json_schema_grammar(PERSON)
    params = [SamplingParams(max_new_tokens=300, temperature=0, grammar=grammar)]
    params += [SamplingParams(max_new_tokens=300, temperature=1.0, seed=s, grammar=grammar) for s in range(5)]
    results = engine.generate(["who is it?"] * len(params), params)
    for res in results:
        c = res.completions[0]
        assert c.finish_reason == "stop", c.text
        value = validate(PERSON, c.text)
        assert set(value) == set(PERSON["required"])
        assert tok.decode(c.token_ids) == c.text  # ended on the brace: no stop token needed
    assert len({r.text for r in results[1:]}) > 1  # the samples differ: the model still chooses


def test_json_object_and_length_mid_json():
    tok = char_tokenizer()
    engine = engine_for(tok)
    outs = engine.generate(["x"] * 3, [SamplingParams(max_new_tokens=400, temperature=1.0, seed=s,
                                                      grammar=json_object_grammar()) for s in range(3)])  # fmt: skip
    for r in outs:
        assert r.completions[0].finish_reason == "stop", r.text
        assert isinstance(json.loads(r.text), dict)
    cut = engine.generate(
        ["x"], SamplingParams(max_new_tokens=6, temperature=0, grammar=json_schema_grammar(PERSON))
    )
    c = cut[0].completions[0]
    assert c.finish_reason == "length" and len(c.token_ids) == 6
    assert c.text == '{"name'  # the forced start of the object, cut off
    with pytest.raises(json.JSONDecodeError):
        json.loads(c.text)


def test_mixed_batch_each_row_gets_its_own_result():
    """Constrained and free requests decoded together: the free ones are token for token what they
    are alone with the same seed; the constrained ones validate."""
    tok = char_tokenizer()
    engine = engine_for(tok, batch=4)
    grammar = json_schema_grammar(PERSON)
    free = [SamplingParams(max_new_tokens=60, temperature=1.0, seed=s) for s in (1, 2)]
    constrained = [
        SamplingParams(max_new_tokens=300, temperature=1.0, seed=s, grammar=grammar) for s in (1, 2)
    ]
    prompts = ["tell me", "who is it?", "tell me", "who is it?"]
    mixed = engine.generate(prompts, [free[0], constrained[0], free[1], constrained[1]])
    alone = engine_for(tok, batch=1)
    for i, p in ((0, free[0]), (2, free[1])):
        want = alone.generate([prompts[i]], p)[0].completions[0]
        assert mixed[i].completions[0].token_ids == want.token_ids
    for i in (1, 3):
        validate(PERSON, mixed[i].text)
    # and the free output is not JSON-shaped: the mask did not leak into its row
    assert not mixed[0].text.startswith("{")


def test_mask_touches_only_constrained_rows():
    tok = char_tokenizer()
    engine = engine_for(tok)
    constraint = engine.grammar_vocabulary().constraint(json_schema_grammar(PERSON))
    logits = torch.randn(3, engine.config.vocab_size)
    out = mask_logits(logits, [1], [constraint])
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    allowed = torch.isfinite(out[1]).nonzero().flatten().tolist()
    assert allowed == [tok.encode("{")[0]]  # a PERSON answer can only start with "{"
    # a second request with the same grammar gets its own parser state (a copy of the compiled one)
    other = engine.grammar_vocabulary().constraint(json_schema_grammar(PERSON))
    assert constraint.consume(tok.encode("{")[0])
    masks = engine.grammar_vocabulary().allowed([constraint, other])
    assert masks[1].nonzero().flatten().tolist() == [tok.encode("{")[0]] and masks[0].sum() == 1  # '"'
    assert masks[0].nonzero().flatten().tolist() == tok.encode('"')


def test_bad_grammars_are_config_errors():
    with pytest.raises(ConfigError, match="Invalid type"):
        json_schema_grammar({"type": "nope"})
    with pytest.raises(ConfigError, match="does not exist"):
        json_schema_grammar({"type": "object", "properties": {"a": {"$ref": "#/$defs/Missing"}}})
    with pytest.raises(ConfigError):
        tool_call_grammar(TOOLS, choice="no_such_tool")
    with pytest.raises(ConfigError, match="type object"):
        tool_call_grammar([{"name": "f", "parameters": {"type": "string"}}])
    with pytest.raises(ConfigError, match="ignore_eos"):
        SamplingParams(grammar=json_object_grammar(), ignore_eos=True)
    engine = engine_for(char_tokenizer())
    with pytest.raises(ConfigError):
        engine.add_request("x", SamplingParams(grammar="start: %json{"))


@pytest.mark.parametrize("make_tok", [char_tokenizer, bpe_tokenizer], ids=["char", "bpe"])
def test_tool_calls_follow_their_schemas(make_tok):
    tok = make_tok()
    engine = engine_for(tok)
    required = tool_call_grammar(TOOLS, "required", parallel=True)
    named = tool_call_grammar(TOOLS, "add")
    params = [SamplingParams(max_new_tokens=400, temperature=1.0, seed=s, grammar=required) for s in range(3)]
    params += [SamplingParams(max_new_tokens=200, temperature=0.0, grammar=named)]
    for i, res in enumerate(engine.generate(["call"] * len(params), params)):
        c = res.completions[0]
        assert c.finish_reason == "stop", c.text  # the model stopped after a complete call
        parser = ToolCallParser(may_be_content=False)
        parser.feed(c.text)
        assert parser.complete and parser.calls, c.text
        for call in parser.calls:
            validate(SCHEMAS[call["name"]], call["arguments"])
        if i == 3:
            assert [call["name"] for call in parser.calls] == ["add"]


def test_auto_tool_choice_is_text_or_a_call():
    """Under "auto" a text answer may be anything that does not start like a call; once the tag is
    written, only a call can follow: "{", then one of the tool names."""
    tok = char_tokenizer()
    engine = engine_for(tok)
    grammar = tool_call_grammar(TOOLS, "auto")
    outs = engine.generate(["hi"] * 4, [SamplingParams(max_new_tokens=40, temperature=1.0, seed=s,
                                                       grammar=grammar) for s in range(4)])  # fmt: skip
    for r in outs:  # this random model answers in text (or stops at once: the end token is allowed too)
        assert not r.text.startswith(TOOL_CALL_OPEN[:2])
    assert sum(bool(r.text) for r in outs) >= 2

    def allowed_after(text: str) -> set[str]:
        c = engine.grammar_vocabulary().constraint(grammar)
        for t in tok.encode(text):
            assert c.consume(t)
        row = mask_logits(torch.zeros(1, engine.config.vocab_size), [0], [c])[0]
        return {tok.decode([i]) for i in torch.isfinite(row).nonzero().flatten().tolist()}

    assert len(allowed_after("<to")) > 50  # still text, or the tag
    assert allowed_after(TOOL_CALL_OPEN) == {"{"}
    assert allowed_after(TOOL_CALL_OPEN + '{"name":"') == {"g", "a"}  # get_weather, add
    assert allowed_after(TOOL_CALL_OPEN + '{"name":"add","arguments":{"xs":[') == set("0123456789")


def test_parser_streams_calls_piece_by_piece():
    """Arguments holding the closing tag inside a string, two calls, fed one character at a time:
    the deltas add up to the calls, and feeding the whole text at once gives the same."""
    text = render_tool_call("add", {"xs": [1, 2]}) + render_tool_call(
        "get_weather", '{"note":"}</tool_call>"}'
    )
    whole = ToolCallParser(may_be_content=False)
    whole.feed(text)
    assert whole.complete
    assert whole.calls == [{"name": "add", "arguments": '{"xs":[1,2]}'},
                           {"name": "get_weather", "arguments": '{"note":"}</tool_call>"}'}]  # fmt: skip
    piecewise = ToolCallParser(may_be_content=True)
    names, args = [], {}
    for ch in text:
        for d in piecewise.feed(ch):
            if d.kind == "call":
                names.append(d.text)
            else:
                assert d.kind == "arguments"
                args[d.index] = args.get(d.index, "") + d.text
    assert names == ["add", "get_weather"]
    assert [args[0], args[1]] == [c["arguments"] for c in whole.calls]
    content = ToolCallParser()
    assert [d.text for d in content.feed("<to")] == []  # could still become a call: held back
    assert [d.text for d in content.feed("p!")] == ["<top!"]
