"""The float16 decode-attention kernel: against its PyTorch reference, row independence, bad input,
the engine's choice of KV cache, and the fallback when the kernel cannot be built.

The kernel is compiled on first use (~25 s, once per machine). It must build wherever these tests
run (Linux with a C++ compiler): a test here fails rather than skips when it does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from infer_helpers import decode_steps, random_model
from test_infer_engine import GREEDY, PROMPTS

import fornalha.infer.engine as engine_module
from fornalha.errors import ConfigError
from fornalha.infer import Engine
from fornalha.infer.decode import Decoder
from fornalha.infer.kernels import add_rms_norm_kernel, decode_attention_kernel, decode_attention_reference
from fornalha.model.gpt import KVCache


@pytest.fixture(scope="module")
def kernel():
    op = decode_attention_kernel()
    from fornalha.infer import kernels

    assert op is not None, f"the decode-attention kernel did not build: {kernels.unavailable_reason}"
    return op


def _inputs(B: int, H: int, G: int, D: int, S: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, G, D, generator=g)
    k = torch.randn(B + 2, H, S, D, generator=g).half()  # more cache rows than the batch uses
    v = torch.randn(B + 2, H, S, D, generator=g).half()
    lengths = torch.randint(1, S + 1, (B,), generator=g)
    lengths[0] = S  # one row uses the whole cache
    return q, k, v, lengths


@pytest.mark.parametrize(
    "B,H,G,D,S",
    [(4, 6, 1, 64, 40), (3, 2, 3, 16, 17), (2, 4, 2, 32, 9), (2, 2, 1, 40, 33), (1, 1, 4, 128, 5),
     (3, 3, 1, 16, 18), (2, 2, 1, 128, 301)],
    ids=["mha-d64", "gqa-d16", "gqa-d32", "generic-d40", "d128", "mha-d16", "mha-d128-long"],
)  # fmt: skip
def test_kernel_matches_reference(kernel, B, H, G, D, S):
    """Specialised head sizes (16, 32, 64, 128) and the generic path, grouped-query attention,
    rows of different lengths, a cache with more rows than the batch. One query head per key/value
    head (mha) with a head size of whole 16-float registers takes the AVX-512 path where the CPU
    has it (keys read two at a time: odd and even lengths)."""
    q, k, v, lengths = _inputs(B, H, G, D, S)
    got = kernel(q, k, v, lengths, D**-0.5)
    want = decode_attention_reference(q, k, v, lengths, D**-0.5)
    assert got.shape == q.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)


def test_kernel_rows_are_independent(kernel):
    """A row's output is bit-identical whether it runs alone or in a batch (no shared reductions),
    whatever the thread count."""
    q, k, v, lengths = _inputs(5, 4, 2, 64, 30, seed=1)
    batched = kernel(q, k, v, lengths, 0.125)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        for b in range(5):
            alone = kernel(q[b : b + 1].contiguous(), k[b : b + 1], v[b : b + 1], lengths[b : b + 1], 0.125)
            assert torch.equal(alone[0], batched[b])
    finally:
        torch.set_num_threads(before)


def test_kernel_rejects_bad_input(kernel):
    q, k, v, lengths = _inputs(2, 2, 1, 16, 8)
    with pytest.raises(RuntimeError, match="float16"):
        kernel(q, k.float(), v.float(), lengths, 0.25)
    with pytest.raises(RuntimeError, match="1..S"):
        kernel(q, k, v, torch.tensor([3, 9]), 0.25)
    with pytest.raises(RuntimeError, match="one entry per row"):
        kernel(q, k, v, torch.tensor([3]), 0.25)
    with pytest.raises(RuntimeError, match="contiguous"):
        kernel(q.permute(1, 0, 2, 3), k, v, lengths, 0.25)  # B = H = 2: same shape, other strides


def test_decoder_with_fp16_cache_matches_model_forward(kernel):
    """The decode step over a float16 cache (kernel) follows GPT.forward's float32 logits closely,
    rows at different positions (per-row lengths) and at the same one."""
    model = random_model(seed=4)
    torch.manual_seed(1)
    ref = KVCache.allocate(model.config, 3, 32)
    cache = KVCache.allocate(model.config, 3, 32, dtype=torch.float16)
    prompt, n_new = torch.randint(7, 263, (3, 6)), torch.tensor([6, 3, 5])
    with torch.no_grad():
        model(prompt, kv_cache=ref, n_new=n_new)
        dec = Decoder(model, cache)
        assert dec.kernel is not None
        dec.prefill(prompt, n_new.tolist(), [0, 1, 2])
        cache.pos[:] = n_new
        for got, want in decode_steps(model, dec, cache, ref):
            # float16 keeps ~3 significant digits of each key/value: logits move by ~1e-4 of their range
            assert (got - want).abs().max() < 1e-3 * want.abs().max()
            assert torch.equal(got.argmax(-1), want.argmax(-1))
        # Without the kernel the same float16 cache goes through SDPA (converted): same logits.
        plain = Decoder(model, cache)
        plain.kernel = plain.step_kernel = None
        tok, pos = torch.randint(7, 263, (3,)), cache.pos.clone()
        a, b = dec(tok, pos, 3, int(pos.max()) + 1), plain(tok, pos, 3, int(pos.max()) + 1)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_engine_defaults_to_fp16_cache_on_cpu(kernel, model, tok):
    eng = Engine(model, tok, max_batch_size=2)
    assert eng.kv_cache == "fp16" and eng.cache.k.dtype == torch.float16 and eng.decoder.kernel is not None
    # Not for the naive loop or the compiled step, and never for a caller who says None.
    assert Engine(model, tok, use_cache=False).cache.k.dtype == torch.float32
    assert Engine(model, tok, compile=True).kv_cache is None
    assert Engine(model, tok, kv_cache=None).cache.k.dtype == torch.float32
    with pytest.raises(ConfigError, match="kv_cache"):
        Engine(model, tok, kv_cache="int4")
    with pytest.raises(ConfigError, match="compiled"):
        Engine(model, tok, kv_cache="fp16", compile=True)


def test_engine_falls_back_to_float32_cache_without_the_kernel(model, tok, monkeypatch):
    """Where the kernel cannot be built, "auto" keeps a float32 cache and the outputs of the
    float32 engine; an explicit "fp16" still works (converted for SDPA)."""
    monkeypatch.setattr(engine_module, "decode_attention_kernel", lambda: None)
    params = GREEDY.with_(max_new_tokens=12)
    fallback = Engine(model, tok, max_batch_size=3, decode_weights=None)
    assert fallback.kv_cache is None and fallback.cache.k.dtype == torch.float32
    exact = Engine(model, tok, max_batch_size=3, decode_weights=None, kv_cache=None)
    for a, b in zip(fallback.generate(PROMPTS[:3], params), exact.generate(PROMPTS[:3], params)):
        assert a.completions[0].token_ids == b.completions[0].token_ids
    explicit = Engine(model, tok, max_batch_size=3, decode_weights=None, kv_cache="fp16")
    assert explicit.cache.k.dtype == torch.float16
    assert len(explicit.generate(PROMPTS[:1], params)[0].completions[0].token_ids) == 12


def test_kernel_switch_off(monkeypatch):
    """FORNALHA_NO_KERNELS=1 turns the kernel off, with the reason recorded."""
    from fornalha.infer import kernels

    monkeypatch.setenv("FORNALHA_NO_KERNELS", "1")
    assert kernels.decode_attention_kernel() is None
    assert "FORNALHA_NO_KERNELS" in kernels.unavailable_reason
    monkeypatch.setattr(kernels, "unavailable_reason", None)


def test_build_failure_and_stale_lock(monkeypatch, tmp_path, capsys):
    """A build that fails (no compiler, …) gives None, the reason, and one line on stderr. torch's
    own `lock` file left by a killed build is removed (else every later build waits on it forever,
    which once hung CI); while another live process builds (it holds fornalha's flock) we wait."""
    import fcntl
    import os
    import threading

    from torch.utils import cpp_extension

    from fornalha.infer import kernels

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    build = kernels._built_kernel.__wrapped__

    def failing_load(**kw):
        raise RuntimeError("Error building extension\nc++: command not found")

    monkeypatch.setattr(cpp_extension, "load", failing_load)
    assert build() is None
    assert "command not found" in kernels.unavailable_reason
    err = capsys.readouterr().err
    assert "compiling" in err and "unavailable" in err and "float32 KV cache" in err

    build_dir = Path(
        cpp_extension._get_build_directory(f"fornalha_decode_attention_{kernels._cpu_tag()}", False)
    )
    lock = build_dir / "lock"
    lock.touch()  # just written, as a build killed a second ago leaves it
    assert build() is None and not lock.exists()
    assert "left by a killed build" in capsys.readouterr().err

    # Another builder holds the flock (its own open file: flock locks are per open file, so this
    # conflicts even inside one process): we wait for it and leave its lock file alone meanwhile.
    fd = os.open(build_dir / ".fornalha-build.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    lock.touch()
    waiter = threading.Thread(target=build)
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive() and lock.exists()
    lock.unlink()  # the other build finishes, as torch does
    os.close(fd)
    waiter.join(10)
    assert not waiter.is_alive()
    monkeypatch.setattr(kernels, "unavailable_reason", None)


def test_a_slow_kernel_load_says_it_is_compiling(monkeypatch, capsys):
    """Whatever makes the load slow (first build, or a rebuild over an existing .so), the user is told."""
    import time

    from torch.utils import cpp_extension

    import fornalha.infer.kernels as kernels

    class Built:
        decode_attention = staticmethod(lambda *a: None)

    monkeypatch.setattr(cpp_extension, "load", lambda **kw: (time.sleep(1.0), Built)[1])
    monkeypatch.delenv("FORNALHA_NO_KERNELS", raising=False)
    kernels._built_kernel.cache_clear()
    try:
        assert kernels.decode_attention_kernel() is Built.decode_attention
    finally:
        kernels._built_kernel.cache_clear()
    assert "compiling the float16 decode-attention kernel" in capsys.readouterr().err


def test_batched_prefill_into_scattered_rows_of_an_fp16_cache(kernel):
    """Several prompts admitted in one step go to whichever rows are free — not always contiguous
    ones. With a float16 cache that path must cast the float32 keys/values (a server under load
    crashed there): same logits and cache contents as contiguous rows."""
    model = random_model(seed=5)
    prompt, lengths = torch.randint(7, 263, (2, 6)), [6, 4]
    with torch.no_grad():
        a = KVCache.allocate(model.config, 3, 16, dtype=torch.float16)
        b = KVCache.allocate(model.config, 3, 16, dtype=torch.float16)
        together = Decoder(model, a).prefill(prompt, lengths, [0, 1])
        scattered = Decoder(model, b).prefill(prompt, lengths, [2, 0])
    torch.testing.assert_close(together, scattered)
    assert torch.equal(a.k[:, 0], b.k[:, 2]) and torch.equal(a.v[:, 1], b.v[:, 0])


def test_engine_with_fp16_cache_admits_requests_into_freed_rows(kernel, model, tok):
    """Continuous batching over a float16 cache: requests that arrive while others run are
    prefilled together into the rows finished ones freed, and each gives the tokens it gives alone."""
    short, long = (
        GREEDY.with_(max_new_tokens=8, ignore_eos=True),
        GREEDY.with_(max_new_tokens=20, ignore_eos=True),
    )
    alone = {
        p: Engine(model, tok, max_batch_size=1, kv_cache="fp16").generate([p], short)[0] for p in PROMPTS[:2]
    }
    eng = Engine(model, tok, max_batch_size=4, kv_cache="fp16")
    assert eng.cache.k.dtype == torch.float16
    for i, p in enumerate(PROMPTS[:4]):  # rows 1 and 3 finish first: two free rows, not contiguous
        eng.add_request(p, short if i % 2 else long)
    done: set[int] = set()
    while not done:
        done |= {ev.request_id for ev in eng.step() if ev.finished}
    assert eng.num_running == 2
    late = {eng.add_request(p, short): p for p in PROMPTS[:2]}
    eng.step()  # both admitted in this step: one batched prefill into rows 1 and 3
    assert eng.num_running == 4
    while eng.has_unfinished():
        eng.step()
    for rid, p in late.items():
        assert eng.pop_result(rid).token_ids == alone[p].completions[0].token_ids


@pytest.mark.parametrize(
    "extra",
    [{}, {"qk_norm": True, "n_kv_head": 2}, {"qk_norm": True, "n_head": 2, "n_kv_head": 2}],
    ids=["mha", "qk-norm-gqa", "qk-norm-mha"],
)
def test_fused_decode_step_matches_the_python_loop(kernel, extra):
    """`decode_attention_step` (QK-norm, rotary, the cache write and attention in one C++ call per
    layer), alone and with `add_rms_norm` (each residual add and the norm after it in one call),
    gives the logits and writes the cache entries of the Python loop it replaces, rows at
    different positions, step after step."""
    model = random_model(seed=5, **extra)
    torch.manual_seed(2)
    caches = [KVCache.allocate(model.config, 4, 32, dtype=torch.float16) for _ in range(3)]
    fused, step_only, loop = (Decoder(model, c) for c in caches)
    assert fused.step_kernel is not None and fused.add_norm is not None
    step_only.add_norm = None
    loop.step_kernel = None
    prompt, n_new = torch.randint(7, 263, (4, 7)), [7, 2, 5, 4]
    with torch.no_grad():
        for dec, cache in zip((fused, step_only, loop), caches):
            dec.prefill(prompt, n_new, [0, 1, 2, 3])
            cache.pos[:] = torch.tensor(n_new)
        for _ in range(5):
            tok = torch.randint(7, 263, (4,))
            pos = caches[0].pos.clone()
            want = loop(tok, pos, 4, int(pos.max()) + 1)
            for dec in (fused, step_only):
                got = dec(tok, pos, 4, int(pos.max()) + 1)
                # float rounding only (the norms sum in another order; a key may round to the
                # neighbouring float16): logits of magnitude ~10 agree to ~1e-5
                torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
                assert torch.equal(got.argmax(-1), want.argmax(-1))
            for c in caches:
                c.pos += 1
        for c in caches[:2]:
            torch.testing.assert_close(c.k.float(), caches[2].k.float(), atol=2e-3, rtol=1e-3)
            torch.testing.assert_close(c.v.float(), caches[2].v.float(), atol=2e-3, rtol=1e-3)


def test_add_rms_norm_kernel():
    """x += delta in place, then RMSNorm(x) · w, as PyTorch computes it; an empty delta only normalizes."""
    add_norm = add_rms_norm_kernel()
    assert add_norm is not None
    torch.manual_seed(0)
    x, delta, w = torch.randn(5, 48), torch.randn(5, 48), torch.rand(48) + 0.5
    want_x = x + delta
    want = F.rms_norm(want_x, (48,), w, 1e-5)
    got = add_norm(x, delta, w, 1e-5)
    torch.testing.assert_close(x, want_x)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    before = x.clone()
    torch.testing.assert_close(add_norm(x, torch.empty(0), w, 1e-5), F.rms_norm(x, (48,), w, 1e-5))
    assert torch.equal(x, before)
    with pytest.raises(RuntimeError, match="delta must match x"):
        add_norm(x, torch.randn(5, 47), w, 1e-5)
