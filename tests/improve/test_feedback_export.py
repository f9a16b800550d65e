"""`fornalha feedback export` on a store filled through the real store API (SQLite in tmp)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fornalha.errors import DataError
from fornalha.finetune.preference_data import read_preference_file
from fornalha.improve.feedback import conversation_id, export_examples
from fornalha.serve.store import Store

SRC = Path(__file__).resolve().parents[2] / "src"


def chat(question: str, history: list | None = None) -> dict:
    return {"messages": [*(history or []), {"role": "user", "content": question}], "max_tokens": 16}


def fill(store: Store, n_conversations: int = 12) -> None:
    """Per conversation: a liked and a disliked answer to the same question, a disliked answer
    with a correction, and a second turn; plus the cases the export must skip or merge."""
    for i in range(n_conversations):
        q = f"question {i}: what is {i} plus {i}?"
        model = "v1" if i % 2 else "v2"
        rows = [
            (f"{i}-a", chat(q), f"it is {2 * i}", 1, None),
            (f"{i}-b", chat(q), "no idea", -1, None),
            (f"{i}-c", chat(q), "maybe seven", -1, f"{i} plus {i} is {2 * i}."),
        ]
        history = [{"role": "user", "content": q}, {"role": "assistant", "content": f"it is {2 * i}"}]
        rows.append((f"{i}-d", chat("and times two?", history), f"{4 * i}", 1, None))
        for cid, request, answer, rating, correction in rows:
            store.record_completion(
                {
                    "id": cid,
                    "model": model,
                    "endpoint": "chat.completions",
                    "request": request,
                    "output": [answer],
                }
            )
            store.record_feedback(cid, rating, user=f"user{i}", correction=correction)
    # the same liked answer rated twice (deduplicated), a changed mind (newest rating wins),
    # PII in a question, an unrated completion, and a text completion (not a chat)
    store.record_completion({"id": "dup", "model": "v1", "request": chat("question 0: what is 0 plus 0?"),
                             "output": ["it is 0"]})  # fmt: skip
    store.record_feedback("dup", 1)
    store.record_completion({"id": "flip", "model": "v1", "request": chat("mail me at ana@example.com"),
                             "output": ["sure: ana@example.com"]})  # fmt: skip
    store.record_feedback("flip", 1)
    store.record_feedback("flip", -1, comment="leaks my address")
    store.record_completion({"id": "unrated", "model": "v1", "request": chat("hello"), "output": ["hi"]})
    store.record_completion({"id": "text", "model": "v1", "endpoint": "completions",
                             "request": {"prompt": "once upon"}, "output": ["a time"]})  # fmt: skip
    store.record_feedback("text", 1)
    store.record_feedback("text", -1)  # a skipped completion is counted once, however often rated


@pytest.fixture
def db_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path / 'serve.db'}"
    store = Store(url)
    fill(store)
    store.close()
    return url


def test_export_kinds_pairs_split_and_report(db_url):
    result = export_examples(db_url, held_out=0.3)
    ex, report = result.examples, result.report
    assert report["rated_answers"] == 12 * 4 + 2  # 'dup' rates an answer already seen; 'text' skipped
    assert report["skipped"] == {"not a chat completion": 1}
    assert report["ratings"] == {"liked": 12 * 2 + 1, "disliked": 12 * 2 + 1}
    assert report["corrections"] == 12 and report["pii_replaced"] == {"EMAIL": 2}
    total = {
        k: sum(report["counts"][s][k] for s in ("train", "held_out"))
        for k in ("sft", "preferences", "unpaired")
    }
    # per conversation: sft = liked + correction + liked 2nd turn (the duplicate 'dup' adds nothing)
    assert total["sft"] == 12 * 3
    # chosen ∈ {liked, correction} × rejected ∈ {no idea, maybe seven} = 4 pairs per question
    assert total["preferences"] == 12 * 4
    assert total["unpaired"] == 12 * 4 + 1  # 'flip' (newest rating: disliked) is unpaired only
    assert report["per_model"]["v1"]["preferences"] + report["per_model"]["v2"]["preferences"] == 48
    assert report["per_model"]["v1"]["preferences"] == 24
    # split by conversation: the two turns of one conversation sit on the same side, never both
    sides = {s: {r["conversation"] for k in ex[s] for r in ex[s][k]} for s in ("train", "held_out")}
    assert sides["train"] and sides["held_out"] and not sides["train"] & sides["held_out"]
    second_turns = [r for s in ex for r in ex[s]["sft"] if len(r["messages"]) == 4]
    for r in second_turns:
        assert r["conversation"] == conversation_id(r["messages"][:1])
    pair = next(
        r
        for r in ex["train"]["preferences"] + ex["held_out"]["preferences"]
        if r["chosen_source"] == "correction"
    )
    assert pair["messages"][-1]["role"] == "user" and pair["rejected"] in ("no idea", "maybe seven")
    flip = next(r for s in ex for r in ex[s]["unpaired"] if "mail" in r["messages"][0]["content"])
    assert (
        flip["label"] is False
        and "ana@example.com" not in json.dumps(flip)
        and "<EMAIL>" in flip["completion"]
    )
    assert flip["comments"] == ["leaks my address"]


def test_cli_writes_files_dpo_reads(db_url, tmp_path):
    out = tmp_path / "fb"
    env = dict(os.environ, PYTHONPATH=str(SRC), COLUMNS="200")
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "fornalha.cli", "feedback", "export", *a], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    r = run("--db", db_url, "--out", str(out), "--held-out", "0.3")
    assert r.returncode == 0, r.stderr
    assert "preferences" in r.stdout and "model v1" in r.stdout and "50 rated answers" in r.stdout
    report = json.loads((out / "report.json").read_text())
    for split in ("train", "held_out"):
        pf = read_preference_file(out / split / "preferences.jsonl")  # the shape `finetune dpo` reads
        assert not pf.bad and len(pf.pairs) == report["counts"][split]["preferences"]
        for line in (out / split / "sft.jsonl").read_text().splitlines():
            assert json.loads(line)["messages"][-1]["role"] == "assistant"
    first = (out / "train" / "sft.jsonl").read_bytes()
    assert (
        run("--db", db_url, "--out", str(out), "--held-out", "0.3").returncode == 0
    )  # its own folder: redone
    assert (out / "train" / "sft.jsonl").read_bytes() == first  # deterministic
    # someone else's folder is refused untouched; a missing database is one line, exit 2, nothing created
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    r = run("--db", db_url, "--out", str(mine))
    assert r.returncode == 2 and sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    r = run("--db", f"sqlite:///{tmp_path / 'nope.db'}", "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and "no such database" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "nope.db").exists() and not (tmp_path / "x").exists()


def test_a_database_without_the_store_tables_is_a_data_error(tmp_path):
    import sqlite3

    sqlite3.connect(tmp_path / "other.db").execute("create table t (x int)").connection.commit()
    with pytest.raises(DataError, match="cannot read the serving store"):
        export_examples(f"sqlite:///{tmp_path / 'other.db'}")
    with pytest.raises(DataError, match="not a database URL"):
        export_examples("::nonsense::")


def test_help_has_an_example():
    from typer.testing import CliRunner

    from fornalha.cli import app

    r = CliRunner().invoke(app, ["feedback", "export", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert r.exit_code == 0 and "fornalha feedback export --db" in r.output
