"""Helpers for the training tests: TinyShakespeare as a prepared dataset and as char-level shards."""

from __future__ import annotations

import json
from pathlib import Path


def make_dataset(text: str, out: Path, docs: int = 1) -> Path:
    """A prepared-dataset folder (train/ and val/ JSONL) from one text: nanoGPT's 90% / 10% split."""
    import zstandard

    cut = int(len(text) * 0.9)
    splits = {}
    for split, body in (("train", text[:cut]), ("val", text[cut:])):
        (out / split).mkdir(parents=True, exist_ok=True)
        size = max(1, len(body) // docs)
        lines = [
            json.dumps({"text": body[i : i + size], "source": "test", "id": f"{split}-{i}"})
            for i in range(0, len(body), size)
        ]
        name = f"{split}/part-00000.jsonl.zst"
        (out / name).write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
        splits[split] = {"shards": [{"file": name}], "bytes": len(body.encode()), "documents": len(lines)}
    (out / "manifest.json").write_text(
        json.dumps({"format": "fornalha-dataset", "version": 1, "splits": splits})
    )
    return out


def make_char_shards(text: str, root: Path) -> Path:
    from fornalha.tokenizer import CharTokenizer
    from fornalha.tokenizer.encode_dataset import tokenize_dataset

    dataset = make_dataset(text, root / "dataset")
    CharTokenizer.train([text]).save(root / "tokenizer")
    tokenize_dataset(dataset, root / "tokenizer", root / "shards", progress=False)
    return root / "shards"
