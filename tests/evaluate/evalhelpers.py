"""Helpers for the evaluation tests (imported by the test modules beside it): a byte-level stand-in tokenizer, a model whose logits are set
by hand (a bigram table), tiny GPTs, and run / dataset folders built on the spot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from fornalha.model import GPT, ModelConfig

N_SPECIAL = 7  # <|bos|>, <|endoftext|>, <|pad|>, <|system|>, <|user|>, <|assistant|>, <|end|>


class ByteTokenizer:
    """One token per UTF-8 byte: id = 7 + byte; ids 0..6 are the special tokens (bos = 0)."""

    kind = "byte"
    vocab_size = N_SPECIAL + 256
    bos_id = 0
    eos_id = 1

    def encode(self, text: str) -> list[int]:
        return [N_SPECIAL + b for b in text.encode("utf-8")]

    def decode(self, ids) -> str:
        return bytes(i - N_SPECIAL for i in ids if i >= N_SPECIAL).decode("utf-8", errors="replace")

    def token_bytes(self) -> np.ndarray:
        out = np.ones(self.vocab_size, dtype=np.int64)
        out[:N_SPECIAL] = 0
        return out


class BigramModel(nn.Module):
    """A "language model" whose next-token logits depend only on the current token: row
    ``table[tok]``. Lets a test decide exactly what the model prefers. Same forward contract as GPT."""

    def __init__(self, vocab_size: int, block_size: int = 64) -> None:
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=1, n_embd=8)
        self.table = nn.Parameter(torch.zeros(vocab_size, vocab_size))

    def forward(self, idx, targets=None, loss_reduction="mean"):
        logits = self.table[idx]
        loss = None
        if targets is not None:
            loss = F.cross_entropy(
                logits.view(-1, logits.size(-1)),
                targets.reshape(-1),
                ignore_index=-1,
                reduction=loss_reduction,
            )
            if loss_reduction == "none":
                loss = loss.view(idx.shape)
        return logits, loss

    def logprob(self, prev: int, nxt: int) -> float:
        return float(torch.log_softmax(self.table[prev].detach().double(), dim=-1)[nxt])


def tiny_gpt(vocab_size: int, block_size: int = 32, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    return GPT(cfg).eval()


def direct_nll(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """-log p(ids[t+1] | ids[:t+1]) for every t, in one forward pass (ids must fit the context)."""
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids[:-1]]))
    lp = torch.log_softmax(logits[0].double(), dim=-1)
    return -lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]


def make_run(root: Path, text: str, seed: int = 0, steps: int = 0) -> tuple[Path, GPT, object]:
    """A run folder (tokenizer/, checkpoints/best/) holding a tiny GPT on a char tokenizer of ``text``,
    optionally trained ``steps`` steps on ``text``."""
    from fornalha.checkpoint import model_state_for_saving, save_checkpoint
    from fornalha.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train([text])
    model = tiny_gpt(tok.vocab_size, seed=seed)
    if steps:
        train_on(model, [tok.bos_id, *tok.encode(text)], steps)
    save_checkpoint(
        root / "checkpoints" / "best",
        model_state_for_saving(model),
        {"model_config": model.config.to_dict(), "step": steps},
    )
    tok.save(root / "tokenizer")
    return root, model, tok


def train_on(model: GPT, ids: list[int], steps: int, batch_size: int = 8, lr: float = 3e-3) -> None:
    """A few dozen AdamW steps on random windows of ``ids`` (seeded)."""
    g = torch.Generator().manual_seed(0)
    data = torch.tensor(ids)
    T = model.config.block_size
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, len(data) - T - 1, (batch_size,), generator=g)
        x = torch.stack([data[s : s + T] for s in starts])
        y = torch.stack([data[s + 1 : s + T + 1] for s in starts])
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
