"""Run config: presets, YAML files, --set overrides, the depth dial, and clear errors."""

from __future__ import annotations

import pytest
import yaml

from fornalha.errors import ConfigError
from fornalha.train.config import PRESETS, config_reference_markdown, load_config, valid_keys


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_load_and_build(preset):
    cfg = load_config(preset)
    model = cfg.model_cfg(vocab_size=1000)
    assert model.n_layer >= 1 and cfg.seq_len == cfg.model.block_size


def test_overrides_parse_yaml_scalars_and_bare_keys():
    cfg = load_config(
        "tiny",
        overrides=["max_steps=300", "seed=7", "train.lr=1e-3", "train.compile=true", "betas=[0.8, 0.9]"],
    )
    assert cfg.train.max_steps == 300 and cfg.train.seed == 7
    assert cfg.train.lr == pytest.approx(1e-3) and cfg.train.compile is True
    assert cfg.train.betas == (0.8, 0.9)
    assert load_config(overrides=["model.n_kv_head=null"]).model.n_kv_head is None


def test_yaml_roundtrip(tmp_path):
    cfg = load_config("small", overrides=["train.lr=2e-3", "data.tokenizer=char"])
    path = tmp_path / "config.yaml"
    path.write_text(cfg.to_yaml())
    again = load_config(config_file=path)
    assert again == cfg


def test_depth_dial_derives_shape_and_explicit_keys_win():
    cfg = load_config("tiny", overrides=["depth=6"])
    assert (cfg.model.n_layer, cfg.model.n_embd, cfg.model.n_head) == (6, 384, 6)
    small, big = load_config(overrides=["depth=2"]), load_config(overrides=["depth=8"])
    assert big.train.lr < small.train.lr
    explicit = load_config("tiny", overrides=["depth=6", "model.n_head=3"])
    assert explicit.model.n_head == 3 and explicit.model.n_embd == 384


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("nonsense=1", "valid keys"),
        ("train.lr=fast", "train.lr"),
        ("train.optimizer=sgd", "train.optimizer"),
        ("train.batch_size=0", "train.batch_size"),
        ("model.n_head=3", "divisible"),
        ("depth=0", "depth"),
        ("vocab_size=100", "ambiguous"),
        ("train.seq_len=100000", "exceeds model.block_size"),
        ("no_equals_sign", "key=value"),
    ],
)
def test_bad_keys_and_values_are_clear_errors(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(".", r"\.")):
        load_config("tiny", overrides=[override])


def test_unknown_preset_and_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="tiny"):
        load_config("huge")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"train": {"learning_rate": 1}}))
    with pytest.raises(ConfigError, match="unknown key train.learning_rate; valid train keys: batch_size"):
        load_config(config_file=bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config(config_file=tmp_path / "missing.yaml")


def test_tokens_per_step_sets_grad_accum():
    cfg = load_config(overrides=["train.batch_size=4", "model.block_size=64", "train.tokens_per_step=1024"])
    assert cfg.grad_accum(1) == 4 and cfg.grad_accum(2) == 2
    with pytest.raises(ConfigError, match="multiple"):
        cfg.grad_accum(3)


def test_reference_table_lists_every_key():
    table = config_reference_markdown()
    for key in valid_keys():
        assert f"`{key}`" in table


def test_docs_config_table_is_the_generated_one():
    """docs/config.md carries the table `config_reference_markdown()` makes from the code (one source of
    truth: ModelConfig's field help and the pydantic sections); regenerate it when a key changes."""
    from pathlib import Path

    docs = Path(__file__).resolve().parents[2] / "docs" / "config.md"
    assert config_reference_markdown().strip() in docs.read_text(), (
        "docs/config.md is stale: rewrite its table from fornalha.train.config.config_reference_markdown()"
    )
