"""Error paths through the real entry point: `fornalha …` in a subprocess, exit code and stderr.

Each damaged input (missing or corrupt meta.json, a meta.json with wrong types, a truncated
model.safetensors, a corrupt .zst dataset part, a truncated token shard) must give exit code 2 and
one `error:` line on stderr, first (nothing else was done) or last (the command had started its
work): never a traceback, never "internal error" (kept for bugs).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from safety_helpers import fornalha, make_prose_text

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A run folder (random tiny model + real BPE tokenizer), a prepared dataset and its shards."""
    import sys

    from fornalha.data.prepare import PrepareConfig, SourceEntry, prepare
    from fornalha.tokenizer import train_bpe
    from fornalha.tokenizer.encode_dataset import tokenize_dataset

    root = tmp_path_factory.mktemp("errors")
    text = make_prose_text(1, 600) + "\n\n" + make_prose_text(2, 600)
    (root / "corpus.txt").write_text(text)
    tok = root / "tok"
    train_bpe([text], 300).save(tok)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "interop"))
    try:
        from test_hf import make_run
    finally:
        sys.path.pop(0)
    run, _ = make_run(root, tok, vocab_size=304)
    data = root / "ds"
    prepare(PrepareConfig(sources=[SourceEntry(source=str(root / "corpus.txt"))]), data, workers=1)
    shards = root / "shards"
    tokenize_dataset(data, tok, shards, progress=False)
    return {"run": run, "data": data, "shards": shards}


def damage(kind: str, base: dict[str, Path], tmp: Path, split: str = "val") -> dict[str, Path]:
    paths = {k: tmp / k for k in base}
    for k, src in base.items():
        shutil.copytree(src, paths[k])
    best = paths["run"] / "checkpoints" / "best"
    if kind == "missing meta.json":
        (best / "meta.json").unlink()
    elif kind == "corrupt meta.json":
        (best / "meta.json").write_text('{"format": "fornalha-checkpoint", "model_con')
    elif kind == "meta.json with wrong types":
        meta = json.loads((best / "meta.json").read_text())
        meta["model_config"] = {**meta["model_config"], "n_layer": "two", "n_embd": [64]}
        (best / "meta.json").write_text(json.dumps(meta))
    elif kind == "truncated model.safetensors":
        f = best / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    elif kind == "corrupt .zst part":
        part = next((paths["data"] / split).glob("part-*.jsonl.zst"))
        part.write_bytes(part.read_bytes()[:20] + b"\x00garbage" * 10)
    elif kind == "truncated shard":
        shard = next(paths["shards"].glob(f"{split}_*.bin"))
        shard.write_bytes(shard.read_bytes()[:40])
    return paths


def check_user_error(proc: subprocess.CompletedProcess[str], *words: str) -> None:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and errors[0] in (lines[0], lines[-1]), proc.stderr
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr
    for word in words:
        assert word in errors[0], proc.stderr


CHECKPOINT_DAMAGE = [
    "missing meta.json",
    "corrupt meta.json",
    "meta.json with wrong types",
    "truncated model.safetensors",
]


@pytest.mark.parametrize("kind", CHECKPOINT_DAMAGE)
def test_generate_with_a_damaged_checkpoint(base, tmp_path, kind):
    p = damage(kind, base, tmp_path)
    check_user_error(fornalha("generate", "--run", str(p["run"]), "--prompt", "the", "--device", "cpu"))


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        ("eval", "truncated model.safetensors"),
        ("export", "corrupt meta.json"),
        ("chat", "truncated model.safetensors"),
        ("eval", "corrupt .zst part"),
        ("eval", "truncated shard"),
        ("train", "corrupt .zst part"),
        ("train", "truncated shard"),
    ],
)
def test_commands_with_damaged_inputs(base, tmp_path, command, kind):
    # train reads its train split first (a damaged val split is found only at the first evaluation)
    p = damage(kind, base, tmp_path, split="train" if command == "train" else "val")
    data = str(p["shards"] if kind == "truncated shard" else p["data"])
    args = {
        "eval": ["eval", "--run", str(p["run"]), "--data", data, "--device", "cpu"],
        "export": ["export", "hf", "--run", str(p["run"]), "--out", str(tmp_path / "hf")],
        "chat": ["chat", "--run", str(p["run"]), "--device", "cpu"],
        "train": ["train", "--preset", "tiny", "--data", data, "--tokenizer", str(p["run"] / "tokenizer"),
                  "--out", str(tmp_path / "newrun"), "--device", "cpu", "--set", "train.max_steps=2"],
    }[command]  # fmt: skip
    check_user_error(fornalha(*args), *(["corrupt"] if kind == "corrupt .zst part" else []))
