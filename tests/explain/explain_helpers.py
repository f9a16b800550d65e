"""Helpers of the explain tests: a tiny run folder and a check that a screenshot is not blank."""

from __future__ import annotations

from pathlib import Path


def make_run(root: Path, block_size: int = 64) -> Path:
    """A run folder the way `fornalha train` leaves it: tokenizer/ and checkpoints/best/."""
    import torch

    from fornalha.checkpoint import model_state_for_saving, save_checkpoint
    from fornalha.model import GPT, ModelConfig
    from fornalha.tokenizer.char import CharTokenizer

    run = root / "run"
    tok = CharTokenizer.train(["the quick brown fox jumps over the lazy dog. é ü ç! 0123456789\n"])
    tok.save(run / "tokenizer")
    torch.manual_seed(0)
    cfg = ModelConfig(
        vocab_size=tok.vocab_size, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32
    )
    model = GPT(cfg)
    with torch.no_grad():  # zero-initialised projections would make every block the identity
        for p in model.parameters():
            if p.ndim == 2 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    save_checkpoint(
        run / "checkpoints" / "best",
        model_state_for_saving(model),
        {"model_config": cfg.to_dict(), "step": 0},
    )
    return run


def assert_not_blank(path: Path) -> None:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    assert pixels.std() > 10, f"{path} looks blank (pixel std {pixels.std():.1f})"
