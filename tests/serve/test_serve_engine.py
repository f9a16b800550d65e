"""The engine under the server: prefix caching changes nothing but the work done; continuous
batching gives every request the tokens it would get alone."""

from __future__ import annotations

import pytest
import torch

from fornalha.checkpoint import load_run
from fornalha.infer import Engine, SamplingParams

SYSTEM = "the quick brown fox jumps over the lazy dog. "


@pytest.fixture(scope="module")
def loaded(run_dir):
    torch.set_num_threads(1)
    model, tok, _ = load_run(run_dir)
    return model, tok


def make(loaded, **kw) -> Engine:
    """The engine as `fornalha serve` builds it: prefix caching on unless a test says otherwise."""
    model, tok = loaded
    kw.setdefault("prefix_caching", True)
    return Engine(model, tok, max_batch_size=4, kv_cache=None, decode_weights=None, **kw)


def test_prefix_cache_reuses_and_matches(loaded):
    greedy = SamplingParams(max_new_tokens=12, temperature=0)
    prompts = [SYSTEM + "abc", SYSTEM + "xyz 12", SYSTEM + "abc de"]
    plain = make(loaded, prefix_caching=False)
    want = [plain.generate([p], greedy)[0].text for p in prompts]
    cached = make(loaded)
    got = [cached.generate([p], greedy)[0].text for p in prompts]  # one after the other: free slot reuse
    assert got == want
    assert cached.prefix_hit_tokens >= 2 * len(SYSTEM)
    assert plain.prefix_hit_tokens == 0
    # a running sequence's prefix is copied into a new slot while it keeps running
    eng = make(loaded)
    long_id = eng.add_request(prompts[0], SamplingParams(max_new_tokens=30, temperature=0))
    eng.step()
    eng.step()
    short_id = eng.add_request(prompts[1], greedy)
    while eng.has_unfinished():
        eng.step()
    assert eng.prefix_hit_tokens >= len(SYSTEM)
    assert eng.pop_result(short_id).text == want[1]
    alone = plain.generate([prompts[0]], SamplingParams(max_new_tokens=30, temperature=0))[0].text
    assert eng.pop_result(long_id).text == alone
    # several prompts admitted in one step, each after its own cached prefix: one batched pass
    eng = make(loaded)
    eng.generate([prompts[0]], greedy)
    hits = eng.prefix_hit_tokens
    ids = [eng.add_request(p, greedy) for p in (prompts[2], prompts[1], SYSTEM + "q")]
    while eng.has_unfinished():
        eng.step()
    assert eng.prefix_hit_tokens - hits >= 3 * len(SYSTEM)
    alone = plain.generate([SYSTEM + "q"], greedy)[0].text
    assert [eng.pop_result(i).text for i in ids] == [want[2], want[1], alone]


def test_a_lone_request_after_a_burst_takes_the_lowest_slot(loaded):
    """After four requests filled the slots, a fifth with the same system prompt runs alone: it
    takes slot 0 (the decode step computes rows 0..highest busy slot, so slot 3 would cost four rows
    a step) and still reuses the prefix cached in another slot, with the tokens it gets alone."""
    greedy = SamplingParams(max_new_tokens=6, temperature=0)
    eng = make(loaded)
    eng.generate([SYSTEM + "a", "zz", "yy", SYSTEM + "bcd"], greedy)  # slot 3 holds SYSTEM + "bcd"…
    eng._held[0] = []  # (slot 0's own copy of the prefix forgotten: only slot 3 holds it)
    hits = eng.prefix_hit_tokens
    rid = eng.add_request(SYSTEM + "bc", greedy)
    eng.step()
    assert eng._slots[0] is not None and eng._slots[0].id == rid
    assert eng.prefix_hit_tokens - hits >= len(SYSTEM)
    while eng.has_unfinished():
        eng.step()
    alone = make(loaded, prefix_caching=False).generate([SYSTEM + "bc"], greedy)[0].text
    assert eng.pop_result(rid).text == alone


def test_continuous_batching_same_tokens_and_late_short_first(loaded):
    plain = make(loaded, prefix_caching=False)
    reqs = [
        ("fox", SamplingParams(max_new_tokens=40, temperature=0)),
        ("lazy dog", SamplingParams(max_new_tokens=7, temperature=0, stop=["zz"])),
        ("é ü", SamplingParams(max_new_tokens=15, temperature=0, frequency_penalty=1.0)),
        ("0123", SamplingParams(max_new_tokens=5, temperature=0.8, seed=3)),
    ]
    alone = [plain.generate([p], sp)[0].text for p, sp in reqs]
    eng = make(loaded)
    finished_order = []
    ids = {eng.add_request(*reqs[0]): 0}
    for step in range(60):
        if step in (2, 5, 6):  # arrive while the first one runs
            k = {2: 1, 5: 2, 6: 3}[step]
            ids[eng.add_request(*reqs[k])] = k
        for ev in eng.step():
            if ev.finished:
                finished_order.append(ids[ev.request_id])
        if not eng.has_unfinished() and step > 6:
            break
    assert [eng.pop_result(r).text for r in ids] == alone
    assert finished_order.index(1) < finished_order.index(0)  # the late short one finished first
    assert eng.num_running == 0
