"""The Task plug-in: a training run on something other than text, through the same loop."""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from fornalha.checkpoint import load_model
from fornalha.train.config import load_config
from fornalha.train.task import Task
from fornalha.train.trainer import train

VOCAB = 16


class CopyLoader:
    """Random id sequences; the target at each position is the id itself (learnable: the model sees it)."""

    def __init__(self, seed: int = 0) -> None:
        self.gen, self.served = torch.Generator().manual_seed(seed), 0

    def next_batch(self):
        self.served += 1
        return torch.randint(0, VOCAB, (8, 16), generator=self.gen)

    def state_dict(self) -> dict:
        return {"served": self.served, "rng": self.gen.get_state().tolist()}

    def load_state_dict(self, d: dict) -> None:
        self.served = d["served"]
        self.gen.set_state(torch.tensor(d["rng"], dtype=torch.uint8))


def copy_loss(model, batch):
    logits, _ = model(batch)
    return F.cross_entropy(logits.reshape(-1, VOCAB), batch.reshape(-1))


def copy_task() -> Task:
    held_out = torch.randint(0, VOCAB, (16, 16), generator=torch.Generator().manual_seed(99))

    def evaluate(model):
        logits, _ = model(held_out)
        acc = (logits.argmax(-1) == held_out).float().mean().item()
        return {"val_loss": copy_loss(model, held_out).item(), "accuracy": acc}

    return Task(
        train_loader=CopyLoader(),
        evaluate=evaluate,
        loss_fn=copy_loss,
        batch_tokens=lambda b: b.numel(),
        best_metric="accuracy",
        best_mode="max",
        vocab_size=VOCAB,
        extra_files={"items.json": {"n_items": VOCAB}},
    )


CFG = [
    "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=16", "train.batch_size=8",
    "train.max_steps=30", "train.eval_interval=10", "train.lr=3e-3", "train.progress=false", "train.log_interval=5",
]  # fmt: skip


def test_a_custom_task_trains_through_the_same_loop(tmp_path):
    run = tmp_path / "run"
    summary = train(load_config(overrides=CFG), run, task=copy_task())
    assert summary["status"] == "completed" and summary["steps"] == 30
    assert summary["tokens_seen"] == 30 * 8 * 16
    assert summary["best_metric"] == "accuracy" and summary["best"]["accuracy"] > 0.5
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 30] and all("accuracy" in r for r in evals)
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert summary["final_val_loss"] == evals[-1]["val_loss"]  # the summary holds the last evaluation
    assert json.loads((run / "items.json").read_text()) == {"n_items": VOCAB}
    model, meta = load_model(run)
    assert meta["metrics"]["accuracy"] == max(r["accuracy"] for r in evals)
    assert model.config.vocab_size == VOCAB and not (run / "tokenizer").exists()


def test_a_custom_task_resumes_exactly(tmp_path):
    import shutil

    cfg = load_config(overrides=[*CFG, "train.keep_checkpoints=5", "model.dropout=0.1"])
    full = train(cfg, tmp_path / "a", task=copy_task())
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "b" / "checkpoints" / "step-000030")  # as if killed after step 20's checkpoint
    resumed = train(cfg, tmp_path / "b", task=copy_task(), resume=True)
    assert resumed["steps"] == 30 and resumed["best"] == full["best"]
    a = load_model(tmp_path / "a", which="step-000030")[0].state_dict()
    b = load_model(tmp_path / "b", which="step-000030")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_summary(tmp_path):
    cfg = load_config(overrides=CFG)
    first = train(cfg, tmp_path / "run", task=copy_task())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text()
    again = train(cfg, tmp_path / "run", task=copy_task(), resume=True)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == lines  # no step, no evaluation added
    for key in ("status", "steps", "tokens_seen", "best", "best_step", "final_val_loss", "final_train_loss"):
        assert again[key] == first[key], key
