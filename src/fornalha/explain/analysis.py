"""What the model does with one text: its tokens, attention, predictions and losses, as plain data.

    text ─► tokenizer ─► [<|bos|>, t1 … tn] ─► GPT forward (hooks) ─► attention [layer, head, T, T]
                                               └─► logits ─► softmax ─► top-10 next tokens at each position
                                                                     └─► loss of each token: −log2 p(t_i | t_<i)

`explain_text(model, tokenizer, text)` returns one JSON-ready dict (the explain page embeds it, the
server sends it from `POST /v1/explain`). The attention weights come from
`fornalha.model.attention_maps`, forward hooks on the model's ordinary forward pass; the logits come
from that same pass, so the page shows exactly the computation that generation runs.

Size: attention has n_layer · n_head · T² weights. Causal attention puts zeros above the diagonal,
so only the lower triangle (T(T+1)/2 per head) is kept, each weight rounded to a 16-bit integer
(weight · 65535, so the error is below 1e-5), and the bytes travel as base64:
a 200-token text on a 6-layer, 6-head model makes a 2.1 MB page, 512 tokens on 4 × 4 heads
5.9 MB, and the size grows with the square of the text: 1,024 tokens on 12 × 12 heads are 202 MB.
"""

from __future__ import annotations

import base64
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fornalha.errors import FornalhaError
from fornalha.model import GPT, attention_maps

FORMAT = "fornalha-explain"
TOP_K = 10
SCALE = 65535  # attention weights travel as round(weight · SCALE) in uint16


def encode_attention(maps: np.ndarray) -> str:
    """[L, H, T, T] causal weights → base64 of the uint16 lower triangles, row by row (i, j ≤ i)."""
    L, H, T, _ = maps.shape
    rows, cols = np.tril_indices(T)  # row-major: (0,0), (1,0), (1,1), (2,0), …
    tri = np.rint(np.clip(maps[:, :, rows, cols], 0.0, 1.0) * SCALE).astype("<u2")
    return base64.b64encode(tri.tobytes()).decode("ascii")


def decode_attention(payload: dict[str, Any]) -> np.ndarray:
    """The inverse of `encode_attention`: the ``attention`` object of an explanation → [L, H, T, T]."""
    L, H, T = payload["n_layer"], payload["n_head"], payload["T"]
    tri = np.frombuffer(base64.b64decode(payload["data"]), dtype="<u2").astype(np.float64) / SCALE
    maps = np.zeros((L, H, T, T))
    rows, cols = np.tril_indices(T)
    maps[:, :, rows, cols] = tri.reshape(L, H, -1)
    return maps


def token_label(tokenizer: Any, token_id: int, specials: dict[int, str]) -> tuple[str, int]:
    """(text shown for one token, its UTF-8 byte count). Specials show their name and count 0 bytes;
    a token holding part of a UTF-8 character shows its bytes as \\xNN escapes."""
    if token_id in specials:
        return specials[token_id], 0
    if token_id >= tokenizer.vocab_size:  # a model vocabulary padded beyond the tokenizer's
        return f"<unused {token_id}>", 0
    raw = tokenizer.decode_bytes([token_id])
    return raw.decode("utf-8", errors="backslashreplace"), len(raw)


@torch.no_grad()
def explain_text(
    model: GPT, tokenizer: Any, text: str, top_k: int = TOP_K, max_tokens: int | None = None
) -> dict[str, Any]:
    """Tokens, attention of every layer and head, top-k next tokens and per-token loss for `text`.

    The model sees `<|bos|>` first (as every training document began), so every token of the text
    has a loss: how surprised the model was, in bits, −log2 p(token | the tokens before it).
    Raises FornalhaError for an empty text or one longer than the model's context (or than
    `max_tokens`, a smaller cap a server may set: the answer grows with the square of the text).
    """
    if not text or not text.strip():
        raise FornalhaError("the text to explain is empty; give some text with --text")
    ids = list(tokenizer.encode(text))
    bos = getattr(tokenizer, "bos_id", None)
    if bos is not None:
        ids = [bos, *ids]
    ctx = model.config.block_size
    if len(ids) > ctx:
        raise FornalhaError(
            f"the text is {len(ids)} tokens long (with <|bos|>) but the model's context is {ctx} tokens; "
            "give a shorter text"
        )
    if max_tokens is not None and len(ids) > max_tokens:
        raise FornalhaError(
            f"the text is {len(ids)} tokens long (with <|bos|>); this server explains at most {max_tokens}"
        )
    if len(ids) < 2:
        raise FornalhaError("the text has no token the model can predict; give a longer text")
    device = model.wte.weight.device
    idx = torch.tensor([ids], dtype=torch.long, device=device)

    # One forward pass: the hooks of attention_maps collect the weights, the logits come back as usual.
    logits_box: list[torch.Tensor] = []
    handle = model.register_forward_hook(lambda _m, _a, out: logits_box.append(out[0]))
    try:
        maps = attention_maps(model, idx)[:, 0]  # [L, H, T, T]
    finally:
        handle.remove()
    logp = F.log_softmax(logits_box[0][0].float(), dim=-1)  # [T, vocab], natural log
    top_lp, top_ids = logp.topk(min(top_k, logp.size(-1)), dim=-1)
    target = torch.tensor(ids[1:], device=device)
    loss_nats = -logp[:-1].gather(1, target[:, None])[:, 0]  # loss of token i+1, predicted at i

    specials = {i: name for name, i in getattr(tokenizer, "special_ids", {}).items()}
    tokens = []
    for i, tid in enumerate(ids):
        label, nbytes = token_label(tokenizer, tid, specials)
        loss = None if i == 0 else float(loss_nats[i - 1]) / math.log(2)
        tokens.append(
            {"id": tid, "text": label, "bytes": nbytes, "special": tid in specials, "loss_bits": loss}
        )
    label_cache: dict[int, str] = {}

    def label(tid: int) -> str:
        if tid not in label_cache:
            label_cache[tid] = token_label(tokenizer, tid, specials)[0]
        return label_cache[tid]

    top = [
        [{"id": int(t), "text": label(int(t)), "p": float(math.exp(lp))} for t, lp in zip(ti, tl)]
        for ti, tl in zip(top_ids.tolist(), top_lp.tolist())
    ]
    scored = tokens[1:]
    total_bits = sum(t["loss_bits"] for t in scored)
    total_bytes = sum(t["bytes"] for t in scored)
    L, H, T = maps.shape[0], maps.shape[1], maps.shape[2]
    return {
        "format": FORMAT,
        "version": 1,
        "text": text,
        "model": {
            "n_layer": model.config.n_layer,
            "n_head": model.config.n_head,
            "n_kv_head": model.config.n_kv_head,
            "n_embd": model.config.n_embd,
            "block_size": ctx,
            "vocab_size": model.config.vocab_size,
            "parameters": model.num_params(),
        },
        "tokens": tokens,
        "top": top,
        "summary": {
            "tokens": len(scored),
            "bytes": total_bytes,
            "mean_loss_bits": total_bits / len(scored),
            "bits_per_byte": total_bits / total_bytes if total_bytes else None,
        },
        "attention": {
            "encoding": "uint16 lower triangle, row-major, base64; weight = value / 65535",
            "n_layer": L,
            "n_head": H,
            "T": T,
            "data": encode_attention(maps.float().cpu().numpy()),
        },
    }
