"""Read a prepared dataset folder (the output of ``fornalha data prepare``).

Later stages (the tokenizer trainer, ``data tokenize``) only need these four functions;
they never parse shards themselves. See DESIGN.md §1 for the layout.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fornalha.errors import DataError

FORMAT = "fornalha-dataset"
SPLITS = ("train", "val")


def is_dataset_dir(path: str | Path) -> bool:
    """True if ``path`` holds a complete dataset (its ``manifest.json`` is written last)."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError):
        return False


def load_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    """The dataset's ``manifest.json``; `DataError` if the folder is not a dataset."""
    path = Path(dataset_dir)
    if not is_dataset_dir(path):
        raise DataError(
            f"{path} is not a prepared dataset (no valid manifest.json); run `fornalha data prepare`"
        )
    return json.loads((path / "manifest.json").read_text(encoding="utf-8"))


def _split_info(dataset_dir: str | Path, split: str) -> dict[str, Any]:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    manifest = load_manifest(dataset_dir)
    splits = manifest.get("splits")
    if isinstance(splits, dict) and split not in splits:
        raise DataError(f"dataset {dataset_dir} has no {split!r} split")
    info = splits.get(split) if isinstance(splits, dict) else None
    shards = info.get("shards") if isinstance(info, dict) else None
    if not isinstance(shards, list) or not all(
        isinstance(s, dict) and isinstance(s.get("file"), str) for s in shards
    ):
        raise DataError(
            f"{Path(dataset_dir) / 'manifest.json'} has no valid {split!r} split (wrong types or missing keys); "
            "prepare the dataset again with `fornalha data prepare`"
        )
    return info


def dataset_splits(dataset_dir: str | Path) -> list[str]:
    """The splits a prepared dataset has, in order (train first)."""
    splits = load_manifest(dataset_dir).get("splits", {})
    return [s for s in SPLITS if isinstance(splits, dict) and s in splits]


def iter_records(dataset_dir: str | Path, split: str = "train") -> Iterator[dict[str, str]]:
    """Stream the ``{"text", "source", "id"}`` records of one split, shard by shard."""
    import zstandard

    root = Path(dataset_dir)
    for shard in _split_info(root, split)["shards"]:
        path = root / shard["file"]
        seen = 0
        try:
            with open(path, "rb") as raw:
                reader = zstandard.ZstdDecompressor().stream_reader(raw)
                for line in io.TextIOWrapper(reader, encoding="utf-8"):
                    if line.strip():
                        record = json.loads(line)
                        seen += 1
                        yield record
        except FileNotFoundError as exc:
            raise DataError(f"dataset shard missing: {path}") from exc
        except (zstandard.ZstdError, UnicodeDecodeError, ValueError) as exc:
            raise DataError(f"dataset shard corrupt: {path} ({exc})") from exc
        expected = shard.get("documents")
        if isinstance(expected, int) and seen != expected:  # a truncated zstd stream ends quietly
            raise DataError(
                f"dataset shard corrupt or truncated: {path} holds {seen} documents, the manifest says {expected}"
            )


def iter_texts(dataset_dir: str | Path, split: str = "train") -> Iterator[str]:
    """Stream the document texts of one split (``"train"`` or ``"val"``).

    A missing folder or split is a `DataError` with a hint, raised here rather than at the first read.
    """
    if not Path(dataset_dir).is_dir():
        raise DataError(f"dataset folder not found: {dataset_dir} (create it with `fornalha data prepare`)")
    _split_info(dataset_dir, split)
    return (record["text"] for record in iter_records(dataset_dir, split))


def split_bytes(dataset_dir: str | Path, split: str) -> int:
    """UTF-8 bytes of the texts of a split (from the manifest; no shard is read)."""
    return int(_split_info(dataset_dir, split)["bytes"])


def split_documents(dataset_dir: str | Path, split: str) -> int:
    """Number of documents in a split (from the manifest)."""
    return int(_split_info(dataset_dir, split)["documents"])


def write_dataset(
    root: str | Path, splits: dict[str, list[str]], source: str = "memory", sources: list[str] | None = None
) -> Path:
    """Write documents held in memory as a dataset folder, skipping the cleaning stage.

    For programmatic use (a handful of documents, new feedback data, tests): ``splits`` maps a
    split name (``train``, ``val``) to its documents. The layout is exactly what
    ``fornalha data prepare`` writes, so every later stage reads it the same way.
    """
    import zstandard

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    manifest: dict[str, Any] = {"format": FORMAT, "version": 1, "sources": sources or [source], "splits": {}}
    for split, docs in splits.items():
        (root / split).mkdir(exist_ok=True)
        lines = "".join(
            json.dumps({"text": d, "source": source, "id": f"{split}-{i}"}) + "\n" for i, d in enumerate(docs)
        )
        (root / split / "part-00000.jsonl.zst").write_bytes(
            zstandard.ZstdCompressor().compress(lines.encode())
        )
        n_bytes = sum(len(d.encode("utf-8")) for d in docs)
        shard = {"file": f"{split}/part-00000.jsonl.zst", "documents": len(docs), "bytes": n_bytes}
        manifest["splits"][split] = {"shards": [shard], "documents": len(docs), "bytes": n_bytes}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))  # last: marks the folder complete
    return root
