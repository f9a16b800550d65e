"""Attention weights of every layer and head, for looking inside the model (the explain view).

`GPT.forward` computes attention with `F.scaled_dot_product_attention`, which never materialises the
[T, T] weights (that is what makes it fast). To see them, a forward hook on each layer's attention
module catches its input, and the weights are recomputed from it with the explicit math:

    q, k = rotary(norm(q)), rotary(norm(k))      # exactly as CausalSelfAttention does
    weights = softmax((q @ kᵀ) / sqrt(head_dim) + causal mask)      # [B, n_head, T, T], rows sum to 1

The model runs its ordinary forward pass, nothing in it changes, and the
hooks are removed afterwards.
"""

from __future__ import annotations

import math

import torch

from fornalha.model.gpt import GPT, CausalSelfAttention, apply_rotary


def attention_weights(
    attn: CausalSelfAttention, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Causal attention weights [B, n_head, T, T] of one attention module for its input x [B, T, C]."""
    B, T, _ = x.shape
    H, Hkv, D = attn.n_head, attn.n_kv_head, attn.head_dim
    q, k, _ = attn.qkv(x).split([H * D, Hkv * D, Hkv * D], dim=-1)
    q = q.view(B, T, H, D).transpose(1, 2)
    k = k.view(B, T, Hkv, D).transpose(1, 2)
    if attn.q_norm is not None:
        q, k = attn.q_norm(q), attn.k_norm(k)
    q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
    k = k.repeat_interleave(H // Hkv, dim=1)  # grouped-query attention: each k head serves a group
    scores = (q.float() @ k.float().transpose(-2, -1)) / math.sqrt(D)
    causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)


@torch.no_grad()
def attention_maps(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    """Run `model` on idx [B, T] and return its attention weights [n_layer, B, n_head, T, T]."""
    maps: list[torch.Tensor] = []

    def hook(module: CausalSelfAttention, args: tuple) -> None:
        x, cos, sin = args[:3]
        maps.append(attention_weights(module, x, cos, sin))

    handles = [block.attn.register_forward_pre_hook(hook) for block in model.blocks]
    try:
        model(idx)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(maps)
