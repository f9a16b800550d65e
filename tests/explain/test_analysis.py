"""explain_text: attention rows are distributions equal to a reference computation, losses and top-10
match the model's own forward pass, and bad texts are refused."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fornalha.checkpoint import load_run
from fornalha.errors import FornalhaError
from fornalha.explain import decode_attention, explain_text
from fornalha.explain.analysis import encode_attention
from fornalha.model.gpt import apply_rotary

TEXT = "the lazy dog jumps! é"


def reference_attention(model, idx: torch.Tensor) -> torch.Tensor:
    """Attention weights written out from the model's parameters, layer by layer, without hooks:
    the residual stream is carried by hand and each layer's softmax(q kᵀ/√d + causal mask) kept."""
    T = idx.size(1)
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    x = model.wte(idx)
    out = []
    for block in model.blocks:
        a = block.attn
        h = block.attn_norm(x)
        H, Hkv, D = a.n_head, a.n_kv_head, a.head_dim
        q, k, v = a.qkv(h).split([H * D, Hkv * D, Hkv * D], dim=-1)
        q = q.view(1, T, H, D).transpose(1, 2)
        k = k.view(1, T, Hkv, D).transpose(1, 2)
        v = v.view(1, T, Hkv, D).transpose(1, 2)
        if a.q_norm is not None:
            q, k = a.q_norm(q), a.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(D)
        scores = scores + torch.full((T, T), float("-inf")).triu(1)
        w = torch.softmax(scores, dim=-1)
        out.append(w[0])
        y = (w @ v).transpose(1, 2).reshape(1, T, H * D)
        x = x + a.o_proj(y)
        x = x + block.mlp(block.mlp_norm(x))
    return torch.stack(out)  # [L, H, T, T]


@torch.no_grad()
def test_attention_rows_sum_to_one_and_match_a_reference(tiny_run):
    model, tok, _ = load_run(tiny_run)
    ex = explain_text(model, tok, TEXT)
    ids = [t["id"] for t in ex["tokens"]]
    assert ids[0] == tok.bos_id and ids[1:] == tok.encode(TEXT)
    maps = decode_attention(ex["attention"])
    L, H, T = 2, 4, len(ids)
    assert maps.shape == (L, H, T, T)
    np.testing.assert_allclose(maps.sum(-1), 1.0, atol=T * 1e-5)  # each weight rounded to 1/65535
    assert (np.triu(maps, 1) == 0).all()  # causal: no weight on later tokens
    ref = reference_attention(model, torch.tensor([ids])).numpy()
    np.testing.assert_allclose(maps, ref, atol=2e-5)


@torch.no_grad()
def test_losses_and_top10_are_the_models_own_predictions(tiny_run):
    model, tok, _ = load_run(tiny_run)
    ex = explain_text(model, tok, TEXT)
    ids = torch.tensor([[t["id"] for t in ex["tokens"]]])
    logits, loss = model(ids[:, :-1], ids[:, 1:])
    bits = [t["loss_bits"] for t in ex["tokens"]]
    assert bits[0] is None  # <|bos|>: nothing predicts it
    assert np.mean(bits[1:]) == pytest.approx(loss.item() / math.log(2), rel=1e-5)
    assert ex["summary"]["mean_loss_bits"] == pytest.approx(loss.item() / math.log(2), rel=1e-5)
    probs = F.softmax(logits[0], dim=-1)
    for pos in (0, 5, len(ex["top"]) - 2):
        top = ex["top"][pos]
        assert len(top) == 10
        assert [o["id"] for o in top] == probs[pos].topk(10).indices.tolist()
        assert [o["p"] for o in top] == pytest.approx(probs[pos].topk(10).values.tolist(), rel=1e-5)
        assert all(a["p"] >= b["p"] for a, b in zip(top, top[1:]))


def test_tokens_carry_ids_and_bytes(tiny_run):
    model, tok, _ = load_run(tiny_run)
    ex = explain_text(model, tok, "é!")
    assert [(t["text"], t["bytes"], t["special"]) for t in ex["tokens"]] == [
        ("<|bos|>", 0, True),
        ("é", 2, False),
        ("!", 1, False),
    ]
    assert ex["summary"]["bytes"] == 3


def test_attention_encoding_round_trips():
    rng = np.random.default_rng(0)
    w = rng.random((2, 3, 7, 7)) * np.tril(np.ones((7, 7)))
    w /= w.sum(-1, keepdims=True)
    back = decode_attention({"n_layer": 2, "n_head": 3, "T": 7, "data": encode_attention(w)})
    np.testing.assert_allclose(back, w, atol=1 / 65535)


def test_empty_and_too_long_texts_are_refused(tiny_run):
    model, tok, _ = load_run(tiny_run)
    for bad in ("", "   \n"):
        with pytest.raises(FornalhaError, match="empty"):
            explain_text(model, tok, bad)
    with pytest.raises(FornalhaError, match="context is 64 tokens"):
        explain_text(model, tok, "a" * 64)  # 64 characters + <|bos|> = 65 tokens
    assert len(explain_text(model, tok, "a" * 63)["tokens"]) == 64  # exactly the context: fine
    with pytest.raises(FornalhaError, match="explains at most 10"):
        explain_text(model, tok, "a" * 10, max_tokens=10)


def test_page_embeds_any_text_safely(tiny_run):
    from fornalha.explain import render_page

    model, tok, _ = load_run(tiny_run)
    ex = explain_text(model, tok, "</script>{{DATA}}&")
    page = render_page(ex, title="{{DATA}} <b>")
    assert page.count("</script>") == 2  # the data element's and the code's own, none from the text
    assert "&lt;b&gt;" in page and "/*{{JS}}*/" not in page
    assert page.count('"format":"fornalha-explain"') == 1  # the title's {{DATA}} stays text
    data = page.split('<script type="application/json" id="explain-data">')[1].split("</script>")[0]
    assert json.loads(data)["text"] == "</script>{{DATA}}&"
