"""The same store on a real PostgreSQL server (a throwaway cluster started for this test)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from fornalha.serve.store import Store, UnknownCompletion, current_revision, make_engine, upgrade


def pg_bin(name: str) -> str | None:
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    return found


def as_postgres(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the `postgres` user when we are root."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def pg_url():
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.fail("PostgreSQL not found: apt-get install -y postgresql (make test-deps does it)")
    # Not under pytest's tmp folder: that one is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="fornalha-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
    subprocess.run(
        as_postgres([initdb, "-D", str(data), "-U", "fornalha", "--auth=trust", "-E", "UTF8"]), check=True
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=on"
    subprocess.run(
        as_postgres([pg_ctl, "-D", str(data), "-o", opts, "-l", str(root / "pg.log"), "-w", "start"]),
        check=True,
    )
    url = f"postgresql+psycopg://fornalha@127.0.0.1:{port}/postgres"
    yield url
    subprocess.run(as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "stop"]), capture_output=True)
    shutil.rmtree(root, ignore_errors=True)


def fresh_db(pg_url: str, name: str) -> str:
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    admin.dispose()
    return pg_url.rsplit("/", 1)[0] + "/" + name


def test_postgres_concurrent_writers_feedback_and_migrations(pg_url):
    url = fresh_db(pg_url, "store_a")
    store = Store(url)
    assert current_revision(store.engine) == "0003"

    def writer(t: int) -> None:
        for j in range(25):
            store.record_completion(
                {"id": f"c-{t}-{j}", "model": "m", "request": {"messages": []}, "output": ["x"]}
            )
        store.record_feedback(f"c-{t}-0", 1, "ok", user=f"u{t}")

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with pytest.raises(UnknownCompletion):
        store.record_feedback("nope", 1)
    store.close()
    reopened = Store(url)
    assert reopened.counts() == {"completions": 400, "feedback": 16}
    reopened.close()


def test_postgres_upgrade_from_previous_revision(pg_url):
    url = fresh_db(pg_url, "store_b")
    engine = make_engine(url)
    upgrade(engine, "0001")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "INSERT INTO completions (id, created, model, endpoint, params, finish_reasons, prompt_tokens,"
            " completion_tokens, prompts_logged) VALUES ('old', 1.0, 'm', 'completions', '{}', '[]', 1, 1, true)"
        )
    engine.dispose()
    store = Store(url)
    assert current_revision(store.engine) == "0003"
    store.record_feedback("old", -1, correction="better")
    assert [r["correction"] for r in store.list_feedback("old")] == ["better"]
    store.close()
