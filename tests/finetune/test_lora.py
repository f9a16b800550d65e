"""LoRA: merged == adapted outputs, only the adapters learn; step checkpoints hold only the adapters
(+ the base's path and hash) and resume, best/ is an ordinary merged model."""

from __future__ import annotations

import json

import pytest
import torch
from dpo_helpers import make_run, pair_texts, synthetic_pairs, write_jsonl

from fornalha.checkpoint import (
    fold_lora,
    load_checkpoint,
    load_model,
    model_state_for_saving,
    read_meta,
    save_checkpoint,
)
from fornalha.errors import CheckpointError, ConfigError
from fornalha.finetune.lora import TARGETS, LoRALinear, add_lora, merge_lora, trainable_parameters
from fornalha.model import GPT, ModelConfig


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(
        ModelConfig(vocab_size=50, block_size=32, n_layer=2, n_head=2, n_embd=32, zero_init_proj=False)
    )


def test_merged_model_gives_the_lora_models_outputs():
    model = tiny().eval()
    x = torch.randint(0, 50, (3, 20))
    with torch.no_grad():
        plain, _ = model(x)
    n = add_lora(model, rank=4, alpha=8)
    assert sum(isinstance(m, LoRALinear) for m in model.modules()) == 2 * len(TARGETS)  # 2 layers × 5
    # 2 layers × r·(in+out) of qkv 32→96, o 32→32, gate/up 32→h, down h→32
    assert n == trainable_parameters(model) and n < 0.25 * sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        start, _ = model(x)
        assert torch.equal(start, plain)  # B = 0: the adapted model starts as the original
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.normal_(0, 0.1)
        adapted, _ = model(x)
    assert (adapted - plain).abs().max() > 1e-2
    state = fold_lora(model.state_dict())  # the state-dict merge the checkpoints use
    assert merge_lora(model) == 10 and not any(isinstance(m, LoRALinear) for m in model.modules())
    with torch.no_grad():
        merged, _ = model(x)
    torch.testing.assert_close(merged, adapted, atol=1e-5, rtol=1e-4)
    fresh = tiny(1)
    fresh.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x)[0], adapted, atol=1e-5, rtol=1e-4)


def test_only_the_adapters_change_in_training():
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, rank=2)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        x = torch.randint(0, 50, (4, 16))
        _, loss = model(x, torch.roll(x, -1, 1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = model.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"{k} changed"  # every base weight (and the embedding) frozen
    assert any(after[k].abs().sum() > 0 for k in after if k.endswith("lora_B"))  # B left zero: learned


def test_bad_ranks_are_config_errors():
    with pytest.raises(ConfigError, match="positive"):
        add_lora(tiny(), rank=0)
    with pytest.raises(ConfigError, match="larger than the layer"):
        add_lora(tiny(), rank=64)


def test_dpo_with_lora_saves_ordinary_low_rank_checkpoints(tmp_path):
    from rich.console import Console

    from fornalha.finetune.dpo import DPOSettings, finetune_dpo

    pairs = synthetic_pairs(32)
    run = make_run(tmp_path / "base", pair_texts(pairs))
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    settings = DPOSettings(held_out=0.25, lora=2, lora_alpha=4)
    sets = ["train.lr=5e-3", "train.eval_interval=2", "train.progress=false"]
    log = tmp_path / "log.txt"

    def dpo(steps: int, resume: bool = False) -> dict:
        with open(log, "w") as f:
            console = Console(file=f, width=200)
            return finetune_dpo(run, data, tmp_path / "lora", settings, [*sets, f"train.max_steps={steps}"],
                                resume=resume, console=console)  # fmt: skip

    report = dpo(4)
    assert "LoRA rank 2" in log.read_text()
    start, _ = load_model(run)
    for which in ("best", "last"):  # best/ saved folded; the step checkpoint folded on load
        tuned, _ = load_model(tmp_path / "lora", which)
        s0, s1 = model_state_for_saving(start), model_state_for_saving(tuned)
        assert s0.keys() == s1.keys()
        changed = [k for k in s0 if not torch.equal(s0[k], s1[k])]
        assert changed and all(k.split(".")[-2] in TARGETS for k in changed), changed
        for k in changed:  # the update of each adapted weight is s·B A: rank ≤ 2
            assert torch.linalg.matrix_rank((s1[k] - s0[k]).double(), atol=1e-6) <= 2
    raw_best, _ = load_checkpoint(tmp_path / "lora" / "checkpoints" / "best")
    assert not [k for k in raw_best if "lora" in k]  # an ordinary model file
    last = sorted((tmp_path / "lora" / "checkpoints").glob("step-*"))[-1]
    raw_last, meta = load_checkpoint(last)
    # the step checkpoint holds only the adapters, plus a reference to the base and its hash
    assert raw_last and all(".lora_" in k for k in raw_last) and [k for k in raw_last if k.endswith("lora_A")]
    base_best = run / "checkpoints" / "best"
    assert meta["lora_base"] == {"path": str(base_best.resolve()),
                                 "sha256": read_meta(base_best)["files"]["model.safetensors"]}  # fmt: skip
    full = (tmp_path / "lora" / "checkpoints" / "best" / "model.safetensors").stat().st_size
    assert (last / "model.safetensors").stat().st_size < 0.5 * full
    assert report["settings"]["lora"] == 2 and report["after"]["reward_margin"] > 0

    # --resume continues the LoRA run from its step checkpoint, adapters and optimizer included
    settings = DPOSettings()  # a resumed run reads its own settings (LoRA rank 2) from the run folder
    dpo(6, resume=True)
    text = log.read_text()
    assert "resumed from" in text and "reference log-probabilities: cached" in text and "LoRA rank 2" in text
    assert json.loads((tmp_path / "lora" / "summary.json").read_text())["steps"] == 6

    # the base changed after the adapters were trained: the step checkpoint refuses to load on it
    weights, base_meta = load_checkpoint(base_best)
    weights = {k: v + 0.01 if v.is_floating_point() else v for k, v in weights.items()}
    save_checkpoint(base_best, weights, {k: v for k, v in base_meta.items() if k not in ("files", "path")})
    with pytest.raises(CheckpointError, match="has changed since the adapters were trained"):
        load_model(tmp_path / "lora", "last")
