"""The decode step: one new token per batch row through the model, reading and extending the KV cache.

Read `fornalha/model/gpt.py` first: this is its optimized path for inference, the same math
re-arranged for speed. `tests/infer/test_infer_engine.py` holds the
two equal: `test_decoder_matches_model_forward` and `test_prefill_matches_model_forward` (with QK-norm and
soft-capping) check that `Decoder` and `Decoder.prefill` give `GPT.forward`'s logits.

`GPT.forward` handles every case (training, prefill, decode) and is the reference.
Decoding is its hottest special case — a few hundred times per request, one token per row — and at
the sizes this project trains, the time goes into *per-operation overhead*, not arithmetic. So this
module re-expresses the same math for exactly that case, reusing the model's own weights and
sub-modules (the tests check it gives the same logits as `GPT.forward`):

* hidden states are [B, C] instead of [B, 1, C]; no per-step rotary/mask tables per layer —
  cos/sin and the attention mask are computed once per step and shared by all layers;
* the new key/value of every row is written with one `index_copy_` into a flat view of the cache,
  at precomputed offsets (row, head, position), instead of advanced indexing;
* attention only reads the first `kv_len` cache positions (the longest sequence so far) instead of
  the whole preallocated length; when every row sits at the same position no mask is needed;
* grouped-query attention needs no `repeat_interleave`: the G query heads that share a key/value
  head are laid out as G "query rows" of that head ([B, Hkv, G, D]), so one batched matmul serves them;
* q and k are rotated together (one set of rotary ops per layer), and plain `nn.Linear` / `RMSNorm`
  modules are called through their functional form (fewer Python frames per op);
* with `weights` ("fp16", "int8", "dynamic"; see `fornalha.infer.quantize`) the Linear layers run
  from a packed copy of their weights made once here — a matrix-vector product is bound by reading
  the weights, so fewer bytes per weight is most of the decode step's speed on a CPU — and the
  SwiGLU gate and up projections become one matmul (their weights concatenated); an `Int8Linear`
  of a quantized model runs through the fused int8 kernel.

`Decoder.prefill` is the other special case: whole prompts into empty cache rows, where plain causal
attention over the prompt is all that is needed (no mask, no cache read, no temporary cache).

A float16 cache on a CPU (the engine's default there, see `Engine(kv_cache=...)`) is read by the
hand-written kernel in `fornalha.infer.kernels` instead of SDPA: each row attends to exactly its own
positions (no mask), reading half the bytes. Any other cache goes through SDPA.

For `torch.compile` and for CUDA graphs (`fornalha.infer.graphs`) the same function runs with static
shapes: a fixed batch of slots and the full cache length, with a mask instead of slicing, so one
compiled or recorded graph serves every step of that batch size.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from fornalha.infer.kernels import (
    MAX_HEAD_DIM,
    add_rms_norm_kernel,
    decode_attention_kernel,
    decode_step_kernel,
)
from fornalha.infer.quantize import Int8Linear, int8pack_linear, pack_linear
from fornalha.model.gpt import GPT, MLP, KVCache, RMSNorm, softcap


def _fast_call(module: nn.Module, weights: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A cheaper callable with the module's math: functional forms for the plain layers (a Linear
    packed in `weights` when given), the fused kernel for an `Int8Linear`, the module itself
    otherwise (a LoRA wrapper, …)."""
    if type(module) is nn.Linear and module.bias is None:
        if weights is not None:
            return pack_linear(module.weight, weights)
        return partial(F.linear, weight=module.weight)
    if type(module) is Int8Linear and weights == "int8" and module.qweight.device.type == "cpu":
        return int8pack_linear(module.qweight, module.scale)
    if type(module) is RMSNorm:
        return partial(
            F.rms_norm, normalized_shape=(module.weight.numel(),), weight=module.weight, eps=module.eps
        )
    return module


def _fast_mlp(mlp: nn.Module, weights: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The MLP with functional calls inside (SwiGLU or ReLU², as `fornalha.model.gpt.MLP`);
    any other module (an adapter, a variant) is called as it is."""
    if type(mlp) is not MLP:
        return mlp
    up, down = _fast_call(mlp.up_proj, weights), _fast_call(mlp.down_proj, weights)
    if mlp.gate_proj is None:
        return lambda x: down(F.relu(up(x)).square())
    g, u = mlp.gate_proj, mlp.up_proj
    hidden = u.out_features
    gate_up = None
    if weights is not None and type(g) is nn.Linear and type(u) is nn.Linear:  # packing copies anyway
        gate_up = pack_linear(torch.cat((g.weight, u.weight)), weights)
    elif weights == "int8" and type(g) is Int8Linear and type(u) is Int8Linear and g.qweight.is_cpu:
        gate_up = int8pack_linear(torch.cat((g.qweight, u.qweight)), torch.cat((g.scale, u.scale)))
    if gate_up is not None:

        def fused(x: torch.Tensor) -> torch.Tensor:
            h = gate_up(x)
            return down(F.silu(h[..., :hidden]).mul_(h[..., hidden:]))

        return fused
    gate = _fast_call(g, weights)
    return lambda x: down(F.silu(gate(x)) * up(x))


def _packed_wins(linear: nn.Module, packed: Callable[[torch.Tensor], torch.Tensor], rows: int = 64) -> bool:
    """True when the packed copy of `linear` multiplies `rows` rows at least 1.3x faster than the
    model's own weights (best of 5 each: a few milliseconds, once per engine). The margin keeps a
    near-tie from flipping the choice between runs."""
    if type(linear) is not nn.Linear or linear.weight.device.type != "cpu":
        return False
    x = torch.randn(rows, linear.in_features, dtype=linear.weight.dtype)

    def best(fn: Callable[[torch.Tensor], torch.Tensor]) -> float:
        times = []
        with torch.inference_mode():
            fn(x)
            for _ in range(5):
                t = time.perf_counter()
                fn(x)
                times.append(time.perf_counter() - t)
        return min(times)

    return best(packed) * 1.3 <= best(partial(F.linear, weight=linear.weight))


def _plain_qk_norm(attn: nn.Module) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """(q weight, k weight, eps) of an attention layer's QK-norm when it is a pair of plain RMSNorms
    with one eps — empty weights when the model has no QK-norm — else None (a module of another
    kind: the decode step then calls it as it is)."""
    qn, kn = attn.q_norm, attn.k_norm
    if qn is None:
        return torch.empty(0), torch.empty(0), 0.0
    if type(qn) is not RMSNorm or type(kn) is not RMSNorm or qn.eps != kn.eps:
        return None
    return qn.weight.detach().float().contiguous(), kn.weight.detach().float().contiguous(), float(qn.eps)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Llama rotary on x [..., D] — `fornalha.model.gpt.apply_rotary`'s math — with full-width tables
    (`full_width_rotary`): x·cos + swap_halves(x)·sin, one multiply-add instead of two half-width ones."""
    d = x.size(-1) // 2
    return x * cos + torch.cat((x[..., d:], x[..., :d]), dim=-1) * sin


def full_width_rotary(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's rotary tables [L, D/2] (`rotary_tables`) widened for `rotate`: [cos, cos], [-sin, sin]."""
    return torch.cat((cos, cos), -1), torch.cat((-sin, sin), -1)


class Decoder:
    """Runs `model` one token per row against `cache` (which it reads and writes, but whose `pos`
    it leaves to the caller: the engine decides which rows advance). `weights`: run the Linear
    layers in that packed format ("fp16", "int8", "dynamic"), or as they are (None).

    Call `decoder(tokens, pos, n_rows, kv_len, same_pos)`:
      tokens [≥n_rows] long — the last token of each row; pos [≥n_rows] long — where it goes;
      n_rows — rows 0..n_rows-1 take part; kv_len — attend over cache positions < kv_len
      (≥ max(pos)+1); same_pos — when every row is at the same position, that position
      (then kv_len must be same_pos + 1 and no mask is needed), else None.
    Returns logits [n_rows, vocab] in float32.
    """

    def __init__(self, model: GPT, cache: KVCache, weights: str | None = None) -> None:
        c = model.config
        self.model, self.cache, self.config, self.weights = model, cache, c, weights
        self.H, self.Hkv, self.D = c.n_head, c.n_kv_head, c.head_dim
        self.G = self.H // self.Hkv
        self.scale = 1.0 / math.sqrt(self.D)
        B, S = cache.k.size(1), cache.max_len
        assert cache.k.is_contiguous() and cache.v.is_contiguous()
        # Flat [B*Hkv*S, D] views of each layer's cache, and each (row, head)'s offset in them.
        self.k_flat = [cache.k[i].view(-1, self.D) for i in range(c.n_layer)]
        self.v_flat = [cache.v[i].view(-1, self.D) for i in range(c.n_layer)]
        dev = cache.k.device
        self.offsets = (
            torch.arange(B, device=dev)[:, None] * self.Hkv + torch.arange(self.Hkv, device=dev)
        ) * S
        self.positions = torch.arange(S, device=dev)
        # A float16 cache on the CPU is read by the hand-written kernel (see fornalha.infer.kernels).
        self.kernel = self.step_kernel = None
        if cache.k.dtype == torch.float16 and dev.type == "cpu" and self.D <= MAX_HEAD_DIM:
            self.kernel = decode_attention_kernel()
        self.refresh()

    def refresh(self) -> None:
        """Re-read the model's modules and weights (call after swapping layers or changing weights:
        the packed Linear copies and the stacked QK-norm weights are copies). CUDA graphs recorded
        from the old ones (`Engine.graphs`) keep replaying them: record new ones after this."""
        m = self.model
        dtype = m.wte.weight.dtype
        cos, sin = m.rope_cos.to(dtype), m.rope_sin.to(dtype)
        self.cos_table, self.sin_table = full_width_rotary(cos, sin)
        w = self.weights
        self.qk_weights = [_plain_qk_norm(b.attn) for b in m.blocks]
        self.layers = []
        for blk, plain_qk in zip(m.blocks, self.qk_weights, strict=True):
            a = blk.attn
            self.layers.append(
                (
                    _fast_call(blk.attn_norm),
                    _fast_call(a.qkv, w),
                    self._qk_norm(a, plain_qk),
                    _fast_call(a.o_proj, w),
                    _fast_call(blk.mlp_norm),
                    _fast_mlp(blk.mlp, w),
                )
            )
        self.norm_f, self.lm_head = _fast_call(m.norm_f), _fast_call(m.lm_head, w)
        # The fused step (kernels/decode_attention.cpp, `decode_attention_step`): with the float16
        # cache's kernel, a float32 model and plain (or no) QK-norm, one call per layer does what
        # the loop of `__call__` does from the qkv projection to attention. The loop stays the
        # readable reference; the tests hold the two together.
        self.step_kernel = self.add_norm = None
        plain = all(qk is not None for qk in self.qk_weights)
        if self.kernel is not None and dtype == torch.float32 and self.D % 2 == 0 and plain:
            self.step_kernel = decode_step_kernel()
            # ... and with plain RMSNorms, each residual add and the norm after it in one call too
            # (`_kernel_step`): the norms in order, attention and MLP of each layer, then the final one
            norms = [n for b in m.blocks for n in (b.attn_norm, b.mlp_norm)] + [m.norm_f]
            if all(type(n) is RMSNorm for n in norms):
                self.add_norm = add_rms_norm_kernel()
                self.norm_params = [(n.weight.detach().float().contiguous(), float(n.eps)) for n in norms]
                self.no_delta = torch.empty(0)
        # Prefill multiplies many rows at once: a matrix-matrix product, bound by arithmetic. Which
        # is faster there, the model's own weights through BLAS or the packed copies, depends on the
        # CPU and its BLAS: fbgemm's fp16 kernel was ~4x slower than MKL on the Intel CPU this was
        # first written on, and 2.3x *faster* on an AMD EPYC (where MKL does not take its fastest
        # path) — so it is measured once, here, on a prefill-sized product.
        # (fp16 only: the int8 kernel takes 2-D inputs and "dynamic" quantizes activations per call,
        # which for a prompt would make its keys depend on the other prompts of the batch.)
        self.prefill_packed = w == "fp16" and _packed_wins(m.blocks[0].attn.qkv, self.layers[0][1])
        if self.prefill_packed:
            self.prefill_layers = [(n, qkv, o, mn, mlp) for n, qkv, _, o, mn, mlp in self.layers]
            self.prefill_head = self.lm_head
        else:
            self.prefill_layers = [
                (_fast_call(b.attn_norm), _fast_call(b.attn.qkv), _fast_call(b.attn.o_proj),
                 _fast_call(b.mlp_norm), _fast_mlp(b.mlp))
                for b in m.blocks
            ]  # fmt: skip
            self.prefill_head = _fast_call(m.lm_head)

    def _qk_norm(
        self, attn: nn.Module, plain: tuple[torch.Tensor, torch.Tensor, float] | None
    ) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """QK-norm of the H query heads and Hkv key heads of a step ([B, H + Hkv, D]) as one
        normalisation and one multiply by the two weights stacked per head (instead of two norms
        and a concatenation). None when the model has no QK-norm; the module as it is when it
        is not a plain RMSNorm (`plain`: `_plain_qk_norm(attn)`)."""
        qn, kn = attn.q_norm, attn.k_norm
        if qn is None:
            return None
        H, Hkv, D = self.H, self.Hkv, self.D
        if plain is None:
            return lambda qk: torch.cat((qn(qk[:, :H]), kn(qk[:, H:])), dim=1)
        eps = plain[2]
        weight = torch.cat(
            (qn.weight.detach().expand(H, D), kn.weight.detach().expand(Hkv, D))
        )  # model dtype
        return lambda qk: F.rms_norm(qk, (D,), None, eps).mul_(weight)

    def prefill(self, tokens: torch.Tensor, lengths: list[int], slots: list[int]) -> torch.Tensor:
        """Whole prompts into empty cache rows: tokens [N, T] (right-padded; row i holds
        lengths[i] real tokens) go to cache rows `slots`, positions 0..T-1. Returns the logits of
        each row's last real token, [N, vocab] float32 (the cache's `pos` is left to the caller).

        Every row starts at position 0, so plain causal attention over the prompt itself is all
        that is needed — no mask, no reading of the cache — and the padding at the end of a
        shorter row is never seen by its real tokens (it comes after them). Its keys/values land
        past the row's length, where the decode step's position mask ignores them.
        """
        N, T = tokens.shape
        H, Hkv, D = self.H, self.Hkv, self.D
        m = self.model
        cos, sin = self.cos_table[:T][:, None], self.sin_table[:T][:, None]  # [T, 1, D]
        dev = tokens.device
        rows = torch.as_tensor(slots, device=dev)
        contiguous = slots == list(range(slots[0], slots[0] + N))
        x = m.wte(tokens)  # [N, T, C]
        for layer, (attn_norm, qkv, o_proj, mlp_norm, mlp) in enumerate(self.prefill_layers):
            a = m.blocks[layer].attn
            h = qkv(attn_norm(x)).view(N, T, H + 2 * Hkv, D)
            q, k, v = h[:, :, :H], h[:, :, H : H + Hkv], h[:, :, H + Hkv :]
            if a.q_norm is not None:
                q, k = a.q_norm(q), a.k_norm(k)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [N, heads, T, D]
            kc, vc = self.cache.k[layer], self.cache.v[layer]
            if contiguous:
                kc[slots[0] : slots[0] + N, :, :T] = k
                vc[slots[0] : slots[0] + N, :, :T] = v
            else:  # index_put does not cast (slicing does): a float16 cache takes float16 keys/values
                kc[rows, :, :T] = k.to(kc.dtype)
                vc[rows, :, :T] = v.to(vc.dtype)
            if Hkv != H:
                k, v = k.repeat_interleave(H // Hkv, dim=1), v.repeat_interleave(H // Hkv, dim=1)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=T > 1)
            x = x + o_proj(y.transpose(1, 2).reshape(N, T, H * D))
            x = x + mlp(mlp_norm(x))
        last = x[torch.arange(N, device=dev), torch.as_tensor(lengths, device=dev) - 1]  # [N, C]
        return softcap(self.prefill_head(self.norm_f(last)), self.config.logit_softcap).float()

    def prefill_from(self, ids: list[list[int]], slots: list[int], starts: list[int]) -> torch.Tensor:
        """The rest of several prompts into cache rows that already hold the keys/values of their
        first tokens (a cached prefix): row i's ids[i] go to positions starts[i].. of cache row
        slots[i] and attend to that row's cached prefix and, causally, to each other. Returns each
        row's last-token logits, [N, vocab] float32. This is what makes prefix caching pay: only
        the new tokens are computed — for every admitted prompt in one pass, like `prefill`.

        The suffixes are right-padded to the longest, T. Query t of row i sits at position
        starts[i] + t and sees the row's keys at positions ≤ its own (a mask [N, 1, T, L] over the
        first L positions of the rows). Only real tokens' keys/values are written to the cache,
        with one `index_copy_` into its flat view, so padding never lands anywhere.
        """
        N, T = len(ids), max(len(i) for i in ids)
        H, Hkv, D = self.H, self.Hkv, self.D
        m = self.model
        dev = self.cache.k.device
        S = self.cache.max_len
        lengths = torch.tensor([len(i) for i in ids], device=dev)
        start = torch.tensor(starts, device=dev)
        tokens = torch.zeros(N, T, dtype=torch.long, device=dev)
        for i, row in enumerate(ids):
            tokens[i, : len(row)] = torch.tensor(row, device=dev)
        t = torch.arange(T, device=dev)
        pos = start[:, None] + t  # [N, T] each query's position
        real = t[None, :] < lengths[:, None]  # [N, T] not padding
        pos_safe = pos.clamp(max=S - 1)  # padding may run past the cache: its rotary angle is unused
        cos, sin = self.cos_table[pos_safe][:, :, None], self.sin_table[pos_safe][:, :, None]  # [N, T, 1, D]
        L = int((start + lengths).max())
        visible = (self.positions[:L][None, None, :] <= pos[:, :, None])[:, None]  # [N, 1, T, L]
        rows = torch.as_tensor(slots, device=dev)
        # flat cache rows of every real (row, position, kv head): ((slot·Hkv + h)·S + position)
        write_at = (self.offsets[rows][:, None, :] + pos[:, :, None])[real].reshape(-1)  # [n_real·Hkv]
        x = m.wte(tokens)  # [N, T, C]
        cache_dtype = self.cache.k.dtype
        for layer, (attn_norm, qkv, o_proj, mlp_norm, mlp) in enumerate(self.prefill_layers):
            a = m.blocks[layer].attn
            h = qkv(attn_norm(x)).view(N, T, H + 2 * Hkv, D)
            q, k, v = h[:, :, :H], h[:, :, H : H + Hkv], h[:, :, H + Hkv :]
            if a.q_norm is not None:
                q, k = a.q_norm(q), a.k_norm(k)
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)  # [N, T, heads, D]
            self.k_flat[layer].index_copy_(0, write_at, k[real].reshape(-1, D).to(cache_dtype))
            self.v_flat[layer].index_copy_(0, write_at, v[real].reshape(-1, D).to(cache_dtype))
            keys = self.cache.k[layer][rows, :, :L].to(q.dtype)  # [N, Hkv, L, D]
            values = self.cache.v[layer][rows, :, :L].to(q.dtype)
            if Hkv != H:
                keys, values = (
                    keys.repeat_interleave(H // Hkv, dim=1),
                    values.repeat_interleave(H // Hkv, dim=1),
                )
            y = F.scaled_dot_product_attention(q.transpose(1, 2), keys, values, attn_mask=visible)
            x = x + o_proj(y.transpose(1, 2).reshape(N, T, H * D))
            x = x + mlp(mlp_norm(x))
        last = x[torch.arange(N, device=dev), lengths - 1]  # [N, C]
        return softcap(self.prefill_head(self.norm_f(last)), self.config.logit_softcap).float()

    def __call__(
        self, tokens: torch.Tensor, pos: torch.Tensor, n_rows: int, kv_len: int, same_pos: int | None = None
    ) -> torch.Tensor:
        B, H, Hkv, G, D = n_rows, self.H, self.Hkv, self.G, self.D
        tokens, pos = tokens[:B], pos[:B]
        x = self.model.wte(tokens)  # [B, C]
        if self.step_kernel is not None and self.add_norm is not None:
            return self._kernel_step(x, pos, B)
        if self.step_kernel is not None:  # the loop below, from qkv to attention, in one C++ call
            for layer, (attn_norm, qkv, _, o_proj, mlp_norm, mlp) in enumerate(self.layers):
                h = qkv(attn_norm(x)).view(B, H + 2 * Hkv, D)
                qw, kw, eps = self.qk_weights[layer]
                kc, vc = self.cache.k[layer], self.cache.v[layer]
                y = self.step_kernel(h, qw, kw, eps, self.cos_table, self.sin_table, pos, kc, vc, self.scale)
                x = x + o_proj(y.view(B, H * D))
                x = x + mlp(mlp_norm(x))
            return softcap(self.lm_head(self.norm_f(x)), self.config.logit_softcap).float()
        cos, sin = self.cos_table[pos][:, None], self.sin_table[pos][:, None]  # [B, 1, D]
        bias = None
        if same_pos is None:
            write_at = (self.offsets[:B] + pos[:, None]).reshape(-1)  # [B*Hkv] rows of the flat cache
        if self.kernel is not None:
            lengths = pos + 1  # each row attends to its own positions 0..pos: no mask needed
        elif same_pos is None:
            # Additive mask [B, 1, 1, kv_len]: 0 where key j <= the row's position, -inf after it.
            visible = self.positions[:kv_len][None, :] <= pos[:, None]
            bias = torch.zeros(visible.shape, dtype=x.dtype, device=x.device).masked_fill_(
                ~visible, float("-inf")
            )
            bias = bias[:, None, None, :]
        cache_dtype = self.cache.k.dtype

        for layer, (attn_norm, qkv, qk_norm, o_proj, mlp_norm, mlp) in enumerate(self.layers):
            h = qkv(attn_norm(x)).view(B, H + 2 * Hkv, D)
            qk, v = h[:, : H + Hkv], h[:, H + Hkv :]
            if qk_norm is not None:
                qk = qk_norm(qk)
            qk = rotate(qk, cos, sin)
            q, k = qk[:, :H], qk[:, H:]
            kc, vc = self.cache.k[layer], self.cache.v[layer]  # [Bmax, Hkv, S, D]
            if same_pos is not None:
                kc[:B, :, same_pos] = k
                vc[:B, :, same_pos] = v
            else:
                self.k_flat[layer].index_copy_(0, write_at, k.reshape(B * Hkv, D).to(cache_dtype))
                self.v_flat[layer].index_copy_(0, write_at, v.reshape(B * Hkv, D).to(cache_dtype))
            # The G query heads of each key/value head act as G query rows: [B, Hkv, G, D].
            q = q.reshape(B, Hkv, G, D)
            if self.kernel is not None:
                y = self.kernel(q.contiguous(), kc, vc, lengths, self.scale)
            else:
                keys, values = kc[:B, :, :kv_len], vc[:B, :, :kv_len]  # [B, Hkv, L, D] views
                if keys.dtype != q.dtype:  # a reduced-precision cache without the kernel
                    keys, values = keys.to(q.dtype), values.to(q.dtype)
                y = F.scaled_dot_product_attention(q, keys, values, attn_mask=bias)
            x = x + o_proj(y.reshape(B, H * D))
            x = x + mlp(mlp_norm(x))

        return softcap(self.lm_head(self.norm_f(x)), self.config.logit_softcap).float()

    def _kernel_step(self, x: torch.Tensor, pos: torch.Tensor, B: int) -> torch.Tensor:
        """`__call__` on the C++ kernels (a float32 model, the float16 cache, plain RMSNorms): per
        layer the qkv projection, `decode_attention_step` (QK-norm, rotary, cache write, attention),
        the output projection and the MLP, with each residual add and the RMSNorm after it in one
        `add_rms_norm` call — x is the residual stream, n what the next projection reads."""
        H, Hkv, D = self.H, self.Hkv, self.D
        add_norm, norms = self.add_norm, self.norm_params
        n = add_norm(x, self.no_delta, *norms[0])  # the first layer's attention norm
        for layer, (_, qkv, _, o_proj, _, mlp) in enumerate(self.layers):
            h = qkv(n).view(B, H + 2 * Hkv, D)
            qw, kw, eps = self.qk_weights[layer]
            kc, vc = self.cache.k[layer], self.cache.v[layer]
            y = self.step_kernel(h, qw, kw, eps, self.cos_table, self.sin_table, pos, kc, vc, self.scale)
            n = add_norm(x, o_proj(y.view(B, H * D)), *norms[2 * layer + 1])  # x += attention; MLP norm
            n = add_norm(x, mlp(n), *norms[2 * layer + 2])  # x += MLP; the next (or final) norm
        return softcap(self.lm_head(n), self.config.logit_softcap).float()


def static_decode_fn(decoder: Decoder) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The decode step with fixed shapes (all slots, the full cache length, always masked), the
    form `torch.compile` turns into one graph: (tokens [Bmax], pos [Bmax]) -> logits [Bmax, V]."""
    B, S = decoder.cache.k.size(1), decoder.cache.max_len

    def step(tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return decoder(tokens, pos, B, S, same_pos=None)

    return step


@torch.inference_mode()
def decode_loss(
    model: GPT,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    weights: str | None = None,
    cache_dtype: torch.dtype | None = None,
) -> float:
    """Mean next-token cross-entropy of the *decode step* (weights in `weights`, the KV cache in
    `cache_dtype`, default the model's), fed the inputs one position at a time through the cache
    (teacher forcing): the quality of exactly the logits the engine samples from. With the
    defaults it equals `GPT.forward`'s loss."""
    total, count = 0.0, 0
    for x, y in batches:
        B, T = x.shape
        cache = KVCache.allocate(model.config, B, T, x.device, cache_dtype or model.wte.weight.dtype)
        dec = Decoder(model, cache, weights)
        pos = torch.zeros(B, dtype=torch.long, device=x.device)
        for t in range(T):
            logits = dec(x[:, t], pos, B, t + 1, same_pos=t)
            pos += 1
            total += float(F.cross_entropy(logits, y[:, t], ignore_index=-1, reduction="sum"))
            count += int((y[:, t] != -1).sum())
    return total / count
