"""Training: optimizers (AdamW, Muon), learning-rate schedules, the run config and the training loop.

    from fornalha.train import load_config, train
    cfg = load_config(preset="tiny", overrides=["train.max_steps=200"])
    summary = train(cfg, data="shards/", out="runs/a")

`train` and `load_config` are imported lazily so that `import fornalha.train.optim` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunConfig", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("RunConfig", "load_config"):
        from fornalha.train import config

        return getattr(config, name)
    if name == "train":
        from fornalha.train.trainer import train

        return train
    raise AttributeError(name)
