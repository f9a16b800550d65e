"""Token shards: binary format, index, <|bos|> per document, caching, errors, CLI."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest

from fornalha.data.dataset import write_dataset
from fornalha.data.shards import (
    HEADER,
    MAGIC,
    dtype_for_vocab,
    open_shard,
    read_header,
    read_index,
    split_counts,
    write_shard,
)
from fornalha.errors import DataError, FornalhaError
from fornalha.tokenizer import load_tokenizer, train_bpe
from fornalha.tokenizer.encode_dataset import tokenize_dataset

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="module")
def docs() -> dict[str, list[str]]:
    text = (SHARED / "tinyshakespeare.txt").read_text(encoding="utf-8")
    paragraphs = [p for p in text.split("\n\n") if p.strip()]
    return {"train": paragraphs[:1500] + ["Olá 🙂 中文"], "val": paragraphs[1500:1700]}


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, docs: dict[str, list[str]]) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("shards")
    dataset = write_dataset(root / "dataset", docs)
    train_bpe(docs["train"], 500).save(root / "tok")
    return dataset, root / "tok"


def test_tokenize_layout_and_contents(
    setup: tuple[Path, Path], docs: dict[str, list[str]], tmp_path: Path
) -> None:
    dataset, tok_dir = setup
    index = tokenize_dataset(dataset, tok_dir, tmp_path, shard_tokens=20_000, progress=False)
    assert index["cached"] is False
    assert read_index(tmp_path)["format"] == "fornalha-shards"
    assert index["dtype"] == "uint16" and index["vocab_size"] == 500
    tok = load_tokenizer(tmp_path / "tokenizer")  # the tokenizer travels with the shards
    for split in ("train", "val"):
        info = index["splits"][split]
        assert info["documents"] == len(docs[split])
        assert info["bytes"] == sum(len(d.encode()) for d in docs[split])
        shards = [open_shard(tmp_path / s["file"]) for s in info["shards"]]
        assert [len(s) for s in shards] == [s["tokens"] for s in info["shards"]]
        assert all(s["tokens"] == 20_000 for s in info["shards"][:-1])
        assert [s["file"] for s in info["shards"]][0] == f"{split}_00000.bin"
        ids = np.concatenate(shards)
        expected = [i for d in docs[split] for i in [tok.bos_id, *tok.encode(d)]]
        assert ids.tolist() == expected  # <|bos|> before each document, documents in order
        assert split_counts(tmp_path, split) == (len(expected), info["bytes"])
    assert len(index["splits"]["train"]["shards"]) > 1


def test_header_format(setup: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, tok_dir = setup
    index = tokenize_dataset(dataset, tok_dir, tmp_path, progress=False)
    path = tmp_path / index["splits"]["val"]["shards"][0]["file"]
    raw = path.read_bytes()
    magic, version, code, count = struct.unpack("<8sIIQ", raw[:24])
    assert (magic, version, code) == (b"FRNLSHRD", 1, 1)
    assert count == index["splits"]["val"]["tokens"] and len(raw) == 32 + 2 * count
    assert np.frombuffer(raw[32:34], "<u2")[0] == 0  # first id is <|bos|>


def test_uint32_shards(tmp_path: Path) -> None:
    assert dtype_for_vocab(65536) == np.uint16 and dtype_for_vocab(65537) == np.uint32
    ids = np.array([0, 70_000, 5, 2**32 - 1], dtype=np.uint32)
    write_shard(tmp_path / "x.bin", ids)
    assert read_header(tmp_path / "x.bin")[1:] == (np.dtype("<u4"), 4)
    assert open_shard(tmp_path / "x.bin").tolist() == ids.tolist()


def test_corrupt_shards(tmp_path: Path) -> None:
    write_shard(tmp_path / "ok.bin", np.arange(10, dtype=np.uint16))
    (tmp_path / "cut.bin").write_bytes((tmp_path / "ok.bin").read_bytes()[:-3])
    with pytest.raises(DataError, match="truncated"):
        open_shard(tmp_path / "cut.bin")
    (tmp_path / "bad.bin").write_bytes(b"NOTSHARD" + bytes(40))
    with pytest.raises(DataError, match="magic"):
        open_shard(tmp_path / "bad.bin")
    (tmp_path / "short.bin").write_bytes(MAGIC)
    with pytest.raises(DataError):
        read_header(tmp_path / "short.bin")
    assert HEADER.size == 32


def test_cache_reuse_and_invalidation(
    setup: tuple[Path, Path], docs: dict[str, list[str]], tmp_path: Path
) -> None:
    dataset, tok_dir = setup
    out = tmp_path / "out"
    first = tokenize_dataset(dataset, tok_dir, out, progress=False)
    stamp = (out / "train_00000.bin").stat().st_mtime_ns
    again = tokenize_dataset(dataset, tok_dir, out, progress=False)
    assert again["cached"] is True and (out / "train_00000.bin").stat().st_mtime_ns == stamp
    assert again["splits"] == first["splits"]
    # a changed dataset is tokenized again, and stale shards are removed
    changed = write_dataset(tmp_path / "changed", {"train": docs["train"][:10], "val": docs["val"][:3]})
    third = tokenize_dataset(changed, tok_dir, out, shard_tokens=500, progress=False)
    assert third["cached"] is False and third["splits"]["train"]["documents"] == 10
    files = {p.name for p in out.glob("*.bin")}
    assert files == {s["file"] for split in third["splits"].values() for s in split["shards"]}


def test_errors(setup: tuple[Path, Path], tmp_path: Path) -> None:
    dataset, tok_dir = setup
    with pytest.raises(DataError, match="not found"):
        tokenize_dataset(tmp_path / "missing", tok_dir, tmp_path / "o", progress=False)
    with pytest.raises(FornalhaError, match="tokenizer"):
        tokenize_dataset(dataset, tmp_path / "nope", tmp_path / "o", progress=False)
    with pytest.raises(DataError, match="no token shards"):
        read_index(tmp_path)
    write_dataset(tmp_path / "val_only", {"val": ["a document"]})
    with pytest.raises(DataError, match="no train split"):
        tokenize_dataset(tmp_path / "val_only", tok_dir, tmp_path / "o", progress=False)
    (tmp_path / "not_a_dataset").mkdir()
    with pytest.raises(DataError, match="not a prepared dataset"):
        tokenize_dataset(tmp_path / "not_a_dataset", tok_dir, tmp_path / "o", progress=False)


def test_cli_data_tokenize(
    setup: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fornalha.cli import main

    dataset, tok_dir = setup
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "data",
                "tokenize",
                "--data",
                str(dataset),
                "--tokenizer",
                str(tok_dir),
                "--out",
                str(tmp_path / "s"),
            ]
        )
    assert exit_info.value.code == 0
    assert (tmp_path / "s" / "index.json").is_file()
    assert "train" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "data",
                "tokenize",
                "--data",
                str(tmp_path / "nope"),
                "--tokenizer",
                str(tok_dir),
                "--out",
                str(tmp_path),
            ]
        )
    assert exit_info.value.code == 2
    assert "dataset folder not found" in capsys.readouterr().err
