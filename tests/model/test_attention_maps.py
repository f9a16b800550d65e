"""Attention maps beside the model: shape, rows that are distributions, causality, and the weights SDPA used."""

from __future__ import annotations

import pytest
import torch

from fornalha.model import GPT, ModelConfig, attention_maps


def _model(**kw) -> GPT:
    torch.manual_seed(0)
    m = GPT(ModelConfig(**(dict(vocab_size=61, block_size=32, n_layer=3, n_head=4, n_embd=32) | kw)))
    with torch.no_grad():  # zero-init projections would make every block the identity
        for p in m.parameters():
            if p.ndim == 2 and p.abs().sum() == 0:
                p.normal_(0, 0.02)
    return m.eval()


@pytest.mark.parametrize("extra", [{}, {"n_kv_head": 2, "qk_norm": True}], ids=["mha", "gqa-qknorm"])
def test_maps_are_causal_distributions_that_reproduce_each_layers_output(extra):
    m = _model(**extra)
    idx = torch.randint(0, 61, (2, 11))
    maps = attention_maps(m, idx)
    assert maps.shape == (3, 2, 4, 11, 11)
    torch.testing.assert_close(maps.sum(-1), torch.ones(3, 2, 4, 11))
    assert (maps.triu(diagonal=1) == 0).all()  # no token attends to a later one

    # Reference: each layer's weights applied to its values, through o_proj, give exactly the output
    # the model's own (SDPA) attention produced in the same forward pass.
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        b.attn.register_forward_hook(lambda mod, args, out: seen.append((args[0], out))) for b in m.blocks
    ]
    with torch.no_grad():
        m(idx)
    for h in hooks:
        h.remove()
    for layer, (x, out) in enumerate(seen):
        a = m.blocks[layer].attn
        H, Hkv, D = a.n_head, a.n_kv_head, a.head_dim
        v = a.qkv(x)[..., (H + Hkv) * D :].view(2, 11, Hkv, D).transpose(1, 2).repeat_interleave(H // Hkv, 1)
        y = (maps[layer] @ v).transpose(1, 2).reshape(2, 11, H * D)
        torch.testing.assert_close(a.o_proj(y), out, atol=1e-5, rtol=1e-4)


def test_forward_has_one_return_shape_and_hooks_are_removed():
    m = _model()
    idx = torch.randint(0, 61, (1, 6))
    attention_maps(m, idx)
    assert all(not b.attn._forward_pre_hooks for b in m.blocks)
    out = m(idx)
    assert isinstance(out, tuple) and len(out) == 2
