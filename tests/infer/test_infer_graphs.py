"""CUDA graphs for the decode step (fornalha.infer.graphs).

On a CPU the recorded graphs cannot exist, but everything around them can be checked: the static
step they record (whole cache length, masked, fixed buffers) gives the plain decode step's logits
and cache writes, the engine's buckets carry idle rows without touching live ones, and prefix
caching survives them. With a GPU the last test records real graphs and replays them.
"""

from __future__ import annotations

import pytest
import torch
from infer_helpers import random_model

from fornalha.errors import ConfigError
from fornalha.infer import Engine, SamplingParams
from fornalha.infer.decode import Decoder
from fornalha.infer.graphs import DecodeGraphs, batch_buckets
from fornalha.model.gpt import KVCache

GREEDY = SamplingParams(temperature=0.0, max_new_tokens=12)
PROMPTS = ["To be, or not", "A", "The quick brown fox jumps over", "olá, ação", "Hm.", "zz top"]


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(16) == [1, 2, 4, 8, 16]
    assert batch_buckets(6) == [1, 2, 4, 6]


@pytest.mark.parametrize("extra", [{}, {"qk_norm": True, "logit_softcap": 15.0}], ids=["llama", "modded"])
def test_static_step_matches_the_decode_step(extra):
    """Rows at different positions, a batch of 3 in the bucket of 4: the same logits and the same
    keys/values in the live rows as `Decoder` over exactly the rows and positions it needs."""
    model = random_model(**extra)
    torch.manual_seed(1)
    caches = [KVCache.allocate(model.config, 4, 32) for _ in range(2)]
    prompt = torch.randint(7, 263, (4, 6))
    n_new = torch.tensor([6, 2, 5, 0])
    with torch.no_grad():
        for c in caches:
            model(prompt, kv_cache=c, n_new=n_new)
        plain, graphs = Decoder(model, caches[0]), DecodeGraphs(Decoder(model, caches[1]), capture=False)
        for _ in range(5):
            tok = torch.randint(7, 263, (4,))
            pos = caches[0].pos.clone()
            want = plain(tok, pos, 3, int(pos[:3].max()) + 1)
            got = graphs(tok, pos, 3)
            assert got.shape == want.shape == (3, model.config.vocab_size)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
            for c in caches:
                c.pos[:3] += 1
    for k in range(3):  # every live row holds the same keys/values up to its position
        n = int(caches[0].pos[k])
        torch.testing.assert_close(caches[1].k[:, k, :, :n], caches[0].k[:, k, :, :n])
        torch.testing.assert_close(caches[1].v[:, k, :, :n], caches[0].v[:, k, :, :n])


def graphed(engine: Engine) -> Engine:
    """The engine with its decode step run through `DecodeGraphs` as on a GPU, without recording."""
    engine.graphs = DecodeGraphs(engine.decoder, capture=False)
    return engine


def test_engine_with_graph_buckets_matches_the_eager_engine(tok):
    """Continuous batching through the bucketed static step: six requests of different lengths
    joining at different steps into 8 slots (batches of 1..6 rows, replayed as 1, 2, 4, 8) give
    the eager engine's greedy tokens, and seeded sampling the same draws."""
    model = random_model()
    kw = dict(max_batch_size=8, decode_weights=None, kv_cache=None)
    params = [GREEDY.with_(max_new_tokens=6 + 3 * i) for i in range(5)]
    params.append(SamplingParams(temperature=1.0, top_p=0.9, seed=5, max_new_tokens=9, ignore_eos=True))

    def run(engine: Engine) -> list[list[int]]:
        ids = []
        for prompt, p in zip(PROMPTS, params):
            ids.append(engine.add_request(prompt, p))
            engine.step()
        while engine.has_unfinished():
            engine.step()
        return [engine.pop_result(i).token_ids for i in ids]

    want = run(Engine(model, tok, **kw))
    got = run(graphed(Engine(model, tok, **kw)))
    assert got == want
    assert sum(len(t) for t in got) > 20  # the batches really ran for a while


def test_prefix_cache_survives_graph_buckets(tok):
    """A free slot inside a replayed bucket is written at position 0, so the prefix it holds must
    be forgotten. Three requests run in slots 0-2 (a bucket of 4) while slot 3, freed at once,
    holds a system prompt; a later request with that system prompt must not reuse the overwritten
    keys/values: it gets the eager engine's tokens (which never touches slot 3)."""
    model = random_model()
    kw = dict(max_batch_size=8, decode_weights=None, kv_cache=None, prefix_caching=True, prefix_min_tokens=2)
    long = GREEDY.with_(max_new_tokens=10, ignore_eos=True)
    system = "You are a helpful assistant. "

    def run(engine: Engine) -> list[int]:
        for prompt in PROMPTS[:3]:
            engine.add_request(prompt, long)
        engine.add_request(system + "Hi", GREEDY.with_(max_new_tokens=1, ignore_eos=True))
        for _ in range(3):
            engine.step()
        later = engine.add_request(system + "Bye", long)
        while engine.has_unfinished():
            engine.step()
        return engine.pop_result(later).token_ids

    eager = Engine(model, tok, **kw)
    want = run(eager)
    assert eager.prefix_hit_tokens > 0  # without a bucket, slot 3's prefix is reused
    engine = graphed(Engine(model, tok, **kw))
    assert run(engine) == want


def test_cuda_graphs_need_cuda(model, tok):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the error is for machines without it")
    with pytest.raises(ConfigError, match="CUDA device"):
        Engine(model, tok, cuda_graphs=True)
    with pytest.raises(ValueError, match="CUDA device"):
        DecodeGraphs(Engine(model, tok, kv_cache=None).decoder)
    assert Engine(model, tok).graphs is None  # off by default on a CPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="records CUDA graphs: needs a CUDA device")
def test_recorded_graphs_match_eager_on_cuda(tok):
    """On a GPU: the engine records its graphs by default, and its greedy tokens under continuous
    batching equal the eager engine's (bf16, as `fornalha serve` runs there)."""
    kw = dict(max_batch_size=8, device="cuda", dtype=torch.bfloat16)
    eager = Engine(random_model(), tok, cuda_graphs=False, **kw)
    engine = Engine(random_model(), tok, **kw)
    assert engine.graphs is not None and sorted(engine.graphs.graphs) == [1, 2, 4, 8]
    out = [e.generate(PROMPTS, GREEDY) for e in (eager, engine)]
    assert [r.completions[0].token_ids for r in out[0]] == [r.completions[0].token_ids for r in out[1]]
