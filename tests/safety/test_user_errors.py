"""User-caused errors are one-line `FornalhaError`s (exit 2), not internal errors: undecodable
input text, metadata files with wrong types."""

from __future__ import annotations

import json

import pytest

from fornalha.errors import DataError


def test_undecodable_jsonl_input_is_a_one_line_data_error(tmp_path):
    from fornalha.jsonl import read_objects

    bad = tmp_path / "hellaswag.jsonl"
    bad.write_bytes(b'{"ctx": "ok", "endings": ["a", "b"], "label": 0}\n{"ctx": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"not UTF-8 text \(undecodable byte 0xe9\)"):
        read_objects(bad)


def test_dataset_manifest_with_wrong_types_is_a_data_error(tmp_path):
    from fornalha.data.dataset import iter_texts, write_dataset

    write_dataset(tmp_path / "ds", {"train": ["some text"], "val": ["more text"]})
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    for bad in ({"train": "shards"}, {"train": {"shards": [3]}}, "splits"):
        (tmp_path / "ds" / "manifest.json").write_text(json.dumps({**manifest, "splits": bad}))
        with pytest.raises(DataError, match="no valid 'train' split"):
            list(iter_texts(tmp_path / "ds", "train"))
