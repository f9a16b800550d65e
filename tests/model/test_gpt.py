"""The Transformer: shapes, causality, rotary embeddings, KV cache, GQA, learning, counting."""

from __future__ import annotations

import math

import pytest
import torch

from fornalha.model import GPT, KVCache, ModelConfig
from fornalha.model.gpt import apply_rotary, rotary_tables


def tiny(**kw) -> ModelConfig:
    base = dict(vocab_size=61, block_size=32, n_layer=2, n_head=4, n_embd=32)
    return ModelConfig(**(base | kw))


def model_of(seed: int = 0, **kw) -> GPT:
    torch.manual_seed(seed)
    m = GPT(tiny(**kw))
    # zero-init projections would make every block the identity: give them weights for the tests
    with torch.no_grad():
        for p in m.parameters():
            if p.ndim == 2 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m.eval()


@pytest.mark.parametrize("mlp", ["swiglu", "relu2"])
def test_shapes_and_loss(mlp):
    m = model_of(mlp=mlp)
    idx = torch.randint(0, 61, (3, 17))
    logits, loss = m(idx)
    assert logits.shape == (3, 17, 61) and loss is None
    logits, loss = m(idx, torch.randint(0, 61, (3, 17)))
    assert loss.ndim == 0 and abs(loss.item() - math.log(61)) < 0.5  # near uniform at init
    _, per_token = m(idx, idx, loss_reduction="none")
    assert per_token.shape == (3, 17)
    with pytest.raises(ValueError):
        m(torch.zeros(1, 33, dtype=torch.long))


def test_masked_targets_are_ignored():
    m = model_of()
    idx = torch.randint(0, 61, (2, 10))
    y = idx.clone()
    y[:, :5] = -1
    _, loss = m(idx, y)
    _, per = m(idx, idx, loss_reduction="none")
    assert torch.allclose(loss, per[:, 5:].mean(), atol=1e-6)


def test_causality_future_tokens_never_change_past_logits():
    m = model_of(qk_norm=True)
    a = torch.randint(0, 61, (2, 20))
    b = a.clone()
    b[:, 12:] = torch.randint(0, 61, (2, 8))
    la, _ = m(a)
    lb, _ = m(b)
    assert torch.allclose(la[:, :12], lb[:, :12], atol=1e-6)
    assert not torch.allclose(la[:, 12:], lb[:, 12:])


def test_rotary_scores_depend_only_on_distance():
    D, L = 16, 64
    cos, sin = rotary_tables(D, L, 10000.0)
    torch.manual_seed(0)
    q, k = torch.randn(D), torch.randn(D)

    def score(i: int, j: int) -> float:
        qi = apply_rotary(q.view(1, 1, 1, D), cos[i : i + 1], sin[i : i + 1]).flatten()
        kj = apply_rotary(k.view(1, 1, 1, D), cos[j : j + 1], sin[j : j + 1]).flatten()
        return float(qi @ kj)

    for d in (0, 1, 5, 20):
        ref = score(d, 0)
        for start in (3, 17, 40):
            assert abs(score(start + d, start) - ref) < 1e-4
    assert abs(score(5, 0) - score(9, 0)) > 1e-4  # and it does depend on the distance


def test_rotary_matches_complex_reference():
    """Rotate-half layout: pair (x[i], x[i + D/2]) is the complex number x[i] + i·x[i+D/2],
    multiplied by exp(i · pos · theta^(-2i/D))."""
    D, L, theta = 8, 10, 10000.0
    cos, sin = rotary_tables(D, L, theta)
    x = torch.randn(1, 1, L, D)
    got = apply_rotary(x, cos, sin)
    freqs = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    angles = torch.arange(L, dtype=torch.float64)[:, None] * freqs[None, :]
    z = torch.complex(x[0, 0, :, : D // 2].double(), x[0, 0, :, D // 2 :].double()) * torch.polar(
        torch.ones_like(angles), angles
    )
    want = torch.cat([z.real, z.imag], dim=-1).float()
    assert torch.allclose(got[0, 0], want, atol=1e-5)


@pytest.mark.parametrize("n_kv_head", [4, 2, 1])
def test_kv_cache_equals_full_forward(n_kv_head):
    m = model_of(n_kv_head=n_kv_head, qk_norm=True)
    idx = torch.randint(0, 61, (2, 12))
    full, _ = m(idx)
    cache = KVCache.allocate(m.config, 2)
    assert cache.k.shape == (2, 2, n_kv_head, 32, 8)
    first, _ = m(idx[:, :7], kv_cache=cache)
    steps = [m(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(7, 12)]
    incremental = torch.cat([first] + steps, dim=1)
    assert torch.allclose(full, incremental, atol=1e-5)
    assert cache.pos.tolist() == [12, 12]


def test_gqa_has_fewer_parameters_and_trains():
    mha, gqa = model_of(), model_of(n_kv_head=1)
    assert gqa.num_params() < mha.num_params()
    assert gqa.blocks[0].attn.qkv.weight.shape == (32 + 2 * 8, 32)
    idx = torch.randint(0, 61, (2, 9))
    _, loss = gqa.train()(idx, idx)
    loss.backward()
    assert all(p.grad is not None for p in gqa.parameters())


def test_tiny_batch_overfits_to_near_zero_loss():
    torch.manual_seed(0)
    m = GPT(tiny(n_layer=1, n_embd=32, n_head=2, mlp="relu2"))
    idx = torch.randint(0, 61, (2, 17))
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    for _ in range(80):
        _, loss = m(idx[:, :-1], idx[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05


def test_parameter_count_and_flops():
    c = tiny(tie_embeddings=True, mlp="relu2")
    m = GPT(c)
    d, v, L = c.n_embd, c.vocab_size, c.n_layer
    per_block = d * 3 * d + d * d + 2 * d * 4 * d + 2 * d  # qkv, o, up+down, two norms
    assert m.num_params() == v * d + L * per_block + d
    assert m.num_params(non_embedding=True) == m.num_params() - v * d
    untied = GPT(tiny(tie_embeddings=False, mlp="relu2"))
    assert untied.num_params() == m.num_params() + v * d
    matmul = L * (3 * d * d + d * d + 8 * d * d) + v * d
    assert m.flops_per_token(16) == 6 * matmul + 12 * L * c.n_head * c.head_dim * 16
    groups = m.parameter_groups()
    assert len(groups["matrix"]) == 4 * L and len(groups["embedding"]) == 1 and not groups["head"]


def test_generate_respects_length_and_is_deterministic_at_temperature_zero():
    m = model_of()
    prompt = torch.randint(0, 61, (2, 5))
    a = m.generate(prompt, 10, temperature=0)
    b = m.generate(prompt, 10, temperature=0)
    assert a.shape == (2, 15) and torch.equal(a, b) and torch.equal(a[:, :5], prompt)


def test_decode_paths_full_width_rotary_is_apply_rotary():
    """The decode step's one-multiply rotary (infer/decode.py) is the model's rotate-half rotary."""
    from fornalha.infer.decode import full_width_rotary, rotate

    torch.manual_seed(0)
    cos, sin = rotary_tables(16, 10, 10000.0)
    x = torch.randn(2, 3, 10, 16)
    wide_cos, wide_sin = full_width_rotary(cos, sin)
    torch.testing.assert_close(rotate(x, wide_cos, wide_sin), apply_rotary(x, cos, sin))


def test_every_model_config_field_carries_its_help():
    """ModelConfig is the one source of each field's help (the YAML config and docs/config.md read it)."""
    import dataclasses

    from fornalha.model.config import help_of

    for f in dataclasses.fields(ModelConfig):
        assert help_of(ModelConfig, f.name), f"{f.name} has no help"
    assert help_of(ModelConfig, "n_kv_head").startswith("key/value heads")
    from fornalha.train.config import ModelSection  # the YAML `model:` section reads the same help

    for name, info in ModelSection.model_fields.items():
        assert info.description == help_of(ModelConfig, name)
