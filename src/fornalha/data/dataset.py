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
    return load_manifest(dataset_dir)["splits"][split]


def iter_records(dataset_dir: str | Path, split: str = "train") -> Iterator[dict[str, str]]:
    """Stream the ``{"text", "source", "id"}`` records of one split, shard by shard."""
    import zstandard

    root = Path(dataset_dir)
    for shard in _split_info(root, split)["shards"]:
        path = root / shard["file"]
        try:
            with open(path, "rb") as raw:
                reader = zstandard.ZstdDecompressor().stream_reader(raw)
                for line in io.TextIOWrapper(reader, encoding="utf-8"):
                    if line.strip():
                        yield json.loads(line)
        except FileNotFoundError as exc:
            raise DataError(f"dataset shard missing: {path}") from exc
        except zstandard.ZstdError as exc:
            raise DataError(f"dataset shard corrupt: {path} ({exc})") from exc


def iter_texts(dataset_dir: str | Path, split: str = "train") -> Iterator[str]:
    """Stream the document texts of one split (``"train"`` or ``"val"``)."""
    for record in iter_records(dataset_dir, split):
        yield record["text"]


def split_bytes(dataset_dir: str | Path, split: str) -> int:
    """UTF-8 bytes of the texts of a split (from the manifest; no shard is read)."""
    return int(_split_info(dataset_dir, split)["bytes"])


def split_documents(dataset_dir: str | Path, split: str) -> int:
    """Number of documents in a split (from the manifest)."""
    return int(_split_info(dataset_dir, split)["documents"])
