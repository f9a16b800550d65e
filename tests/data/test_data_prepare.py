"""End to end: sources -> dataset folder; cache reuse; determinism; readers; CLI errors."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fornalha.data.clean import normalize
from fornalha.data.dataset import is_dataset_dir, iter_texts, load_manifest, split_bytes
from fornalha.data.prepare import PrepareConfig, SourceEntry, prepare
from fornalha.errors import DataError

FORNALHA = Path(sys.executable).parent / "fornalha"


def make_corpus(root: Path, make_prose) -> Path:  # noqa: ANN001
    """40 prose docs, one exact copy, two near copies, PII, and a folder of broken files."""
    good = root / "good"
    good.mkdir(parents=True)
    for i in range(40):
        (good / f"doc{i:02d}.txt").write_text(make_prose(i, 250))
    (good / "copy.txt").write_text(make_prose(3, 250))  # exact duplicate of doc03
    (good / "near.txt").write_text(make_prose(4, 250).replace("river", "stream", 2) + "Signed.\n")
    (good / "pii.md").write_text(make_prose(50, 250) + "\nContact: maria@example.org, +44 20 7946 0958.\n")
    (good / "tiny.txt").write_text("Too short to keep.")
    broken = root / "broken"
    broken.mkdir()
    (broken / "empty.txt").write_bytes(b"")
    (broken / "binary.txt").write_bytes(bytes(range(256)) * 8)
    (broken / "latin1.txt").write_bytes(make_prose(60, 100).encode("utf-8") + b"\xe9\xe8 caf\xe9\n")
    (broken / "cut.txt.gz").write_bytes(gzip.compress(make_prose(61, 300).encode())[:50])
    return root


def config(*sources: str, **kw) -> PrepareConfig:  # noqa: ANN003
    return PrepareConfig(sources=[SourceEntry(source=s) for s in sources], **kw)


def test_prepare_end_to_end(tmp_path: Path, make_prose) -> None:  # noqa: ANN001
    corpus = make_corpus(tmp_path / "in", make_prose)
    out = tmp_path / "ds"
    cfg = config(str(corpus / "good"), str(corpus / "broken"))
    cfg.split.val_fraction = 0.2
    report = prepare(cfg, out, workers=1)
    good = report.sources[str(corpus / "good")]
    assert good.docs_in == 44
    assert good.dropped == {"duplicate (exact)": 1, "duplicate (near)": 1, "too short (chars)": 1}
    assert good.docs_out == 41
    broken = report.sources[str(corpus / "broken")]
    assert broken.skipped == {
        "empty file": 1, "binary": 1, "invalid UTF-8": 1, "truncated or corrupt compressed file": 1,
    }  # fmt: skip
    assert report.pii["EMAIL"] == 1 and report.pii["PHONE"] == 1

    assert is_dataset_dir(out)
    manifest = load_manifest(out)
    assert manifest["format"] == "fornalha-dataset" and manifest["version"] == 1
    train, val = list(iter_texts(out, "train")), list(iter_texts(out, "val"))
    assert len(train) + len(val) == 41 and 2 <= len(val) <= 16
    assert not set(train) & set(val)
    assert split_bytes(out, "train") == sum(len(t.encode()) for t in train)
    assert any("<EMAIL>" in t for t in train + val)
    assert not any("maria@example.org" in t for t in train + val)
    stored = json.loads((out / "report.json").read_text())
    assert stored["reasons"]["skipped: binary"] == 1
    assert (out / "train" / "part-00000.jsonl.zst").is_file()

    # same inputs and config: the cache is used
    again = prepare(cfg, out, workers=1)
    assert again.cached and again.splits == report.splits
    # any change (a file, the config) rebuilds
    (corpus / "good" / "doc00.txt").write_text(make_prose(99, 250))
    assert not prepare(cfg, out, workers=1).cached
    cfg.dedup.near = False
    assert not prepare(cfg, out, workers=1).cached


def test_output_does_not_depend_on_workers(tmp_path: Path, make_prose) -> None:  # noqa: ANN001
    corpus = make_corpus(tmp_path / "in", make_prose)
    cfg = config(str(corpus / "good"))
    prepare(cfg, tmp_path / "one", workers=1)
    prepare(cfg, tmp_path / "two", workers=2)
    for split in ("train", "val"):
        assert list(iter_texts(tmp_path / "one", split)) == list(iter_texts(tmp_path / "two", split))


def test_tail_split_and_weights(tmp_path: Path, shared_data: Path) -> None:
    shakespeare = str(shared_data / "tinyshakespeare.txt")
    cfg = config(shakespeare)
    cfg.split.mode = "tail"
    cfg.split.val_fraction = 0.1
    cfg.pii.enabled = False
    prepare(cfg, tmp_path / "tail", workers=1)
    (train,), (val,) = (
        list(iter_texts(tmp_path / "tail", "train")),
        list(iter_texts(tmp_path / "tail", "val")),
    )
    original = normalize((shared_data / "tinyshakespeare.txt").read_text())  # trailing spaces go
    assert train + val == original
    assert 0.09 < len(val) / len(original) < 0.11
    weighted = config(shakespeare + "::2", split=cfg.split, pii=cfg.pii)
    prepare(weighted, tmp_path / "w", workers=1)
    assert list(iter_texts(tmp_path / "w", "train")) == [train, train]


def test_sources_of_every_kind_through_prepare(tmp_path: Path, http_server, make_prose) -> None:  # noqa: ANN001
    datasets = pytest.importorskip("datasets")
    base, www = http_server
    (www / "page.html").write_text(f"<html><body><p>{make_prose(70, 200)}</p></body></html>")
    datasets.Dataset.from_dict({"text": [make_prose(71, 200), make_prose(72, 200)]}).save_to_disk(
        tmp_path / "hf"
    )
    cfg = config(f"{base}/page.html", f"hf:{tmp_path / 'hf'}")
    report = prepare(cfg, tmp_path / "ds", workers=1)
    assert report.sources[f"{base}/page.html"].docs_out == 1
    assert report.sources[f"hf:{tmp_path / 'hf'}"].docs_out == 2
    assert report.cache_key is None  # a URL cannot be fingerprinted offline: never cached
    texts = list(iter_texts(tmp_path / "ds", "train")) + list(iter_texts(tmp_path / "ds", "val"))
    assert any("<p>" not in t and "merchants" in t.lower() for t in texts)


def test_builtin_subset(tmp_path: Path) -> None:
    cfg = config("builtin:", max_docs=40)
    report = prepare(cfg, tmp_path / "b", workers=2)
    stats = report.sources["builtin:"]
    assert stats.docs_in == 40 and stats.docs_out >= 30  # code survives the code preset
    assert any("def " in t for t in iter_texts(tmp_path / "b", "train"))


def test_recipe_yaml(tmp_path: Path, make_prose) -> None:  # noqa: ANN001
    (tmp_path / "texts").mkdir()
    for i in range(5):
        (tmp_path / "texts" / f"{i}.txt").write_text(make_prose(200 + i, 200))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        "sources:\n  - source: texts\n    weight: 2\nsplit:\n  val_fraction: 0.0\npii:\n  enabled: false\n"
    )
    cfg = PrepareConfig.from_yaml(recipe)
    report = prepare(cfg, tmp_path / "ds", workers=1)
    assert report.splits["train"]["documents"] == 10  # weight 2 repeats each training document
    bad = tmp_path / "bad.yaml"
    bad.write_text("sources: [texts]\nclean:\n  nonsense: 1\n")
    with pytest.raises(Exception, match="nonsense"):
        PrepareConfig.from_yaml(bad)


def test_readers_reject_non_datasets(tmp_path: Path) -> None:
    assert not is_dataset_dir(tmp_path)
    with pytest.raises(DataError, match="not a prepared dataset"):
        load_manifest(tmp_path)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(FORNALHA), *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(
    ("source", "message"),
    [("/definitely/missing", "source not found"), ("ftp://host/file", "unknown source scheme 'ftp'")],
)
def test_cli_bad_sources_exit_2(tmp_path: Path, source: str, message: str) -> None:
    result = run_cli("data", "prepare", "--source", source, "--out", str(tmp_path / "o"))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["data", "prepare"], ["pipeline", "--preset", "tiny"]])
@pytest.mark.parametrize(
    ("option", "message"),
    [(["--split", "middle"], "--split: Input should be 'doc' or 'tail'"),
     (["--val-fraction", "1.5"], "--val-fraction: Input should be less than 1"),
     (["--val-fraction", "-0.1"], "--val-fraction: Input should be greater than or equal to 0")],
)  # fmt: skip
def test_cli_bad_split_options_exit_2(
    tmp_path: Path, command: list[str], option: list[str], message: str
) -> None:
    """`data prepare` and `pipeline` validate the split options the same way, before any work."""
    result = run_cli(*command, "--source", str(tmp_path), *option, "--out", str(tmp_path / "o"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o" / "dataset").exists()


def test_cli_prepare_prints_report(tmp_path: Path, make_prose) -> None:  # noqa: ANN001
    corpus = make_corpus(tmp_path / "in", make_prose)
    result = run_cli(
        "data", "prepare", "--source", str(corpus / "good"), "--source", str(corpus / "broken"),
        "--out", str(tmp_path / "o"), "--workers", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for needle in ("docs in", "duplicate (exact)", "skipped: binary", "splits: train"):
        assert needle in result.stdout
    assert (tmp_path / "o" / "manifest.json").is_file() and (tmp_path / "o" / "report.json").is_file()
    help_text = run_cli("data", "prepare", "--help").stdout
    assert "--source" in help_text and "Examples" in help_text
