"""Test helpers for the inference tests: a byte-level stand-in tokenizer and small random models."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch

from fornalha.model import GPT, ModelConfig

SPECIALS = ("<|bos|>", "<|endoftext|>", "<|pad|>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>")


class ByteTokenizer:
    """The seven reserved special tokens, then one token per byte (id = 7 + byte): every UTF-8
    character of two or more bytes spans several tokens, which is what streaming must survive."""

    kind = "byte"

    def __init__(self) -> None:
        self.special_ids = {t: i for i, t in enumerate(SPECIALS)}
        self.bos_id, self.eos_id = 0, 1
        self.vocab_size = len(SPECIALS) + 256

    def encode(self, text: str) -> list[int]:
        return [7 + b for b in text.encode("utf-8")]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        return b"".join(bytes([i - 7]) if i >= 7 else SPECIALS[i].encode() for i in ids)

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        return self.special_ids.get(token)

    def encode_chat(
        self, messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True
    ) -> list[int]:
        ids = [self.bos_id]
        for m in messages:
            ids += [
                self.special_ids[f"<|{m['role']}|>"],
                *self.encode(m["content"]),
                self.special_ids["<|end|>"],
            ]
        if add_generation_prompt:
            ids.append(self.special_ids["<|assistant|>"])
        return ids


def tiny_config(**kw) -> ModelConfig:
    base = dict(vocab_size=263, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32)
    base.update(kw)
    return ModelConfig(**base)


def random_model(seed: int = 0, **kw) -> GPT:
    """A random model with sharper-than-init logits (larger init_std), so greedy decisions are not
    near-ties that float rounding could flip."""
    torch.manual_seed(seed)
    kw.setdefault("init_std", 0.3)
    return GPT(tiny_config(**kw)).eval()


def decode_steps(model: GPT, dec, cache, ref, n: int = 4):
    """n random decode steps: `dec` (a Decoder over `cache`) against GPT.forward over `ref`,
    rows at their own positions. Yields (decoder logits, GPT.forward logits), each [rows, vocab]."""
    rows = cache.pos.numel()
    for _ in range(n):
        tok = torch.randint(7, 263, (rows,))
        want, _ = model(tok[:, None], kv_cache=ref)
        pos = cache.pos.clone()
        got = dec(tok, pos, rows, int(pos.max()) + 1)
        cache.pos += 1
        yield got, want[:, 0].float()
