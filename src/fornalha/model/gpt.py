"""A modern GPT: a decoder-only Transformer you can read top to bottom.

    tokens ─► wte ─► [ Block ] × n_layer ─► norm_f ─► lm_head ─► logits

    Block(x):  x = x + Attention(RMSNorm(x))      # pre-norm residual stream
               x = x + MLP(RMSNorm(x))

What makes it "modern" compared with GPT-2 (and maps it onto the Hugging Face Llama architecture):
  * RMSNorm instead of LayerNorm, no biases anywhere;
  * rotary position embeddings (RoPE) instead of a learned position table;
  * grouped-query attention: `n_kv_head` key/value heads shared by `n_head` query heads;
  * SwiGLU MLP (Llama) or ReLU² (modded-nanogpt);
  * optional QK-norm and logit soft-capping, both from the modded-nanogpt speedruns;
  * attention through `F.scaled_dot_product_attention`, which picks flash kernels on GPU.

The same forward pass serves training (whole sequences, causal mask) and inference (a `KVCache`
holds keys and values of earlier tokens; each row of the batch has its own position, so rows of
different lengths can be prefilled together and advance independently).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from fornalha.model.config import ModelConfig

# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    """x / sqrt(mean(x²) + eps) * weight. Cheaper than LayerNorm (no mean subtraction, no bias)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # weight in x's dtype: under bf16 autocast the fused kernel needs both to match
        return F.rms_norm(x, (x.size(-1),), self.weight.to(x.dtype), self.eps)


def rotary_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables of shape [max_len, head_dim // 2] for rotary position embeddings.

    Pair i of each head rotates by angle pos * theta^(-2i / head_dim): low pairs spin fast
    (fine position), high pairs slowly (coarse position).
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [B, H, T, D] by position. Llama's "rotate half" layout: dimension i pairs with i + D/2.

    cos and sin are [T, D/2] (every row at the same positions) or [B, 1, T, D/2] (per-row positions).
    """
    d = x.size(-1) // 2
    x1, x2 = x[..., :d], x[..., d:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def softcap(logits: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Logit soft-capping (Gemma 2, modded-nanogpt): cap · tanh(logits / cap), smooth, in (-cap, cap).
    None: the logits unchanged."""
    return logits if cap is None else cap * torch.tanh(logits / cap)


# --------------------------------------------------------------------------------------------
# KV cache
# --------------------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Preallocated keys and values of earlier tokens, one slot per batch row.

    k, v: [n_layer, batch, n_kv_head, max_len, head_dim]; `pos[b]` counts the tokens row b holds.
    Rows are independent: each starts, advances and is reset on its own (what continuous
    batching needs); positions past `pos[b]` may hold stale values and are masked out.
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: torch.Tensor  # [batch] int64

    @classmethod
    def allocate(
        cls,
        config: ModelConfig,
        batch_size: int,
        max_len: int | None = None,
        device=None,
        dtype=torch.float32,
    ) -> KVCache:
        max_len = max_len or config.block_size
        if max_len > config.block_size:
            raise ValueError(f"KV cache length {max_len} exceeds the model's block_size {config.block_size}")
        shape = (config.n_layer, batch_size, config.n_kv_head, max_len, config.head_dim)
        return cls(
            k=torch.zeros(shape, device=device, dtype=dtype),
            v=torch.zeros(shape, device=device, dtype=dtype),
            pos=torch.zeros(batch_size, dtype=torch.long, device=device),
        )

    @property
    def max_len(self) -> int:
        return self.k.size(3)

    def reset(self, rows: torch.Tensor | list[int] | None = None) -> None:
        """Forget the tokens of some rows (all rows when None); their slots can take new sequences."""
        if rows is None:
            self.pos.zero_()
        else:
            self.pos[torch.as_tensor(rows, device=self.pos.device, dtype=torch.long)] = 0


# --------------------------------------------------------------------------------------------
# Attention and MLP
# --------------------------------------------------------------------------------------------


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.n_head, self.n_kv_head, self.head_dim = config.n_head, config.n_kv_head, config.head_dim
        q_dim, kv_dim = self.n_head * self.head_dim, self.n_kv_head * self.head_dim
        self.qkv = nn.Linear(config.n_embd, q_dim + 2 * kv_dim, bias=False)  # fused q | k | v
        self.o_proj = nn.Linear(q_dim, config.n_embd, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.k_norm = RMSNorm(self.head_dim, config.norm_eps) if config.qk_norm else None
        self.dropout = config.dropout

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        kv_cache: KVCache | None = None,
        positions: torch.Tensor | None = None,
        attn_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(
            [self.n_head * self.head_dim, self.n_kv_head * self.head_dim, self.n_kv_head * self.head_dim],
            dim=-1,
        )
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)  # [B, Hkv, T, D]
        v = v.view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)

        mask, is_causal = None, True
        if attn_mask is not None:  # packed sequences: the caller's mask (causal within each document)
            mask, is_causal = attn_mask, False
        if kv_cache is not None:
            # Write this step's keys/values at each row's own positions, then attend over the cache.
            assert positions is not None
            rows = torch.arange(B, device=x.device)[:, None]
            kc, vc = kv_cache.k[self.layer_idx], kv_cache.v[self.layer_idx]  # [B, Hkv, S, D]
            kc[rows, :, positions] = k.transpose(1, 2).to(kc.dtype)
            vc[rows, :, positions] = v.transpose(1, 2).to(vc.dtype)
            k, v = kc.to(q.dtype), vc.to(q.dtype)
            # key j is visible to the query at position p iff j <= p
            mask = torch.arange(kv_cache.max_len, device=x.device)[None, None, :] <= positions[:, :, None]
            mask, is_causal = mask[:, None], False  # [B, 1, T, S]

        if self.n_kv_head != self.n_head:  # grouped-query attention: share each k/v head among a group
            k = k.repeat_interleave(self.n_head // self.n_kv_head, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv_head, dim=1)

        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=is_causal and T > 1,
            dropout_p=self.dropout if self.training else 0.0,
        )
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)
        return self.o_proj(y)


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)).  ReLU²: down(relu(up(x))²)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.kind = config.mlp
        hidden = config.mlp_hidden
        assert hidden is not None
        self.gate_proj = nn.Linear(config.n_embd, hidden, bias=False) if self.kind == "swiglu" else None
        self.up_proj = nn.Linear(config.n_embd, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, config.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_proj is not None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(F.relu(self.up_proj(x)).square())


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.attn = CausalSelfAttention(config, layer_idx)
        self.mlp_norm = RMSNorm(config.n_embd, config.norm_eps)
        self.mlp = MLP(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, cos, sin, kv_cache=None, positions=None, attn_mask=None):
        x = x + self.dropout(self.attn(self.attn_norm(x), cos, sin, kv_cache, positions, attn_mask))
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class GPT(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.blocks = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.norm_f = RMSNorm(config.n_embd, config.norm_eps)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one matrix reads and writes tokens
        cos, sin = rotary_tables(config.head_dim, config.block_size, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    # ---- initialisation ---------------------------------------------------------------------
    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) everywhere; residual output projections scaled by 1/sqrt(2·n_layer)
        (GPT-2) so the residual stream does not grow with depth, or zero (modded-nanogpt) so every
        block starts as the identity."""
        c = self.config
        for name, p in self.named_parameters():
            if name.endswith("norm.weight") or name.endswith("norm_f.weight"):
                nn.init.ones_(p)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                if c.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, mean=0.0, std=c.init_std / math.sqrt(2 * c.n_layer))
            elif name == "lm_head.weight" and c.zero_init_proj:
                nn.init.zeros_(p)
            else:
                nn.init.normal_(p, mean=0.0, std=c.init_std)

    # ---- bookkeeping ------------------------------------------------------------------------
    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count (a tied matrix counts once). non_embedding drops the token embedding."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.wte.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), as in the PaLM paper's appendix B:
        6 · (matmul parameters) + 12 · n_layer · n_head · head_dim · seq_len (attention scores)."""
        c = self.config
        seq_len = seq_len or c.block_size
        matmul_params = self.num_params() - self.wte.weight.numel()
        if c.tie_embeddings:  # the tied matrix is also the LM-head matmul
            matmul_params += self.wte.weight.numel()
        matmul_params -= sum(p.numel() for n, p in self.named_parameters() if "norm" in n)
        return 6.0 * matmul_params + 12.0 * c.n_layer * c.n_head * c.head_dim * seq_len

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by role, for optimizers that treat them differently (Muon takes 'matrix')."""
        groups: dict[str, list[nn.Parameter]] = {"matrix": [], "embedding": [], "head": [], "vector": []}
        for name, p in self.named_parameters():  # a tied head is the embedding, listed once
            if name.startswith("wte."):
                groups["embedding"].append(p)
            elif name.startswith("lm_head."):
                groups["head"].append(p)
            elif p.ndim == 2:
                groups["matrix"].append(p)
            else:
                groups["vector"].append(p)
        return groups

    # ---- forward ----------------------------------------------------------------------------
    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        n_new: torch.Tensor | None = None,
        loss_reduction: str = "mean",
        doc_ids: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: [B, T] token ids. targets: [B, T] next-token ids, -1 where no loss is wanted.

        doc_ids: [B, T] which document each token belongs to, for rows that pack several documents
        (fine-tuning packs conversations): a token then attends only to earlier tokens of its own
        document (document masking), so a row computes exactly what each document alone would. The
        positions need no reset: rotary attention depends only on the distance between two tokens.

        With a `kv_cache`, the T tokens of row b go to positions pos[b] … pos[b]+T-1 and attend to
        everything the row already holds; afterwards pos[b] advances by n_new[b] (default T), so a
        right-padded batch of prompts of different lengths advances each row by its true length.

        Returns (logits [B, T, vocab], loss or None). Attention weights, for looking inside, come
        from `fornalha.model.attention_maps` (hooks on this same forward pass).
        """
        B, T = idx.shape
        if kv_cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens exceeds block_size {self.config.block_size}")
            positions = None
            cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        else:
            positions = kv_cache.pos[:, None] + torch.arange(T, device=idx.device)[None, :]  # [B, T]
            if int(positions.max()) >= kv_cache.max_len:
                raise ValueError(f"KV cache full: position {int(positions.max())} >= {kv_cache.max_len}")
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]  # [B,1,T,D/2]

        attn_mask = None
        if doc_ids is not None:
            if kv_cache is not None:
                raise ValueError(
                    "doc_ids (packed training rows) and kv_cache (generation) do not go together"
                )
            causal = torch.ones(T, T, dtype=torch.bool, device=idx.device).tril()
            same_doc = doc_ids[:, :, None] == doc_ids[:, None, :]  # [B, T, T]
            attn_mask = (causal & same_doc)[:, None]  # [B, 1, T, T]: True = may attend

        x = self.wte(idx)
        for block in self.blocks:
            x = block(x, cos, sin, kv_cache, positions, attn_mask)
        logits = softcap(self.lm_head(self.norm_f(x)), self.config.logit_softcap)

        if kv_cache is not None:
            kv_cache.pos += T if n_new is None else n_new.to(kv_cache.pos.device)

        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.float().view(-1, logits.size(-1)),
                targets.reshape(-1),
                ignore_index=-1,
                reduction=loss_reduction,
            )
            if loss_reduction == "none":
                loss = loss.view(B, T)
        return logits, loss

    # ---- the simplest generation loop (the fast one lives in fornalha.infer) -------------------
    @torch.no_grad()
    def generate(
        self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None
    ) -> torch.Tensor:
        """nanoGPT's loop, with a KV cache: feed the prompt once, then one token at a time."""
        B, T = idx.shape
        cache = KVCache.allocate(
            self.config, B, min(self.config.block_size, T + max_new_tokens), idx.device, self.wte.weight.dtype
        )
        logits, _ = self(idx, kv_cache=cache)
        for _ in range(max_new_tokens):
            logits = logits[:, -1, :]
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx = torch.cat((idx, nxt), dim=1)
            if idx.size(1) >= cache.max_len:
                break
            logits, _ = self(nxt, kv_cache=cache)
        return idx
