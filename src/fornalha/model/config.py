"""`ModelConfig`: every number that defines the Transformer's shape, saved with every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from fornalha.errors import ConfigError

MLP_KINDS = ("swiglu", "relu2")


@dataclass
class ModelConfig:
    vocab_size: int = 4096
    block_size: int = 256  # longest context the model is built for (rotary tables, KV cache)
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int | None = None  # None: as many as n_head (multi-head); fewer: grouped-query attention
    n_embd: int = 128
    mlp: str = "swiglu"  # "swiglu" (maps onto Hugging Face Llama) or "relu2" (modded-nanogpt)
    mlp_hidden: int | None = None  # None: 8/3 * n_embd for swiglu (rounded up to 32), 4 * n_embd for relu2
    tie_embeddings: bool = True  # the LM head reuses the token-embedding matrix
    qk_norm: bool = False  # RMSNorm on queries and keys before rotary (stabilises training)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    dropout: float = 0.0
    logit_softcap: float | None = None  # cap * tanh(logits / cap), as in Gemma 2 / modded-nanogpt
    init_std: float = 0.02
    zero_init_proj: bool = False  # residual output projections (and an untied head) start at zero

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.mlp_hidden is None:
            if self.mlp == "swiglu":
                hidden = int(8 * self.n_embd / 3)
                self.mlp_hidden = 32 * ((hidden + 31) // 32)
            else:
                self.mlp_hidden = 4 * self.n_embd
        self.validate()

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"model config: {msg}")

        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            need(
                int(getattr(self, name)) > 0,
                f"{name} must be a positive integer, got {getattr(self, name)!r}",
            )
        need(
            self.n_embd % self.n_head == 0,
            f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})",
        )
        need(self.head_dim % 2 == 0, f"head_dim = n_embd / n_head = {self.head_dim} must be even for rotary")
        assert self.n_kv_head is not None
        need(
            0 < self.n_kv_head <= self.n_head and self.n_head % self.n_kv_head == 0,
            f"n_kv_head ({self.n_kv_head}) must divide n_head ({self.n_head})",
        )
        need(self.mlp in MLP_KINDS, f"mlp must be one of {MLP_KINDS}, got {self.mlp!r}")
        need(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        need(self.logit_softcap is None or self.logit_softcap > 0, "logit_softcap must be positive or null")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"model config: unknown keys {unknown}; known keys are {sorted(known)}")
        return cls(**d)
