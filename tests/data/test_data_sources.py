"""Every source kind yields documents; bad sources are clear errors; broken files are skipped."""

from __future__ import annotations

import bz2
import csv
import gzip
import json
from pathlib import Path

import pytest
import zstandard

from fornalha.data.sources import RawDoc, Skipped, builtin_files, iter_source, parse_source
from fornalha.errors import DataError


def docs_of(spec: str, **kw: str) -> list[RawDoc | Skipped]:
    return list(iter_source(parse_source(spec, **kw)))


def texts(items: list[RawDoc | Skipped]) -> list[str]:
    out = []
    for item in items:
        if isinstance(item, RawDoc):
            out.append(item.data.decode() if isinstance(item.data, bytes) else item.data)
    return out


def test_local_file_kinds(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("plain text")
    (tmp_path / "b.md").write_text("# title\nmarkdown")
    (tmp_path / "c.html").write_text("<html><body><p>hello <b>web</b></p></body></html>")
    (tmp_path / "d.jsonl").write_text(
        json.dumps({"text": "json one"}) + "\n" + json.dumps({"text": "json two"}) + "\n"
    )
    (tmp_path / "e.json").write_text(json.dumps([{"text": "list item"}]))
    with open(tmp_path / "f.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "text"], ["1", "csv row, with comma"]])
    (tmp_path / "g.tsv").write_text("id\ttext\n1\ttsv row\n")
    (tmp_path / "h.txt.gz").write_bytes(gzip.compress(b"gzipped text"))
    (tmp_path / "i.txt.zst").write_bytes(zstandard.ZstdCompressor().compress(b"zstd text"))
    (tmp_path / "j.jsonl.bz2").write_bytes(bz2.compress(json.dumps({"text": "bz2 json"}).encode()))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["parquet row 1", "parquet row 2"]}), tmp_path / "k.parquet")
    items = docs_of(str(tmp_path))
    got = texts(items)
    for expected in [
        "plain text", "json one", "json two", "list item", "csv row, with comma", "tsv row",
        "gzipped text", "zstd text", "bz2 json", "parquet row 1", "parquet row 2",
    ]:  # fmt: skip
        assert expected in got
    html = [i for i in items if isinstance(i, RawDoc) and i.html]
    assert len(html) == 1 and html[0].doc_id == "c.html"
    assert not [i for i in items if isinstance(i, Skipped)]


def test_text_field_and_column(tmp_path: Path) -> None:
    (tmp_path / "d.jsonl").write_text(json.dumps({"content": "custom field"}) + "\n")
    assert texts(docs_of(str(tmp_path / "d.jsonl"), text_field="content")) == ["custom field"]
    missing = docs_of(str(tmp_path / "d.jsonl"))
    assert isinstance(missing[0], Skipped) and "no text field" in missing[0].reason
    (tmp_path / "t.csv").write_text("a,body\n1,hello\n")
    assert texts(docs_of(str(tmp_path / "t.csv"), column="body")) == ["hello"]
    with pytest.raises(DataError, match="no column 'text'"):
        docs_of(str(tmp_path / "t.csv"))


def test_glob_and_weight(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "one.txt").write_text("one")
    (tmp_path / "x" / "two.md").write_text("two")
    spec = parse_source(f"{tmp_path}/**/*.txt::2.5")
    assert spec.kind == "glob" and spec.weight == 2.5
    assert texts(list(iter_source(spec))) == ["one"]


def test_broken_files_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "trunc.txt.gz").write_bytes(gzip.compress(b"x" * 10000)[:40])
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"text": broken\n')
    (tmp_path / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    reasons = sorted(i.reason for i in docs_of(str(tmp_path)) if isinstance(i, Skipped))
    assert reasons == [
        "empty file",
        "invalid JSON line",
        "truncated or corrupt compressed file",
        "unsupported file type .png",
    ]


def test_hf_saved_to_disk(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["first hf doc", "second hf doc"], "n": [1, 2]}).save_to_disk(
        tmp_path / "ds"
    )
    assert texts(docs_of(f"hf:{tmp_path / 'ds'}")) == ["first hf doc", "second hf doc"]
    dd = datasets.DatasetDict({"validation": datasets.Dataset.from_dict({"body": ["val doc"]})})
    dd.save_to_disk(tmp_path / "dd")
    assert texts(docs_of(f"hf:{tmp_path / 'dd'}@validation", text_field="body")) == ["val doc"]
    with pytest.raises(DataError, match="no split 'train'"):
        docs_of(f"hf:{tmp_path / 'dd'}")


def test_hf_load_dataset_local_path(tmp_path: Path) -> None:
    pytest.importorskip("datasets")
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "train.jsonl").write_text(json.dumps({"text": "streamed via load_dataset"}) + "\n")
    assert texts(docs_of(f"hf:{tmp_path / 'raw'}@train")) == ["streamed via load_dataset"]


def test_url_plain_and_html(http_server: tuple[str, Path]) -> None:
    base, root = http_server
    (root / "page.txt").write_text("plain page")
    (root / "page.html").write_text("<html><body><h1>Title</h1><p>web text</p></body></html>")
    plain = docs_of(f"{base}/page.txt")
    assert texts(plain) == ["plain page"] and not plain[0].html
    html = docs_of(f"{base}/page.html")
    assert html[0].html
    with pytest.raises(DataError, match="HTTP 404"):
        docs_of(f"{base}/missing.txt")


def test_builtin_is_the_stdlib() -> None:
    files = list(builtin_files())
    assert len(files) > 500
    assert all(rel.startswith("stdlib/") and rel.endswith(".py") for _, rel in files)
    assert not any("site-packages" in path or "/test/" in rel for path, rel in files)
    assert any(rel == "stdlib/json/decoder.py" for _, rel in files)
    assert len(list(builtin_files("stdlib+tests"))) > len(files)
    assert parse_source("builtin:").preset == "code"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/no/such/path", "source not found"),
        ("s3://bucket/key", "unknown source scheme 's3'"),
        ("builtin:nope", "unknown built-in corpus"),
        ("data.txt::heavy", "bad source weight"),
        ("/no/such/*.txt", "matches no files"),
    ],
)
def test_bad_specs_raise(spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_source(spec)
