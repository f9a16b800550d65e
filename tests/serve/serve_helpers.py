"""A run folder with a tiny random model and a live `fornalha serve` in a subprocess."""

from __future__ import annotations

from pathlib import Path

import torch

import live_server
from fornalha.checkpoint import model_state_for_saving, save_checkpoint
from fornalha.model import GPT, ModelConfig
from fornalha.tokenizer.char import CharTokenizer

TEXT = "the quick brown fox jumps over the lazy dog. é ü ç! 0123456789\nABCDEFGHIJKLMNOPQRSTUVWXYZ,;:?"
KEY = "sk-test-key-1"


def make_run(root: Path, block_size: int = 160) -> Path:
    """A run folder: a character tokenizer and a random tiny model (sharp logits: no greedy near-ties)."""
    run = root / "run"
    tok = CharTokenizer.train([TEXT])
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2,
                      n_embd=32, init_std=0.3)  # fmt: skip
    model = GPT(cfg)
    save_checkpoint(run / "checkpoints" / "best", model_state_for_saving(model),
                    {"model_config": model.config.to_dict(), "step": 0})  # fmt: skip
    return run


class Server(live_server.Server):
    """`fornalha serve` of a run with the serving tests' key (tests/live_server.py)."""

    def __init__(
        self,
        run: Path,
        *args: str,
        env: dict[str, str] | None = None,
        timeout: float = 60,
        new_session: bool = False,
    ) -> None:
        super().__init__(run, *args, key=KEY, env=env, timeout=timeout, new_session=new_session)
