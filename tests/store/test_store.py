"""The store on its own: WAL, migrations, concurrent writers, flush on close, metadata-only mode."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa

from fornalha.serve.store import Store, StoreError, UnknownCompletion, current_revision, make_engine, upgrade


def record(i: int | str, **kw) -> dict:
    base = {
        "id": f"cmpl-{i}",
        "created": 1.0,
        "model": "m",
        "endpoint": "chat.completions",
        "request": {
            "messages": [{"role": "user", "content": f"secret prompt {i}"}],
            "temperature": 0.3,
            "max_tokens": 8,
        },
        "output": [f"secret answer {i}"],
        "finish_reasons": ["stop"],
        "prompt_tokens": 5,
        "completion_tokens": 3,
        "latency_ms": 12.5,
        "ttft_ms": 4.0,
        "user": "ana",
    }
    base.update(kw)
    return base


@pytest.fixture
def db_url(tmp_path):
    return f"sqlite:///{tmp_path / 'serve.db'}"


def test_sqlite_is_in_wal_mode_and_at_head(db_url):
    store = Store(db_url)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert current_revision(store.engine) == "0003"
    store.close()


def test_round_trip_and_feedback(db_url):
    store = Store(db_url)
    store.record_completion(record(1))
    fb = store.record_feedback(
        "cmpl-1", -1, "too long", user="ana", correction="shorter"
    )  # waits for the queue
    got = store.get_completion("cmpl-1")
    assert got["request"]["messages"][0]["content"] == "secret prompt 1"
    assert got["output"] == ["secret answer 1"] and got["params"] == {"temperature": 0.3, "max_tokens": 8}
    assert (got["prompt_tokens"], got["completion_tokens"], got["user"]) == (5, 3, "ana")
    rows = store.list_feedback("cmpl-1")
    assert [(r["rating"], r["comment"], r["user"], r["correction"]) for r in rows] == [
        (-1, "too long", "ana", "shorter")
    ]
    assert rows[0]["id"] == fb["id"]
    store.close()


def test_sixteen_threads_lose_nothing_and_close_flushes(db_url):
    store = Store(db_url)
    n_threads, per_thread = 16, 40

    def writer(t: int) -> None:
        for j in range(per_thread):
            store.record_completion(record(f"{t}-{j}"))
        store.record_feedback(f"cmpl-{t}-0", 1 if t % 2 else -1)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()  # everything still queued is written here
    reopened = Store(db_url)
    assert reopened.counts() == {"completions": n_threads * per_thread, "feedback": n_threads}
    assert reopened.write_errors == 0 and store.write_errors == 0
    reopened.close()


def test_record_completion_does_not_block_on_a_locked_database(db_url):
    """A writer holding the database does not stall the caller: records only queue up."""
    import time

    store = Store(db_url)
    blocker = make_engine(db_url).connect()
    blocker.exec_driver_sql("BEGIN IMMEDIATE")  # takes SQLite's write lock
    t0 = time.perf_counter()
    for i in range(200):
        store.record_completion(record(i))
    assert time.perf_counter() - t0 < 0.5
    blocker.rollback()
    blocker.close()
    store.close()
    assert Store(db_url).counts()["completions"] == 200


def test_no_log_prompts_stores_only_metadata(db_url, tmp_path):
    store = Store(db_url, log_prompts=False)
    store.record_completion(record(7))
    store.close()
    got = Store(db_url).get_completion("cmpl-7")
    assert got["request"] is None and got["output"] is None and got["prompts_logged"] is False
    assert got["params"] == {"temperature": 0.3, "max_tokens": 8} and got["completion_tokens"] == 3
    raw = (tmp_path / "serve.db").read_bytes() + b"".join(p.read_bytes() for p in tmp_path.glob("serve.db-*"))
    assert b"secret" not in raw


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("cmpl-nope", 1), UnknownCompletion),
        (("cmpl-1", 0), StoreError),
        (("cmpl-1", 2), StoreError),
        (("cmpl-1", True), StoreError),
        (("cmpl-1", 1, "x" * 4001), StoreError),
    ],
)
def test_bad_feedback_is_refused_and_nothing_written(db_url, args, error, monkeypatch):
    monkeypatch.setattr("fornalha.serve.store.FEEDBACK_WAIT_S", 0.1)
    store = Store(db_url)
    store.record_completion(record(1))
    with pytest.raises(error):
        store.record_feedback(*args)
    assert store.counts()["feedback"] == 0
    store.close()


def test_upgrade_from_empty_and_from_previous_revision(tmp_path):
    empty = make_engine(f"sqlite:///{tmp_path / 'empty.db'}")
    upgrade(empty)
    assert current_revision(empty) == "0003"
    cols = {c["name"] for c in sa.inspect(empty).get_columns("feedback")}
    assert {"user", "correction"} <= cols

    old_url = f"sqlite:///{tmp_path / 'old.db'}"
    old = make_engine(old_url)
    upgrade(old, "0001")
    assert current_revision(old) == "0001"
    assert "correction" not in {c["name"] for c in sa.inspect(old).get_columns("feedback")}
    with old.begin() as conn:  # a database written by the previous release
        conn.exec_driver_sql(
            "INSERT INTO completions (id, created, model, endpoint, params, finish_reasons, prompt_tokens,"
            " completion_tokens, prompts_logged) VALUES ('old-1', 1.0, 'm', 'completions', '{}', '[]', 1, 1, 1)"
        )
        conn.exec_driver_sql("INSERT INTO feedback (completion_id, created, rating) VALUES ('old-1', 1.0, 1)")
    old.dispose()
    store = Store(old_url)  # runs `alembic upgrade head`
    assert current_revision(store.engine) == "0003"
    store.record_feedback("old-1", -1, correction="better")
    assert [(r["rating"], r["correction"]) for r in store.list_feedback("old-1")] == [
        (1, None),
        (-1, "better"),
    ]
    names = {i["name"] for i in sa.inspect(store.engine).get_indexes("feedback")}
    assert "ix_feedback_completion_id" in names
    store.close()


def test_bad_url_is_a_store_error():
    with pytest.raises(StoreError):
        Store("not a url")


def test_a_duplicate_id_does_not_lose_the_rest_of_its_batch(db_url):
    store = Store(db_url)
    store.record_completion(record(1))
    store.close()
    store = Store(db_url)
    for rec in (record(2), record(1), record(3)):  # likely one batch; the duplicate fails alone
        store.record_completion(rec)
    store.close()
    assert store.write_errors == 1
    assert Store(db_url).counts()["completions"] == 3
