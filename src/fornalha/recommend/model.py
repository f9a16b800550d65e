"""The GPT as a sequential recommender (SASRec-style): item tokens in, next-item logits out.

Training (through the project's one training loop, as a `Task`):
    x = history[:-1], y = history[1:]       each position predicts the user's next item
    loss = cross-entropy over the full item vocabulary (padding targets are -1, ignored)
Scoring a user: feed the history (right-padded), read the logits at its last real position;
those are the scores of every item as the user's next one.
Validation during training: the validation item ranked against all items from the training
history (seen items excluded) gives NDCG@10, which chooses checkpoints/best and early stopping.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from fornalha.model.gpt import softcap
from fornalha.recommend.data import RecData, SequenceLoader, pad_right, split_leave_one_out
from fornalha.recommend.metrics import KS, hit_ndcg, target_ranks

# Presets: --set keys of the run config. SASRec on MovieLens-1M uses 2 blocks, width 50, dropout 0.2,
# histories of 200; these are the same order of size, fitted to a 2-core CPU in minutes. `tiny` is the
# best of the runs in benchmarks/LOG.md (2026-12-01, recommender tuning) on MovieTweetings: dropout 0.5
# beat 0.3, histories of 200 and width 128 did not help; 1,500 steps of 64 users = ~25 epochs.
PRESETS: dict[str, dict[str, object]] = {
    "tiny": {
        "model.block_size": 50, "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 64,
        "model.mlp": "relu2", "model.dropout": 0.5, "model.tie_embeddings": True, "model.qk_norm": True,
        "model.zero_init_proj": False, "model.logit_softcap": None,
        "train.batch_size": 64, "train.optimizer": "adamw", "train.lr": 2e-3, "train.weight_decay": 0.0,
        "train.schedule": "wsd", "train.warmup": 0.02, "train.decay": 0.3, "train.min_lr_ratio": 0.0,
        "train.max_steps": 1500, "train.eval_interval": 100, "train.patience": 8, "train.dtype": "float32",
        "train.samples": 0, "train.log_interval": 20,
    },
    "small": {
        "model.block_size": 200, "model.n_layer": 2, "model.n_head": 2, "model.n_embd": 128,
        "model.mlp": "relu2", "model.dropout": 0.2, "model.tie_embeddings": True, "model.qk_norm": True,
        "model.zero_init_proj": False, "model.logit_softcap": None,
        "train.batch_size": 128, "train.optimizer": "adamw", "train.lr": 1e-3, "train.weight_decay": 0.0,
        "train.schedule": "wsd", "train.warmup": 0.02, "train.decay": 0.3, "train.min_lr_ratio": 0.0,
        "train.max_steps": 5000, "train.eval_interval": 200, "train.patience": 8, "train.dtype": "float32",
        "train.samples": 0, "train.log_interval": 20,
    },
}  # fmt: skip


def preset_overrides(name: str) -> list[str]:
    import json

    from fornalha.errors import ConfigError

    if name not in PRESETS:
        raise ConfigError(f"unknown recommend preset {name!r}; choose one of {', '.join(PRESETS)}")
    return [f"{k}={json.dumps(v)}" for k, v in PRESETS[name].items()]


def hidden_states(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """[B, T, C] final hidden states (after the last norm): the GPT's forward pass without its head.
    In training mode the item embeddings get the model's dropout too (SASRec drops them as well)."""
    T = x.size(1)
    h = model.wte(x)
    if model.training:
        h = F.dropout(h, model.config.dropout)
    cos, sin = model.rope_cos[:T], model.rope_sin[:T]
    for block in model.blocks:
        h = block(h, cos, sin)
    return model.norm_f(h)


def next_item_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Mean next-item cross-entropy over the real (non-padding) positions of every history:
    the head runs only where there is a target, not over the padding."""
    x, y = batch
    if not hasattr(model, "wte"):  # wrapped (data-parallel): the plain forward keeps gradient sync
        return model(x, y)[1]
    keep = y >= 0
    logits = softcap(model.lm_head(hidden_states(model, x)[keep]), model.config.logit_softcap)
    return F.cross_entropy(logits.float(), y[keep])


@torch.no_grad()
def score_histories(
    model: torch.nn.Module, histories: list[list[int]], batch_size: int = 256
) -> torch.Tensor:
    """[U, V] next-item logits for each history (the last block_size items of it), on the CPU."""
    block = model.config.block_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(histories), batch_size):
        chunk = [h[-block:] for h in histories[i : i + batch_size]]
        x = pad_right(chunk).to(device)
        last = torch.tensor([len(h) - 1 for h in chunk], device=device)
        h = hidden_states(model, x)[torch.arange(len(chunk), device=device), last]  # last real position
        out.append(softcap(model.lm_head(h), model.config.logit_softcap).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def ranking_metrics(
    scores: torch.Tensor, histories: list[list[int]], targets: list[int], ks=KS
) -> dict[str, float]:
    """HR@K and NDCG@K of the targets under full ranking, the histories' items excluded."""
    ranks = target_ranks(scores, torch.tensor(targets), histories)
    return hit_ndcg(ranks, ks)


def recommend_task(data: RecData, cfg, data_dir: Path, max_eval_users: int = 3000):
    """The Task for `fornalha.train.trainer.train`: loader over training histories, next-item loss,
    validation NDCG@10 (best/ and early stopping) and validation loss on the validation items."""
    from fornalha.device import pick_device
    from fornalha.train.task import Task

    device = pick_device(cfg.train.device, announce=False)
    splits = [split_leave_one_out(s) for s in data.sequences]
    train_hist = [h for h, _, _ in splits]
    loader = SequenceLoader(train_hist, cfg.train.batch_size, cfg.model.block_size, cfg.train.seed, device)
    step = max(1, len(splits) // max_eval_users)  # a fixed, spread-out subset of users
    val_hist = [h for h, _, _ in splits[::step]]
    val_target = [v for _, v, _ in splits[::step]]

    def evaluate(model: torch.nn.Module) -> dict[str, float]:
        scores = score_histories(model, val_hist)
        loss = F.cross_entropy(scores, torch.tensor(val_target)).item()
        m = ranking_metrics(scores, val_hist, val_target)
        return {"val_loss": loss, "ndcg@10": m["ndcg@10"], "hr@10": m["hr@10"]}

    return Task(
        train_loader=loader,
        evaluate=evaluate,
        loss_fn=next_item_loss,
        batch_tokens=lambda batch: int((batch[1] >= 0).sum()),
        best_metric="ndcg@10",
        best_mode="max",
        vocab_size=data.vocab_size,
        extra_files={
            "items.json": {
                "format": "fornalha-items",
                "items": data.items,
                "cold": data.cold,
                "titles": data.titles,
                "genres": data.genres,
            },
            "recommend.json": {"data": str(data_dir), "users": len(data.users), "eval_users": len(val_hist)},
        },  # fmt: skip
    )


def train_recommender(data_dir: Path, out: Path, preset: str = "tiny", sets: list[str] | None = None,
                      time_budget: float | None = None, resume: bool = False) -> dict:  # fmt: skip
    """prepare'd DATA_DIR -> run folder, through the project's training loop."""
    from fornalha.recommend.data import load_data
    from fornalha.train.config import load_config
    from fornalha.train.trainer import train

    data = load_data(data_dir)
    overrides = preset_overrides(preset) + list(sets or [])
    if time_budget is not None:
        overrides.append(f"train.time_budget_minutes={time_budget}")
    cfg = load_config(None, None, overrides)
    return train(cfg, out, resume=resume, task=recommend_task(data, cfg, Path(data_dir)))
