"""Int8 quantization: the rounding bound, the validation-loss cost on a trained tiny model, and decoding."""

from __future__ import annotations

import pytest
import torch
from infer_helpers import ByteTokenizer, tiny_config
from test_infer_engine import reference_greedy

from fornalha.infer import Engine, SamplingParams
from fornalha.infer.quantize import Int8Linear, linear_weight_bytes, loss_change, quantize_model
from fornalha.model import GPT

#: The stated tolerance: int8 weights may raise the validation loss by at most 1 % (relative).
LOSS_TOLERANCE = 0.01

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
