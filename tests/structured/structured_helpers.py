"""Helpers for the structured-output tests: tokenizers that can spell JSON, tiny random models,
a run folder for a live server, and schema validation."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import torch

from fornalha.checkpoint import model_state_for_saving, save_checkpoint
from fornalha.model import GPT, ModelConfig
from fornalha.tokenizer.bpe import train_bpe
from fornalha.tokenizer.char import CharTokenizer

KEY = "sk-structured-test"

TEXT = (
    'the quick brown fox jumps over the lazy dog. é ü ç! 0123456789\n{"name": "Ana", "tags": ["a", "b"],'
    ' "ok": true, "n": -1.5e3, "x": null}\tABCDEFGHIJKLMNOPQRSTUVWXYZ,;:?<>/_\\-+[]'
)


def char_tokenizer() -> CharTokenizer:
    return CharTokenizer.train([TEXT])


def bpe_tokenizer():
    """Byte-level BPE: multi-character tokens such as '":' that cross JSON boundaries."""
    return train_bpe([TEXT * 3, json.dumps({"name": "Ana", "age": 31, "tags": ["x", "y"]})] * 20, 300)


def random_model(vocab_size: int, block_size: int = 256, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab_size, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2,
                      n_embd=32, init_std=0.3)  # fmt: skip
    return GPT(cfg).eval()


def make_run(root: Path, block_size: int = 1024) -> Path:
    run = root / "run"
    tok = char_tokenizer()
    tok.save(run / "tokenizer")
    model = random_model(tok.vocab_size, block_size)
    save_checkpoint(run / "checkpoints" / "best", model_state_for_saving(model),
                    {"model_config": model.config.to_dict(), "step": 0})  # fmt: skip
    return run


def validate(schema: dict[str, Any], text: str) -> Any:
    """The parsed value; AssertionError (with the reason) if it is not JSON or not valid."""
    value = json.loads(text)
    errors = [e.message for e in jsonschema_rs.validator_for(schema).iter_errors(value)]
    assert not errors, f"{text!r} does not validate: {errors}"
    return value


PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "role": {"enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 10},
                "zip": {"type": "integer", "maximum": 99999, "minimum": 0},
            },
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3},
        "active": {"type": "boolean"},
    },
    "required": ["name", "role", "address", "tags", "active"],
    "additionalProperties": False,
}


def hf_tokenizer():
    """A foreign Hugging Face tokenizer (ChatML specials, as `fornalha import hf` brings in)."""
    import tempfile

    from fornalha.tokenizer import HFTokenizer
    from hf_helpers import byte_level_tokenizer

    out = Path(tempfile.mkdtemp(prefix="structured-hf-"))
    byte_level_tokenizer(out, [TEXT * 3] * 20, 400)
    return HFTokenizer.load(out)
