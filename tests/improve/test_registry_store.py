"""Migration 0003 (model versions, promotion decisions, preference pairs, ingested documents,
completions.model_version) on a database written by the previous release, and the store's new methods."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from fornalha.serve.store import Store, StoreError, current_revision, make_engine, upgrade


def test_0003_upgrades_a_0002_database_and_downgrades_cleanly(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    old = make_engine(url)
    upgrade(old, "0002")
    with old.begin() as conn:  # a completion and its rating written before 0003
        conn.exec_driver_sql(
            "INSERT INTO completions (id, created, model, endpoint, params, finish_reasons, prompt_tokens,"
            " completion_tokens, prompts_logged) VALUES ('old-1', 1.0, 'm', 'completions', '{}', '[]', 1, 1, 1)"
        )
        conn.exec_driver_sql("INSERT INTO feedback (completion_id, created, rating) VALUES ('old-1', 1.0, 1)")
    old.dispose()
    store = Store(url)
    assert current_revision(store.engine) == "0003"
    assert store.get_completion("old-1")["model_version"] is None  # kept, with no version
    store.record_completion({"id": "new-1", "model": "m", "model_version": "v2", "request": {}})
    store.record_feedback("new-1", 1)  # waits for the queued completion
    assert store.get_completion("new-1")["model_version"] == "v2"
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {"model_versions", "promotion_decisions", "preference_pairs", "ingested_documents"} <= tables
    store.close()

    eng = make_engine(url)
    upgrade(eng, "0003")
    from alembic import command

    from fornalha.serve.store import alembic_config

    with eng.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    assert current_revision(eng) == "0002"
    assert "model_versions" not in sa.inspect(eng).get_table_names()
    assert "model_version" not in {c["name"] for c in sa.inspect(eng).get_columns("completions")}
    with eng.connect() as conn:  # the rows of before survive the round trip
        assert conn.exec_driver_sql("select count(*) from completions").scalar_one() == 2
    eng.dispose()


def test_preference_pairs_and_documents(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    prompt = [{"role": "user", "content": "Olá?"}]
    pid = store.record_preference_pair(
        prompt, "Olá! Tudo bem?", "Hello.", source="compare", conversation_id="c1"
    )
    assert [(p["id"], p["prompt"], p["chosen"], p["source"]) for p in store.list_preference_pairs()] == [
        (pid, prompt, "Olá! Tudo bem?", "compare")
    ]
    with pytest.raises(StoreError, match="same answer"):
        store.record_preference_pair(prompt, "a", "a", source="compare")
    with pytest.raises(StoreError, match="list of chat messages"):
        store.record_preference_pair("Olá?", "a", "b", source="compare")  # type: ignore[arg-type]
    first = store.record_document("Um documento novo.", source="upload", meta={"lang": "pt"})
    assert first is not None
    assert store.record_document("Um documento novo.", source="again") is None  # the same text: kept once
    assert [d["source"] for d in store.list_documents()] == ["upload"]
    with pytest.raises(StoreError):
        store.record_document("   ")
    store.close()


@pytest.fixture(scope="module")
def pg_url():
    """A real PostgreSQL server for this module (as tests/store/test_postgres.py starts one)."""
    import glob
    import os
    import shutil
    import socket
    import subprocess
    import tempfile
    from pathlib import Path

    def pg_bin(name: str) -> str | None:
        return shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)

    def as_postgres(cmd: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd

    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.fail("PostgreSQL not found: apt-get install -y postgresql (make test-deps does it)")
    root = Path(tempfile.mkdtemp(prefix="fornalha-pg-registry-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    subprocess.run(as_postgres([initdb, "-D", str(data), "-U", "fornalha", "--auth=trust", "-E", "UTF8"]),
                   check=True, capture_output=True)  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock}"
    subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"]),
                   check=True, capture_output=True)  # fmt: skip
    yield f"postgresql+psycopg://fornalha@127.0.0.1:{port}/postgres"
    subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def test_registry_rows_and_0003_on_postgresql(pg_url, tmp_path, runs):
    from alembic import command

    from fornalha.improve.gate import GatePolicy, make_gate
    from fornalha.improve.registry import Registry
    from fornalha.serve.store import alembic_config

    reg = Registry.open(tmp_path / "reg", pg_url, create=True)
    for name in ("base", "good", "bad"):
        reg.register(runs[name])
    assert not reg.promote("v3", gate=make_gate(GatePolicy())).promoted
    assert reg.promote("v2", gate=make_gate(GatePolicy())).promoted
    rows = reg.db_rows()
    assert [(v["version"], v["parent"]) for v in rows["versions"]] == [
        ("v1", None),
        ("v2", "v1"),
        ("v3", "v1"),
    ]
    assert [(d["action"], d["promoted"]) for d in rows["decisions"]] == [
        ("initial", True), ("promote", False), ("promote", True)]  # fmt: skip
    eng = reg.engine()
    with eng.begin() as conn:
        command.downgrade(alembic_config(conn), "0002")
    assert "model_versions" not in sa.inspect(eng).get_table_names()
    upgrade(eng)
    assert current_revision(eng) == "0003"
    assert reg.sync_db() == 3 + 3  # the mirror is rebuilt from registry.json
    reg.close()
