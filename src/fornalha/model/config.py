"""`ModelConfig`: every number that defines the Transformer's shape, saved with every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from fornalha.errors import ConfigError

MLP_KINDS = ("swiglu", "relu2")


def _f(default: Any, help: str) -> Any:
    """A dataclass field with a default and its one-line help."""
    return field(default=default, metadata={"help": help})


def help_of(cls: type, name: str) -> str:
    """The help text of a config dataclass's field (ModelConfig's, for the YAML config and docs)."""
    return next((f.metadata.get("help", "") for f in fields(cls) if f.name == name), "")


@dataclass
class ModelConfig:
    # Each field carries its one-line help (`help_of`); the training config's `model:` section and
    # the generated key table (docs/config.md) read it from here.
    vocab_size: int = _f(4096, "vocabulary size; null: taken from the tokenizer")
    block_size: int = _f(256, "longest context (tokens) the model is built for (rotary tables, KV cache)")
    n_layer: int = _f(4, "Transformer blocks")
    n_head: int = _f(4, "query heads per attention layer")
    n_kv_head: int | None = _f(None, "key/value heads (grouped-query attention); null: n_head")
    n_embd: int = _f(128, "width of the residual stream")
    mlp: str = _f("swiglu", "MLP kind: swiglu (Llama) or relu2 (modded-nanogpt)")
    mlp_hidden: int | None = _f(
        None, "MLP hidden width; null: 8/3·n_embd rounded up to 32 (swiglu) or 4·n_embd (relu2)"
    )
    tie_embeddings: bool = _f(True, "LM head shares the token-embedding matrix")
    qk_norm: bool = _f(False, "RMSNorm on queries and keys before rotary (stabilises training)")
    rope_theta: float = _f(10000.0, "rotary base frequency")
    norm_eps: float = _f(1e-5, "RMSNorm epsilon")
    dropout: float = _f(0.0, "dropout probability (0 for pretraining)")
    logit_softcap: float | None = _f(None, "cap·tanh(logits/cap), as in Gemma 2 / modded-nanogpt; null: off")
    init_std: float = _f(0.02, "std of the normal initialisation")
    zero_init_proj: bool = _f(False, "residual output projections (and an untied head) start at zero")

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
