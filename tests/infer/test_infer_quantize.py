"""Int8 quantization: the rounding bound, the validation-loss cost on a trained tiny model, and decoding."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import ByteTokenizer, tiny_config
from test_infer_engine import reference_greedy

from fornalha.infer import Engine, SamplingParams
from fornalha.infer.decode import decode_loss
from fornalha.infer.quantize import (
    DECODE_WEIGHTS,
    Int8Linear,
    fbgemm_available,
    linear_weight_bytes,
    loss_change,
    quantize_model,
)
from fornalha.model import GPT

#: The stated tolerance: int8 weights may raise the validation loss by at most 1 % (relative).
LOSS_TOLERANCE = 0.01
#: fp16 decode weights (the engine's default on x86 CPUs): at most 0.1 % relative loss change.
FP16_LOSS_TOLERANCE = 0.001

needs_fbgemm = pytest.mark.skipif(not fbgemm_available(), reason="fbgemm kernels (x86 CPU) needed")

TEXT = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, "
    "must be in want of a wife. However little known the feelings or views of such a man may be "
    "on his first entering a neighbourhood, this truth is so well fixed in the minds of the "
    "surrounding families, that he is considered as the rightful property of some one or other "
    "of their daughters. "
)


def batches(data: torch.Tensor, starts: range, T: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.stack([data[s : s + T] for s in starts])
    y = torch.stack([data[s + 1 : s + T + 1] for s in starts])
    return x, y


@pytest.fixture(scope="module")
def trained():
    """A tiny byte-level model trained for 60 steps on one paragraph (train: first 80 %, val: rest)."""
    torch.manual_seed(0)
    tok = ByteTokenizer()
    data = torch.tensor(tok.encode(TEXT * 3))
    model = GPT(tiny_config(n_embd=64, n_head=4, n_kv_head=4, init_std=0.02))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    cut = int(len(data) * 0.8)
    g = torch.Generator().manual_seed(0)
    for _ in range(60):
        starts = torch.randint(0, cut - 33, (16,), generator=g).tolist()
        x, y = batches(data, starts)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    val = [batches(data, range(s, s + 8 * 4, 4)) for s in range(cut, len(data) - 33 - 32, 32)]
    return model, val


def test_int8_rounding_error_is_at_most_half_a_step():
    torch.manual_seed(0)
    lin = torch.nn.Linear(64, 48, bias=False)
    q = Int8Linear.from_linear(lin)
    err = (q.dequantized() - lin.weight).abs()
    assert (err <= q.scale[:, None] / 2 + 1e-7).all()
    x = torch.randn(5, 64)
    torch.testing.assert_close(q(x), x @ q.dequantized().T, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("method", ["int8", "dynamic"])
def test_quantized_validation_loss_within_tolerance(trained, method):
    model, val = trained
    report = loss_change(model, val, method=method)
    assert report["loss"] < 4.0  # it learned something (uniform over 263 tokens would be 5.6)
    assert abs(report["relative"]) < LOSS_TOLERANCE, report
    assert report["weight_bytes_quantized"] < 0.3 * report["weight_bytes"]


def test_engine_decodes_a_quantized_model(trained):
    model, _ = trained
    qmodel = quantize_model(model, "int8")
    assert any(isinstance(m, Int8Linear) for m in qmodel.modules())
    assert linear_weight_bytes(qmodel) < linear_weight_bytes(model)
    tok = ByteTokenizer()
    res = Engine(qmodel, tok, max_batch_size=2).generate(
        ["It is a truth", "the minds"], SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    )
    for r in res:
        assert r.completions[0].token_ids == reference_greedy(qmodel, r.prompt_token_ids, 12)


@needs_fbgemm
@pytest.mark.parametrize("weights", DECODE_WEIGHTS)
def test_decode_weights_validation_loss_within_tolerance(trained, weights):
    """The decode step's own logits (teacher-forced through the cache) with packed weights."""
    model, val = trained
    exact = decode_loss(model, val[:3], None)
    torch.testing.assert_close(exact, sum(_forward_loss(model, x, y) for x, y in val[:3]) / _count(val[:3]))
    packed = decode_loss(model, val[:3], weights)
    tolerance = FP16_LOSS_TOLERANCE if weights == "fp16" else LOSS_TOLERANCE
    assert abs(packed - exact) / exact < tolerance, (weights, exact, packed)


def test_fp16_kv_cache_validation_loss_within_tolerance(trained):
    """The engine's default float16 KV cache (read by the kernel on a CPU) costs at most as much
    validation loss as fp16 weights, alone and together with them."""
    model, val = trained
    exact = decode_loss(model, val[:3], None)
    for weights in (None, "fp16") if fbgemm_available() else (None,):
        half = decode_loss(model, val[:3], weights, cache_dtype=torch.float16)
        assert half != exact  # the cache really was float16
        assert abs(half - exact) / exact < FP16_LOSS_TOLERANCE, (weights, exact, half)


def _forward_loss(model, x, y) -> float:
    with torch.no_grad():
        return float(model(x, y, loss_reduction="sum")[1])


def _count(batches) -> int:
    return sum(int((y != -1).sum()) for _, y in batches)


@needs_fbgemm
def test_default_engine_uses_fp16_and_matches_float32_greedy(trained):
    """On a trained model (no near-ties among the top logits) fp16 decode weights change no
    greedy token, batched or not, and the logits stay within 1e-3 of float32."""
    model, _ = trained
    tok = ByteTokenizer()
    engine = Engine(model, tok, max_batch_size=2)
    assert engine.decode_weights == "fp16"
    params = SamplingParams(temperature=0, max_new_tokens=16, ignore_eos=True)
    prompts = ["It is a truth", "the minds"]
    fast = engine.generate(prompts, params)
    exact = Engine(model, tok, max_batch_size=2, decode_weights=None, kv_cache=None).generate(prompts, params)
    for a, b in zip(fast, exact, strict=True):
        assert a.completions[0].token_ids == b.completions[0].token_ids
        assert a.completions[0].token_ids == reference_greedy(model, a.prompt_token_ids, 16)
    x = torch.tensor([tok.encode("It is a truth universally")])
    with torch.no_grad():
        want = model(x)[0][0]
    from fornalha.infer.decode import Decoder
    from fornalha.model.gpt import KVCache

    cache = KVCache.allocate(model.config, 1, x.size(1))
    dec, pos = Decoder(model, cache, "fp16"), torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        for t in range(x.size(1)):
            got = dec(x[:, t], pos, 1, t + 1, same_pos=t)[0]
            pos += 1
            torch.testing.assert_close(got, want[t], atol=1e-3, rtol=0)


@needs_fbgemm
def test_int8_decode_weights_run_a_quantized_model_through_the_fused_kernel(trained):
    model, _ = trained
    tok = ByteTokenizer()
    qmodel = quantize_model(model, "int8")
    params = SamplingParams(temperature=0, max_new_tokens=12, ignore_eos=True)
    a = Engine(qmodel, tok, max_batch_size=2, decode_weights="int8").generate(["It is a truth"], params)
    b = Engine(model, tok, max_batch_size=2, decode_weights="int8").generate(["It is a truth"], params)
    assert a[0].completions[0].token_ids == b[0].completions[0].token_ids
    assert len(a[0].completions[0].token_ids) == 12


@needs_fbgemm
@pytest.mark.parametrize("packed", [True, False], ids=["packed-prefill", "model-weights-prefill"])
def test_prefill_with_either_weights_matches_the_model(monkeypatch, packed):
    """Where the packed fp16 copy multiplies prefill-sized products faster than BLAS on the model's
    weights (measured when the decoder is built), prefill runs on it too; either way its logits
    are GPT.forward's up to fp16 rounding, and the choice is the one made."""
    import fornalha.infer.decode as decode
    from fornalha.infer.decode import Decoder
    from fornalha.model.gpt import KVCache

    monkeypatch.setattr(decode, "_packed_wins", lambda *a, **k: packed)
    torch.manual_seed(0)
    model = GPT(tiny_config(init_std=0.3)).eval()
    dec = Decoder(model, KVCache.allocate(model.config, 2, 32), "fp16")
    assert dec.prefill_packed is packed
    prompts = torch.randint(7, 263, (2, 9))
    with torch.no_grad():
        want, _ = model(prompts)
        got = dec.prefill(prompts, [9, 9], [0, 1])
        rest = dec.prefill_from([prompts[0, 9:].tolist() + [5, 6]], [0], [9])
        full, _ = model(torch.cat((prompts[0], torch.tensor([5, 6])))[None])
    torch.testing.assert_close(got, want[:, -1], atol=5e-3, rtol=5e-3)
    torch.testing.assert_close(rest[0], full[0, -1], atol=5e-3, rtol=5e-3)


@needs_fbgemm
@pytest.mark.parametrize("weights", ["int8", "dynamic"])
def test_prefill_never_runs_on_int8_weights(weights):
    """Only fp16 weights may serve prefill: the int8 kernel takes 2-D inputs (a prompt batch is 3-D:
    it failed there) and dynamic int8 quantizes activations per call, across prompts."""
    from fornalha.infer.decode import Decoder
    from fornalha.model.gpt import KVCache

    torch.manual_seed(0)
    model = GPT(tiny_config(init_std=0.3)).eval()
    dec = Decoder(model, KVCache.allocate(model.config, 2, 32), weights)
    assert not dec.prefill_packed
    prompts = torch.randint(7, 263, (2, 9))
    with torch.no_grad():
        want, _ = model(prompts)
        torch.testing.assert_close(dec.prefill(prompts, [9, 9], [0, 1]), want[:, -1], atol=1e-5, rtol=1e-5)
