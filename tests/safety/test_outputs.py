"""No user data lost: every command that writes a folder claims it through `fornalha.outputs`.

Issue 9, items 1 and 2 (reproduced through the real entry point), and the shared rules: a folder
that is not the command's own output is refused with exit 2 and one line, re-running replaces only
the files the command owns, and staging folders of a killed process are cleaned.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fornalha.outputs import MANIFEST, OutputError, claim

ROOT = Path(__file__).resolve().parents[2]


def fornalha(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real CLI in a subprocess, with this worktree's source first on the path."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "fornalha.cli", *args], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=120,
    )  # fmt: skip


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines, proc
    return lines[0]


@pytest.fixture(scope="session")
def make_prose():
    """The data tests' prose generator (text that passes the quality filters)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("data_conftest", ROOT / "tests" / "data" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prose


@pytest.fixture
def source(tmp_path: Path, make_prose) -> Path:
    src = tmp_path / "corpus.txt"
    src.write_text(make_prose(1, 400) + "\n\n" + make_prose(2, 400), encoding="utf-8")
    return src


# -- issue 9, item 1: data prepare -----------------------------------------------------------------
def test_prepare_refuses_a_users_folder_and_deletes_nothing(tmp_path, source):
    precious = tmp_path / "precious"
    (precious / "train").mkdir(parents=True)
    (precious / "train" / "mine.txt").write_text("notes")
    proc = fornalha(
        "data", "prepare", "--source", str(source), "--out", str(precious), "-q", "--workers", "1"
    )
    assert proc.returncode == 2, proc.stderr
    assert "not empty" in error_line(proc) and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (precious / "train" / "mine.txt").read_text() == "notes"
    assert sorted(p.name for p in precious.iterdir()) == ["train"]  # no .incomplete, no manifest


def test_prepare_into_the_source_folder_keeps_the_sources(tmp_path, make_prose):
    folder = tmp_path / "notes"
    (folder / "train").mkdir(parents=True)
    (folder / "train" / "a.txt").write_text(make_prose(3, 300))
    proc = fornalha("data", "prepare", "--source", str(folder), "--out", str(folder), "-q", "--workers", "1")
    assert proc.returncode == 2, proc.stderr
    assert (folder / "train" / "a.txt").read_text() == make_prose(3, 300)
    assert sorted(p.name for p in folder.iterdir()) == ["train"]


def test_prepare_with_a_plain_file_named_train_is_exit_2_and_leaves_nothing(tmp_path, source):
    out = tmp_path / "out"
    out.mkdir()
    (out / "train").write_text("a file, not a folder")
    proc = fornalha("data", "prepare", "--source", str(source), "--out", str(out), "-q", "--workers", "1")
    assert proc.returncode == 2 and "internal error" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["train"]


def test_prepare_rerun_replaces_its_own_files_only(tmp_path, source, make_prose):
    from fornalha.data.prepare import PrepareConfig, SourceEntry, prepare

    out = tmp_path / "ds"
    cfg = PrepareConfig(sources=[SourceEntry(source=str(source))])
    prepare(cfg, out, workers=1)
    owned = json.loads((out / MANIFEST).read_text())
    assert owned["command"] == "data prepare" and "manifest.json" in owned["files"]
    assert any(f.startswith("train/part-") for f in owned["files"])
    (out / "train" / "mine.txt").write_text("user notes")  # the user adds a file to our folder
    (out / "README.md").write_text("my readme")
    source.write_text(make_prose(7, 500))  # changed input: a real rebuild, not the cache
    report = prepare(cfg, out, workers=1)
    assert not report.cached
    assert (out / "train" / "mine.txt").read_text() == "user notes"
    assert (out / "README.md").read_text() == "my readme"
    assert not any(p.name.startswith(".fornalha-tmp-") for p in out.iterdir())
    from fornalha.data.dataset import iter_texts

    assert "".join(iter_texts(out, "train")).count("river") > 0


# -- issue 9, item 2: export hf ---------------------------------------------------------------------
def test_export_hf_refuses_a_non_empty_folder_and_keeps_the_users_files(tmp_path):
    pytest.importorskip("transformers")
    sys.path.insert(0, str(ROOT / "tests" / "interop"))
    try:
        from test_hf import make_run
    finally:
        sys.path.pop(0)
    from fornalha.tokenizer import train_bpe

    tok = tmp_path / "tok"
    train_bpe(["the quick brown fox jumps over the lazy dog " * 50], 300).save(tok)
    run, _ = make_run(tmp_path, tok, vocab_size=304)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "README.md").write_text("my model card")
    (out / "config.json").write_text('{"mine": true}')
    proc = fornalha("export", "hf", "--run", str(run), "--out", str(out))
    assert proc.returncode == 2, proc.stderr
    assert "not empty" in error_line(proc)
    assert (out / "README.md").read_text() == "my model card"
    assert json.loads((out / "config.json").read_text()) == {"mine": True}

    from fornalha.interop import export_hf

    fresh = export_hf(run, tmp_path / "hf2")
    (fresh / "notes.txt").write_text("mine")
    export_hf(run, fresh, dtype="bfloat16")  # an earlier export is ours to replace...
    assert json.loads((fresh / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert (fresh / "notes.txt").read_text() == "mine"  # ...but not the user's file beside it


# -- the shared rules ---------------------------------------------------------------------------------
def test_claim_rules(tmp_path):
    out = claim(tmp_path / "new", "data tokenize")
    stage = out.staging()
    (stage / "sub").mkdir()
    (stage / "sub" / "a.bin").write_bytes(b"1")
    (stage / "index.json").write_text("{}")
    assert out.publish(stage, last=["index.json"]) == ["index.json", "sub/a.bin"]
    with pytest.raises(OutputError, match="data tokenize"):
        claim(tmp_path / "new", "tokenizer train")  # another command's output
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        claim(tmp_path / "file", "data tokenize")
    # a user's file standing where a new file must go stops the publish before anything moves
    again = claim(tmp_path / "new", "data tokenize")
    (tmp_path / "new" / "other.bin").write_text("user")
    stage = again.staging()
    (stage / "other.bin").write_text("ours")
    (stage / "index.json").write_text('{"v": 2}')
    with pytest.raises(OutputError, match="other.bin"):
        again.publish(stage)
    assert (tmp_path / "new" / "other.bin").read_text() == "user"
    assert (tmp_path / "new" / "index.json").read_text() == "{}"
    # remove_owned (--overwrite) deletes owned files only
    again = claim(tmp_path / "new", "data tokenize")
    (tmp_path / "new" / "sub" / "user.txt").write_text("keep")
    again.remove_owned(["sub", "index.json"])
    assert sorted(p.relative_to(tmp_path / "new").as_posix() for p in (tmp_path / "new").rglob("*")) == [
        ".fornalha-output.json", "other.bin", "sub", "sub/user.txt",
    ]  # fmt: skip


def test_staging_folder_of_a_killed_process_is_cleaned(tmp_path):
    out = claim(tmp_path / "o", "export hf")
    out.record([])
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    stale = tmp_path / "o" / f".fornalha-tmp-{int(dead.stdout)}"
    stale.mkdir(parents=True)
    (stale / "half.bin").write_bytes(b"x")
    (tmp_path / "o" / ".incomplete").mkdir()
    claim(out.path, "export hf")
    assert not stale.exists() and not (tmp_path / "o" / ".incomplete").exists()
    # in a folder that is not ours, a stale staging folder is ours and is removed; the rest is refused
    user = tmp_path / "user"
    (user / f".fornalha-tmp-{int(dead.stdout)}").mkdir(parents=True)
    claim(user, "data prepare")
    assert list(user.iterdir()) == []  # the claim itself writes nothing until the first output


def test_unwritable_out_is_exit_2(tmp_path, source):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")  # a folder cannot be made below a file (as root as well)
    proc = fornalha("data", "prepare", "--source", str(source), "--out", str(blocker / "ds"), "-q")
    assert proc.returncode == 2 and "cannot create --out" in error_line(proc), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_error_comes_first_on_stderr_not_the_device_line(tmp_path):
    (tmp_path / "run" / "checkpoints" / "best").mkdir(parents=True)
    proc = fornalha("generate", "--run", str(tmp_path / "run"), "--prompt", "hi", "--device", "cpu")
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[0].startswith("error:") and "not a run folder" in proc.stderr
    assert "device:" not in proc.stderr  # held back, and dropped because the command failed first


def test_tokenizer_train_and_data_tokenize_refuse_the_dataset_folder(tmp_path, source):
    from fornalha.data.prepare import PrepareConfig, SourceEntry, prepare

    ds = tmp_path / "ds"
    prepare(PrepareConfig(sources=[SourceEntry(source=str(source))]), ds, workers=1)
    before = sorted(p.relative_to(ds).as_posix() for p in ds.rglob("*"))
    proc = fornalha("tokenizer", "train", "--data", str(ds), "--out", str(ds), "--vocab-size", "300")
    assert (
        proc.returncode == 2
        and "`fornalha data prepare`, not of `fornalha tokenizer train`" in error_line(proc)
    )
    proc = fornalha("data", "tokenize", "--data", str(ds), "--tokenizer", str(ds), "--out", str(ds))
    assert proc.returncode == 2 and "error:" in error_line(proc), proc.stderr
    assert sorted(p.relative_to(ds).as_posix() for p in ds.rglob("*")) == before
