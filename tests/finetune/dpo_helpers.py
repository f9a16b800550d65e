"""Helpers of the DPO and LoRA tests: a tiny run folder and a preference task a tiny model can learn."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "paper",
    "glass",
    "light",
    "music",
    "garden",
    "window",
    "table",
    "bread",
    "honey",
]


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Pairs whose rule is easy to learn and generalises to unseen prompts: the preferred reply
    starts with 'yes,' and the other with 'no,' (the rest of both replies is random words)."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        prompt = f"q{i}: " + " ".join(rng.choice(WORDS) for _ in range(3)) + "?"
        tail_a = " ".join(rng.choice(WORDS) for _ in range(2))
        tail_b = " ".join(rng.choice(WORDS) for _ in range(2))
        pairs.append(
            {
                "messages": [{"role": "user", "content": prompt}],
                "chosen": f"yes, {tail_a}",
                "rejected": f"no, {tail_b}",
            }
        )
    return pairs


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def make_run(root: Path, texts: list[str], seed: int = 0, block_size: int = 64) -> Path:
    """A run folder (config.yaml, tokenizer/, checkpoints/best/) with a tiny random GPT and a char
    tokenizer over `texts`: what `fornalha finetune dpo --run` reads."""
    from fornalha.checkpoint import model_state_for_saving, save_checkpoint
    from fornalha.model import GPT
    from fornalha.tokenizer.char import CharTokenizer
    from fornalha.train.config import load_config

    cfg = load_config(
        "tiny",
        None,
        [f"model.block_size={block_size}", "model.n_layer=2", "model.n_head=2", "model.n_embd=32",
         "model.dropout=0.1", "train.device=cpu", "train.progress=false", "train.dtype=float32"],
    )  # fmt: skip
    tok = CharTokenizer.train(texts)
    torch.manual_seed(seed)
    model = GPT(cfg.model_cfg(vocab_size=tok.vocab_size))
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.yaml").write_text(cfg.to_yaml())
    tok.save(root / "tokenizer")
    save_checkpoint(
        root / "checkpoints" / "best",
        model_state_for_saving(model),
        {"model_config": model.config.to_dict(), "step": 0},
    )
    return root


def pair_texts(pairs: list[dict]) -> list[str]:
    return [p["messages"][0]["content"] + p["chosen"] + p["rejected"] for p in pairs]
