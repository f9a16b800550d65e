"""The engine against the plain model: cache vs no cache, batched vs one by one, stops, seeds, streaming."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import decode_steps

from fornalha.errors import FornalhaError
from fornalha.infer import Engine, SamplingParams
from fornalha.infer.decode import Decoder
from fornalha.model.gpt import KVCache

PROMPTS = ["hi", "a somewhat longer prompt", "x", "héllo wörld", "the quick brown fox"]
GREEDY = SamplingParams(temperature=0, max_new_tokens=24, ignore_eos=True)


def reference_greedy(model, ids: list[int], n: int) -> list[int]:
    """The plainest possible loop: the whole sequence through GPT.forward, arg-max, repeat."""
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([seq]))
            seq.append(int(logits[0, -1].argmax()))
    return seq[len(ids) :]


def test_decoder_matches_model_forward(model):
    """The fast decode step gives GPT.forward's logits, rows at different positions."""
    torch.manual_seed(1)
    cache_a = KVCache.allocate(model.config, 3, 32)
    cache_b = KVCache.allocate(model.config, 3, 32)
    prompt = torch.randint(7, 263, (3, 6))
    n_new = torch.tensor([6, 3, 5])
    with torch.no_grad():
        model(prompt, kv_cache=cache_a, n_new=n_new)
        model(prompt, kv_cache=cache_b, n_new=n_new)
        dec = Decoder(model, cache_b)
        for got, want in decode_steps(model, dec, cache_b, cache_a):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        # the same-position fast path
        cache_b.pos[:] = cache_a.pos[:] = 12
        tok = torch.randint(7, 263, (3,))
        want, _ = model(tok[:, None], kv_cache=cache_a)
        got = dec(tok, cache_b.pos, 3, 13, same_pos=12)
        torch.testing.assert_close(got, want[:, 0].float(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "extra", [{}, {"qk_norm": True, "logit_softcap": 15.0, "mlp": "relu2"}], ids=["llama", "modded"]
)
def test_prefill_matches_model_forward(extra):
    """Decoder.prefill (causal attention, keys/values written straight into the chosen cache rows)
    gives GPT.forward's last-token logits and the same cache contents, for right-padded prompts of
    different lengths going to non-contiguous rows."""
    from infer_helpers import random_model

    model = random_model(seed=3, **extra)
    torch.manual_seed(2)
    lengths, slots = [7, 3, 5], [3, 0, 2]
    prompts = torch.randint(7, 263, (3, 7))
    ref = KVCache.allocate(model.config, 3, 16)
    cache = KVCache.allocate(model.config, 4, 16)
    with torch.no_grad():
        want, _ = model(prompts, kv_cache=ref, n_new=torch.tensor(lengths))
        got = Decoder(model, cache).prefill(prompts, lengths, slots)
    for i, (n, slot) in enumerate(zip(lengths, slots)):
        torch.testing.assert_close(got[i], want[i, n - 1].float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.k[:, slot, :, :n], ref.k[:, i, :, :n], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(cache.v[:, slot, :, :n], ref.v[:, i, :, :n], atol=1e-5, rtol=1e-5)
    assert cache.k[:, 1].abs().sum() == 0  # a row nobody was given stays untouched


@pytest.mark.parametrize("kv", [torch.float32, torch.float16], ids=["f32-cache", "f16-cache"])
def test_prefill_from_batched_matches_model_forward(kv):
    """Decoder.prefill_from runs the rest of several prompts at once, each after its own cached
    prefix (different prefix and suffix lengths, rows out of order, GQA): the last-token logits
    of GPT.forward on the whole prompt, and the cache holds the same keys/values up to each
    prompt's end — and nothing past it (padding is never written)."""
    from infer_helpers import random_model

    model = random_model(seed=4, n_kv_head=2, qk_norm=True)
    torch.manual_seed(5)
    prompts = [torch.randint(7, 263, (n,)).tolist() for n in (9, 4, 12)]
    starts, slots = [5, 1, 3], [2, 0, 3]
    S = 16
    cache = KVCache.allocate(model.config, 4, S, dtype=kv)
    dec = Decoder(model, cache)
    with torch.no_grad():
        for p, start, slot in zip(prompts, starts, slots):  # the cached prefixes, one by one
            dec.prefill(torch.tensor([p[:start]]), [start], [slot])
        got = dec.prefill_from([p[st:] for p, st in zip(prompts, starts)], slots, starts)
        for i, (p, slot) in enumerate(zip(prompts, slots)):
            ref = KVCache.allocate(model.config, 1, S)
            want, _ = model(torch.tensor([p]), kv_cache=ref)
            tol = 1e-5 if kv == torch.float32 else 2e-3
            torch.testing.assert_close(got[i], want[0, -1].float(), atol=tol, rtol=tol)
            n = len(p)
            torch.testing.assert_close(
                cache.k[:, slot, :, :n].float(), ref.k[:, 0, :, :n], atol=tol, rtol=tol
            )
            torch.testing.assert_close(
                cache.v[:, slot, :, :n].float(), ref.v[:, 0, :, :n], atol=tol, rtol=tol
            )
            assert cache.k[:, slot, :, n:].abs().sum() == 0  # nothing written past the prompt
    assert cache.k[:, 1].abs().sum() == 0  # a row nobody was given stays untouched


def test_greedy_with_cache_equals_without_cache(model, tok):
    prompts, params = PROMPTS[:3], GREEDY.with_(max_new_tokens=16)
    # The model's own float32 weights and a float32 cache: caching must not change a single
    # logit's arg-max (the default fp16 decode weights and fp16 cache are tested against float32
    # in test_infer_quantize.py and test_infer_kernels.py).
    cached = Engine(model, tok, max_batch_size=4, decode_weights=None, kv_cache=None).generate(
        prompts, params
    )
    plain = Engine(model, tok, max_batch_size=4, use_cache=False).generate(prompts, params)
    for a, b, p in zip(cached, plain, prompts):
        assert a.completions[0].token_ids == b.completions[0].token_ids
        assert a.completions[0].token_ids == reference_greedy(model, a.prompt_token_ids, 16), p
        assert len(a.completions[0].token_ids) == 16


@pytest.mark.parametrize(
    "params",
    [
        GREEDY,
        SamplingParams(temperature=0.9, top_k=40, top_p=0.95, max_new_tokens=24, seed=7, ignore_eos=True),
    ],
    ids=["greedy", "seeded-sampling"],
)
def test_batched_equals_one_by_one(model, tok, params):
    """Prompts of different lengths, more prompts than slots (a queue), each equal to its solo run."""
    batched = Engine(model, tok, max_batch_size=3).generate(PROMPTS, params)
    solo = Engine(model, tok, max_batch_size=1)
    for res, p in zip(batched, PROMPTS):
        assert res.completions[0].token_ids == solo.generate([p], params)[0].completions[0].token_ids


def test_continuous_batching_requests_join_midway(model, tok):
    """Requests added while others run, with mixed parameters, finish as if they ran alone."""
    params = [
        GREEDY.with_(max_new_tokens=10),
        SamplingParams(temperature=1.2, min_p=0.05, max_new_tokens=17, seed=3, ignore_eos=True),
        SamplingParams(
            temperature=0.7, repetition_penalty=1.3, presence_penalty=0.5, max_new_tokens=9, seed=11
        ),
        GREEDY.with_(max_new_tokens=13, frequency_penalty=0.7),
    ]
    engine = Engine(model, tok, max_batch_size=2)
    ids = [engine.add_request(PROMPTS[0], params[0]), engine.add_request(PROMPTS[1], params[1])]
    for _ in range(4):
        engine.step()
    ids.append(engine.add_request(PROMPTS[2], params[2]))
    engine.step()
    ids.append(engine.add_request(PROMPTS[3], params[3]))
    while engine.has_unfinished():
        engine.step()
    solo = Engine(model, tok, max_batch_size=1)
    for rid, prompt, p in zip(ids, PROMPTS, params):
        got = engine.pop_result(rid)
        want = solo.generate([prompt], p)[0].completions[0]
        assert got.token_ids == want.token_ids
        assert got.text == want.text


def test_seeds_reproduce_and_differ(model, tok):
    engine = Engine(model, tok, max_batch_size=4)
    p = SamplingParams(temperature=1.0, max_new_tokens=30, seed=123, ignore_eos=True, n=3)
    a = engine.generate(["hello"], p)[0]
    b = engine.generate(["hello"], p)[0]
    assert [c.token_ids for c in a.completions] == [c.token_ids for c in b.completions]
    assert len({tuple(c.token_ids) for c in a.completions}) == 3  # n samples use seeds 123, 124, 125
    c = engine.generate(["hello"], p.with_(seed=999, n=1))[0]
    assert c.completions[0].token_ids != a.completions[0].token_ids


def test_stops_on_eos_stop_string_and_max_tokens(model, tok):
    engine = Engine(model, tok, max_batch_size=2)
    free = engine.generate(["hello"], GREEDY)[0].completions[0]
    assert free.finish_reason == "length" and len(free.token_ids) == 24

    # an end-of-sequence token: pretend the 6th greedy token is one
    stop_tok = free.token_ids[5]
    first = free.token_ids.index(stop_tok)
    res = engine.generate(["hello"], GREEDY.with_(stop_token_ids=[stop_tok]))[0].completions[0]
    assert res.finish_reason == "stop" and res.token_ids == free.token_ids[:first]

    # a stop string: cut before it, never shown
    text = free.text
    stop = text[5:8]
    res = engine.generate(["hello"], GREEDY.with_(stop=[stop]))[0].completions[0]
    assert res.finish_reason == "stop" and res.text == text[: text.index(stop)]
    assert "".join(engine.stream("hello", GREEDY.with_(stop=[stop]))) == res.text

    res = engine.generate(["hello"], GREEDY.with_(max_new_tokens=5))[0].completions[0]
    assert res.finish_reason == "length" and len(res.token_ids) == 5


def test_default_stop_tokens_and_context_limit(model, tok):
    free = Engine(model, tok, max_batch_size=1).generate(["hello"], GREEDY)[0].completions[0]
    # The engine stops at the tokenizer's end-of-text and <|end|> unless ignore_eos: give it a
    # tokenizer whose eos is the 4th greedy token.
    tok.eos_id = free.token_ids[3]
    res = Engine(model, tok, max_batch_size=1).generate(["hello"], GREEDY.with_(ignore_eos=False))[0]
    assert res.completions[0].finish_reason == "stop"
    assert res.completions[0].token_ids == free.token_ids[: free.token_ids.index(tok.eos_id)]
    # The context limit: a 6-token prompt in a 16-token context; the last token is sampled from
    # position 15's logits, so prompt + output is 17 tokens, finish reason "length".
    engine = Engine(model, tok, max_batch_size=1, max_seq_len=16)
    res = engine.generate(["hello"], GREEDY.with_(max_new_tokens=50))[0]
    assert res.completions[0].finish_reason == "length"
    assert len(res.prompt_token_ids) + len(res.completions[0].token_ids) == 17
    assert res.completions[0].token_ids == reference_greedy(model, res.prompt_token_ids, 11)
    with pytest.raises(FornalhaError, match="does not fit"):
        engine.generate(["x" * 20], GREEDY)


def test_stream_equals_final_text_with_multibyte(model, tok):
    """Byte tokens split every non-ASCII character; the stream never shows half of one."""
    engine = Engine(model, tok, max_batch_size=2)
    for seed in range(4):
        p = SamplingParams(temperature=1.5, max_new_tokens=40, seed=seed, ignore_eos=True)
        pieces = list(engine.stream("héllo 😀", p))
        final = engine.generate(["héllo 😀"], p)[0].completions[0]
        text_ids = [t for t in final.token_ids if t >= 7]  # special tokens are not text
        assert "".join(pieces) == final.text == tok.decode(text_ids)


def test_special_tokens_are_left_out_of_the_text(model, tok):
    engine = Engine(model, tok, max_batch_size=1)
    prompt = [0, *tok.encode("hi")]
    params = GREEDY.with_(max_new_tokens=40)
    free = engine.generate([prompt], params)[0].completions[0]
    # make some generated token "special" by giving the tokenizer that id as a special token
    tok.special_ids = {**tok.special_ids, "<|x|>": free.token_ids[2]}
    engine = Engine(model, tok, max_batch_size=1)
    skipped = engine.generate([prompt], params)[0].completions[0]
    kept = engine.generate([prompt], params.with_(skip_special_tokens=False))[0].completions[0]
    assert skipped.token_ids == kept.token_ids == free.token_ids
    special = set(tok.special_ids.values())
    assert kept.text == tok.decode(free.token_ids)
    assert skipped.text == tok.decode([t for t in free.token_ids if t not in special])
    assert skipped.text != kept.text


def test_logprobs(model, tok):
    engine = Engine(model, tok, max_batch_size=2)
    res = engine.generate(["hello"], GREEDY.with_(max_new_tokens=3, logprobs=3))[0]
    c = res.completions[0]
    assert len(c.logprobs) == 3
    with torch.no_grad():
        logits, _ = model(torch.tensor([res.prompt_token_ids]))
    logp = logits[0, -1].log_softmax(-1)
    first = c.logprobs[0]
    assert first.token_id == c.token_ids[0]
    assert first.logprob == pytest.approx(float(logp[first.token_id]), abs=1e-4)
    assert [t for t, _ in first.top] == logp.topk(3).indices.tolist()
    assert first.top[0][0] == first.token_id  # greedy takes the best one


def test_abort_frees_the_slot(model, tok):
    engine = Engine(model, tok, max_batch_size=1)
    a = engine.add_request("hello", GREEDY)
    b = engine.add_request("world", GREEDY.with_(max_new_tokens=3))
    engine.step()
    assert engine.num_running == 1 and engine.num_waiting == 1
    assert engine.abort(a)
    while engine.has_unfinished():
        engine.step()
    assert len(engine.pop_result(b).token_ids) == 3
    assert engine.pop_result(a).finish_reason == "abort"


def test_compiled_decode_step_matches_eager(model, tok):
    """Engine(compile=True): the static-shape decode step through torch.compile gives the eager
    engine's greedy tokens (rows of different lengths, so the masked path is the one compiled)."""
    params = GREEDY.with_(max_new_tokens=8)
    eager = Engine(model, tok, max_batch_size=2, decode_weights=None, kv_cache=None).generate(
        PROMPTS[:2], params
    )
    compiled = Engine(model, tok, max_batch_size=2, compile=True).generate(PROMPTS[:2], params)
    for a, b in zip(eager, compiled):
        assert a.completions[0].token_ids == b.completions[0].token_ids


def test_step_admits_first_and_hands_first_tokens_over_early(model, tok):
    """A request admitted while another runs gets its first token (prefill) and its second (the
    decode of the same step) in one step; `on_prefill` receives the first tokens before the decode
    runs, and they are not repeated in the returned events."""
    engine = Engine(model, tok, max_batch_size=2)
    params = GREEDY.with_(max_new_tokens=6, ignore_eos=True)
    a = engine.add_request(PROMPTS[0], params)
    engine.step()
    b = engine.add_request(PROMPTS[1], params)
    early: list = []
    decoded_before = {"n": 0}

    def on_prefill(events):
        decoded_before["n"] = len(engine._slots[0].out_ids)  # a's tokens when b's first one is out
        early.extend(events)

    events = engine.step(on_prefill)
    assert [(e.request_id, len(early)) for e in early] == [(b, 1)]
    assert decoded_before["n"] == 2  # a had not decoded in this step yet
    assert sorted(e.request_id for e in events) == [a, b]  # the decode: one token each
    while engine.has_unfinished():
        engine.step()
    alone = Engine(model, tok, max_batch_size=1).generate([PROMPTS[1]], params)[0].completions[0]
    assert engine.pop_result(b).token_ids == alone.token_ids
    assert len(engine.pop_result(a).token_ids) == 6
