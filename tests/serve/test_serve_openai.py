"""The official `openai` client (strict response validation) against a live `fornalha serve`."""

from __future__ import annotations

import base64

import numpy as np
import openai
import pytest
from serve_helpers import TEXT


def test_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_completion_greedy_exact_usage(client, run_dir):
    from fornalha.checkpoint import load_run
    from fornalha.infer import Engine, SamplingParams

    r = client.completions.create(model="tiny", prompt="the quick", max_tokens=12, temperature=0)
    assert r.id.startswith("cmpl-")
    model, tok, _ = load_run(run_dir)
    want = Engine(model, tok, max_batch_size=1).generate(
        ["the quick"], SamplingParams(max_new_tokens=12, temperature=0)
    )
    c = want[0].completions[0]
    assert r.choices[0].text == c.text
    assert r.choices[0].finish_reason == c.finish_reason
    assert r.usage.prompt_tokens == 1 + len(tok.encode("the quick"))
    assert r.usage.completion_tokens == len(c.token_ids) + (c.finish_reason == "stop")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_length_and_stop(client):
    r = client.completions.create(model="tiny", prompt="fox", max_tokens=20, temperature=0)
    text = r.choices[0].text
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 20
    assert len(text) >= 3
    stop = text[1:3]
    r2 = client.completions.create(model="tiny", prompt="fox", max_tokens=20, temperature=0, stop=[stop])
    assert r2.choices[0].finish_reason == "stop"
    assert r2.choices[0].text == text[: text.index(stop)]


def test_chat_and_stream_agree(client):
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello fox"}]
    r = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=15, temperature=0)
    assert r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant"
    chunks = list(client.chat.completions.create(model="tiny", messages=msgs, max_tokens=15, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))  # fmt: skip
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [r.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens
    assert {c.id for c in chunks} == {chunks[0].id}


def test_n_and_seed_reproducible(client):
    kw = dict(
        model="tiny", messages=[{"role": "user", "content": "abc"}], max_tokens=10, temperature=1.0, n=3
    )
    a = client.chat.completions.create(seed=7, **kw)
    b = client.chat.completions.create(seed=7, **kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1  # the n samples differ (seed + i)
    assert a.usage.completion_tokens == b.usage.completion_tokens > 0


def test_logprobs(client):
    r = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}], max_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=3)  # fmt: skip
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        assert len(t.top_logprobs) == 3
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-4)  # greedy: the best one
    c = client.completions.create(model="tiny", prompt="ab", max_tokens=4, temperature=0, logprobs=2)
    assert len(c.choices[0].logprobs.tokens) == c.usage.completion_tokens
    assert all(len(d) <= 2 for d in c.choices[0].logprobs.top_logprobs)


def test_penalties_and_user_accepted(client):
    r = client.completions.create(model="tiny", prompt="aaa", max_tokens=8, temperature=0,
                                  frequency_penalty=2.0, presence_penalty=1.0, user="u1")  # fmt: skip
    assert r.usage.completion_tokens >= 1


def test_embeddings_base64_default(client, server):
    import httpx
    from serve_helpers import KEY

    # The client asks for base64 by default and decodes it after parsing; its strict validation
    # checks the raw base64 string against list[float] first, which fails against any server
    # (OpenAI's included), so this one call goes through a non-strict client.
    loose = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
    r = loose.embeddings.create(model="tiny", input=["the fox", "lazy dog"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 32
    raw = httpx.post(server.url + "/v1/embeddings", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "tiny", "input": "the fox", "encoding_format": "base64"})  # fmt: skip
    b64 = raw.json()["data"][0]["embedding"]
    vec = np.frombuffer(base64.b64decode(b64), dtype=np.float32)
    assert np.allclose(vec, r.data[0].embedding, atol=1e-6)
    f = client.embeddings.create(model="tiny", input="the fox", encoding_format="float")
    assert np.allclose(f.data[0].embedding, vec, atol=1e-6)
    assert r.usage.prompt_tokens == 2 + len("the fox") + len("lazy dog")


def test_error_classes(client, server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope", prompt="a")
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt="a", extra_body={"best_of": 2})
    assert "best_of" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="tiny", prompt=TEXT * 3)
    assert e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="a", max_tokens=100000)


def test_metrics_and_health(client, server):
    import httpx

    client.completions.create(model="tiny", prompt="ab", max_tokens=3, temperature=0)
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    text = httpx.get(server.url + "/metrics").text
    for name in ("fornalha_requests_total", "fornalha_completion_tokens_total", "fornalha_queue_depth",
                 "fornalha_running_batch_size", "fornalha_time_to_first_token_seconds_bucket",
                 "fornalha_inter_token_latency_seconds_bucket", "fornalha_request_latency_seconds_bucket"):  # fmt: skip
        assert name in text
    assert 'fornalha_requests_total{endpoint="/v1/completions",status="200"}' in text
