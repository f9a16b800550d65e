"""The Transformer: `ModelConfig`, `GPT` and its `KVCache`."""

from fornalha.model.attention_maps import attention_maps
from fornalha.model.config import ModelConfig
from fornalha.model.gpt import GPT, KVCache

__all__ = ["GPT", "KVCache", "ModelConfig", "attention_maps"]
