"""response_format, tools and tool_choice on a live `fornalha serve`, through the official client."""

from __future__ import annotations

import concurrent.futures as cf
import json
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field
from structured_helpers import KEY, PERSON, validate

MSGS = [{"role": "user", "content": "who is it?"}]
PERSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"enum": ["Lisboa", "Porto"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
    },
    "required": ["city", "days"],
    "additionalProperties": False,
}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "forecast", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {},
                                                                     "additionalProperties": False}}},
]  # fmt: skip


class Address(BaseModel):
    city: str = Field(max_length=8)
    zip: int = Field(ge=0, le=999)


class Person(BaseModel):
    role: Literal["admin", "user"]
    address: Address
    tags: list[Literal["a", "b"]] = Field(max_length=2)
    active: bool


def test_json_schema_answers_validate_and_stream_the_same(client):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=400, temperature=0,
                                       response_format=PERSON_FORMAT)  # fmt: skip
    assert r.choices[0].finish_reason == "stop"
    validate(PERSON, r.choices[0].message.content)
    chunks = list(client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=400, temperature=0,
                                                 response_format=PERSON_FORMAT, stream=True))  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == r.choices[0].message.content
    samples = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=400, temperature=1.0,
                                             seed=5, n=3, response_format=PERSON_FORMAT)  # fmt: skip
    for c in samples.choices:
        assert c.finish_reason == "stop"
        validate(PERSON, c.message.content)
    obj = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=400, temperature=1.0, seed=1,
                                         response_format={"type": "json_object"})  # fmt: skip
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_openai_parse_with_a_pydantic_model(client):
    """The client's own structured-output helper, unchanged: it sends the model's strict schema and
    parses the answer back into the model."""
    parse = client.chat.completions.parse
    r = parse(model="tiny", messages=MSGS, max_tokens=400, temperature=0, response_format=Person)
    person = r.choices[0].message.parsed
    assert isinstance(person, Person) and isinstance(person.address, Address)
    if hasattr(client, "beta") and hasattr(client.beta.chat.completions, "parse"):
        again = client.beta.chat.completions.parse(model="tiny", messages=MSGS, max_tokens=400, temperature=0,
                                                   response_format=Person)  # fmt: skip
        assert again.choices[0].message.parsed == person
    with pytest.raises(openai.LengthFinishReasonError):  # cut off inside the JSON: "length"
        parse(model="tiny", messages=MSGS, max_tokens=5, temperature=0, response_format=Person)


def test_tool_call_round_trip_and_streaming(client):
    r = client.chat.completions.create(model="tiny", messages=MSGS, max_tokens=300, temperature=0, tools=TOOLS,
                                       tool_choice={"type": "function", "function": {"name": "get_weather"}})  # fmt: skip
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    args = validate(WEATHER, call.function.arguments)

    # the same request streamed: the client's accumulator rebuilds the same call
    with client.chat.completions.stream(model="tiny", messages=MSGS, max_tokens=300, temperature=0, tools=TOOLS,
                                        tool_choice={"type": "function", "function": {"name": "get_weather"}}) as s:  # fmt: skip
        final = s.get_final_completion()
    streamed = final.choices[0]
    assert streamed.finish_reason == "tool_calls"
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == [
        ("get_weather", call.function.arguments)
    ]

    # round trip: the call and its result go back into the conversation
    history = [*MSGS, choice.message.model_dump(exclude_none=True),  # as docs/structured.md shows
               {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temp_c": 21, **args})}]  # fmt: skip
    after = client.chat.completions.create(model="tiny", messages=history, max_tokens=20, temperature=0,
                                           tools=TOOLS, tool_choice="none")  # fmt: skip
    assert after.choices[0].finish_reason in ("stop", "length")
    assert after.choices[0].message.tool_calls is None and after.choices[0].message.content
    assert after.usage.prompt_tokens > r.usage.prompt_tokens  # the call and its result are in the prompt

    required = client.chat.completions.create(model="tiny", messages=history, max_tokens=200, temperature=1.0,
                                              seed=2, tools=TOOLS, tool_choice="required",
                                              parallel_tool_calls=False)  # fmt: skip
    (again,) = required.choices[0].message.tool_calls
    assert again.function.name in ("get_weather", "ping")
    json.loads(again.function.arguments)


def test_mixed_concurrent_requests_each_get_their_own_result(client):
    """Free and constrained requests in flight together (one batch on the server): the free ones are
    exactly what they are alone; the constrained ones validate."""
    free = dict(
        model="tiny", messages=[{"role": "user", "content": "tell me"}], max_tokens=40, temperature=1.0
    )
    alone = [client.chat.completions.create(seed=s, **free).choices[0].message.content for s in (1, 2)]
    with cf.ThreadPoolExecutor(6) as pool:
        frees = [pool.submit(client.chat.completions.create, seed=s, **free) for s in (1, 2)]
        cons = [pool.submit(client.chat.completions.create, model="tiny", messages=MSGS, max_tokens=400,
                            temperature=1.0, seed=s, response_format=PERSON_FORMAT) for s in range(4)]  # fmt: skip
        assert [f.result().choices[0].message.content for f in frees] == alone
        for f in cons:
            validate(PERSON, f.result().choices[0].message.content)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nope"}}}},
         "response_format"),
        ({"response_format": {"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "object", "properties": {"a": {"$ref": "#/$defs/Gone"}}}}}},
         "response_format"),
        ({"response_format": {"type": "json_schema"}}, "response_format"),
        ({"response_format": {"type": "yaml"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 3}}}]}, "tools"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools"),
    ],
)  # fmt: skip
def test_invalid_schemas_and_tools_are_400(server, extra, param):
    body = {"model": "tiny", "messages": MSGS, "max_tokens": 5, **extra}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["type"] == "invalid_request_error" and err["message"]


def test_bad_tool_messages_are_400(server):
    bad = [
        [{"role": "tool", "content": "21"}],  # no tool_call_id
        [{"role": "user", "content": None}],
        [{"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{not json"}}]}],
    ]  # fmt: skip
    for messages in bad:
        r = httpx.post(server.url + "/v1/chat/completions", json={"model": "tiny", "messages": messages},
                       headers={"Authorization": f"Bearer {KEY}"})  # fmt: skip
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == "messages"
