"""`data prepare --engine datatrove` keeps exactly what the local engine keeps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

import fornalha.data.prepare as prepare_module
from fornalha.data.engines import cluster_steps, iter_inputs
from fornalha.data.prepare import PrepareConfig, SourceEntry, prepare, resolve_sources
from fornalha.errors import ConfigError

FORNALHA = Path(sys.executable).parent / "fornalha"
WORKERS = 3
EXACT_OF = (1, 8, 13, 22)  # originals of the planted exact copies b-exact0..3
NEAR_OF = (2, 9, 17, 26)  # originals of the planted near copies c-near0..3


def planted_corpus(root: Path, make_prose) -> Path:  # noqa: ANN001
    """30 originals, 4 exact and 4 near copies planted so that each copy and its original fall on
    different workers (input number i goes to worker i % 3), plus PII and files the filters drop."""
    root.mkdir(parents=True)
    names: list[tuple[str, str]] = [(f"a{i:02d}.txt", make_prose(i, 220)) for i in range(30)]
    for k, src in enumerate(EXACT_OF):  # exact copies: whitespace and case changes only
        names.append((f"b-exact{k}.txt", make_prose(src, 220).upper().replace(". ", ".   ")))
    for k, src in enumerate(NEAR_OF):  # near copies: two words changed, a line added
        names.append((f"c-near{k}.txt", make_prose(src, 220).replace("river", "stream", 2) + "Signed.\n"))
    names.append(("d-pii.md", make_prose(80, 220) + "\nWrite to ana@example.org or call +44 20 7946 0958.\n"))
    names.append(("e-tiny.txt", "Too short to keep."))
    for name, text in names:
        (root / name).write_text(text, encoding="utf-8")
    (root / "f-binary.txt").write_bytes(bytes(range(256)) * 8)
    return root


def rows(out: Path) -> dict[str, list[tuple[str, str, str]]]:
    """(id, source, text) of every line of each split, in file order."""
    result: dict[str, list[tuple[str, str, str]]] = {}
    for side in ("train", "val"):
        lines = []
        for part in sorted((out / side).glob("part-*.jsonl.zst")):
            with open(part, "rb") as fh:
                data = zstandard.ZstdDecompressor().stream_reader(fh).read().decode("utf-8")
            lines += [json.loads(line) for line in data.splitlines()]
        result[side] = [(r["id"], r["source"], r["text"]) for r in lines]
    return result


def test_planted_duplicates_straddle_workers(tmp_path: Path, make_prose) -> None:  # noqa: ANN001
    """The fixture really puts every copy on another worker than its original (else the test proves little)."""
    corpus = planted_corpus(tmp_path / "in", make_prose)
    cfg = PrepareConfig(sources=[SourceEntry(source=str(corpus))])
    order = [item.doc_id for item in iter_inputs(resolve_sources(cfg), cfg)]
    rank = {Path(doc_id).name: i % WORKERS for i, doc_id in enumerate(order)}
    for k, src in enumerate(EXACT_OF):
        assert rank[f"b-exact{k}.txt"] != rank[f"a{src:02d}.txt"]
    for k, src in enumerate(NEAR_OF):
        assert rank[f"c-near{k}.txt"] != rank[f"a{src:02d}.txt"]


def test_datatrove_keeps_what_local_keeps(tmp_path: Path, make_prose) -> None:  # noqa: ANN001
    corpus = planted_corpus(tmp_path / "in", make_prose)
    cfg = PrepareConfig(sources=[SourceEntry(source=str(corpus))])
    cfg.split.val_fraction = 0.2
    local = prepare(cfg, tmp_path / "local", workers=1)
    dt = prepare(cfg, tmp_path / "dt", workers=WORKERS, engine="datatrove")

    stats = dt.sources[str(corpus)]
    assert stats.dropped["duplicate (exact)"] == 4 and stats.dropped["duplicate (near)"] == 4
    assert stats.dropped["too short (chars)"] == 1 and sum(stats.skipped.values()) == 1
    assert dt.pii["EMAIL"] == 1 and dt.pii["PHONE"] == 1
    assert stats.docs_out == 31  # 30 originals + the PII document

    # same documents, same ids, same texts, same train/val sides, same order
    expected, got = rows(tmp_path / "local"), rows(tmp_path / "dt")
    assert got == expected
    assert len(got["val"]) >= 1 and not {r[0] for r in got["train"]} & {r[0] for r in got["val"]}
    kept = {Path(r[0]).name for side in got.values() for r in side}
    assert not any(name.startswith(("b-", "c-")) for name in kept)

    # same report (but for timing and the engine note) and same manifest (but for the creation time)
    want, have = local.to_dict(), dt.to_dict()
    for d in (want, have):
        for key in ("out_dir", "seconds", "throughput_mb_s", "workers", "notes"):
            d.pop(key)
    assert have == want
    assert any("datatrove" in note for note in dt.notes)
    m_local = json.loads((tmp_path / "local" / "manifest.json").read_text())
    m_dt = json.loads((tmp_path / "dt" / "manifest.json").read_text())
    m_local.pop("created"), m_dt.pop("created")
    assert m_dt == m_local
    assert not (tmp_path / "dt" / ".datatrove").exists()  # the work folder is removed once published


def test_stage_one_on_another_executor_then_global_step(tmp_path: Path, make_prose, monkeypatch) -> None:  # noqa: ANN001
    """The cluster recipe: stage 1 by any datatrove executor, then `prepare` runs only the global step."""
    from datatrove.executor import LocalPipelineExecutor

    corpus = planted_corpus(tmp_path / "in", make_prose)
    cfg = PrepareConfig(sources=[SourceEntry(source=str(corpus))])
    prepare(cfg, tmp_path / "local", workers=1)
    steps, logging_dir = cluster_steps(cfg, tmp_path / "dt", tasks=WORKERS)
    LocalPipelineExecutor(
        steps, tasks=WORKERS, workers=1, logging_dir=logging_dir
    ).run()  # stands in for Slurm
    results = sorted((tmp_path / "dt" / ".datatrove" / "results").glob("rank-*.pkl"))
    assert len(results) == WORKERS

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("stage 1 ran again although every task had completed")

    monkeypatch.setattr(prepare_module, "process_doc", boom)  # the global step must only merge
    prepare(cfg, tmp_path / "dt", workers=WORKERS, engine="datatrove")
    assert rows(tmp_path / "dt") == rows(tmp_path / "local")


def test_unknown_engine_is_a_config_error(tmp_path: Path, make_prose) -> None:  # noqa: ANN001
    corpus = planted_corpus(tmp_path / "in", make_prose)
    cfg = PrepareConfig(sources=[SourceEntry(source=str(corpus))])
    with pytest.raises(ConfigError, match="--engine"):
        prepare(cfg, tmp_path / "x", engine="spark")
    proc = subprocess.run(
        [
            str(FORNALHA),
            "data",
            "prepare",
            "--source",
            str(corpus),
            "--out",
            str(tmp_path / "y"),
            "--engine",
            "spark",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "--engine" in proc.stderr + proc.stdout and "Traceback" not in proc.stderr


def test_cli_datatrove_engine(tmp_path: Path, make_prose) -> None:  # noqa: ANN001
    corpus = planted_corpus(tmp_path / "in", make_prose)
    out = tmp_path / "ds"
    args = ["data", "prepare", "--source", str(corpus), "--out", str(out), "--engine", "datatrove"]
    proc = subprocess.run([str(FORNALHA), *args, "--workers", "2", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["reasons"]["dropped: duplicate (exact)"] == 4
    assert report["reasons"]["dropped: duplicate (near)"] == 4
    assert report["workers"] == 2
