"""The serving store: every completion and every rating, kept durably off the decode loop.

Algorithm
---------
1. `Store(url)` opens a SQLAlchemy 2 engine (SQLite in WAL mode by default, any URL works: PostgreSQL too)
   and brings the schema to the newest Alembic revision (`alembic upgrade head`, run programmatically
   from the migrations packaged beside this module).
2. `record_completion(record)` never blocks the caller: the record goes into a queue that one writer
   thread drains, inserting whatever has gathered in one transaction. The ids still in the queue are
   remembered so feedback can wait for them.
3. `record_feedback(...)` validates first (rating is +1 or -1, bounded comment/correction), waits
   (bounded) for a completion with that id that is still queued, then inserts in one transaction and
   returns only after the commit: what the caller acknowledges is on disk. Nothing is half-written.
4. `close()` puts a sentinel in the queue and joins the writer: every record accepted before it is written.

With `log_prompts=False` only metadata is kept: the sampling parameters, token counts and timings,
never the messages, the prompt or the answer text.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event

from fornalha.errors import FornalhaError

MAX_COMMENT_CHARS = 4000
MAX_CORRECTION_CHARS = 32000
MAX_USER_CHARS = 256
FEEDBACK_WAIT_S = 5.0
BATCH_MAX = 256
# Request keys that carry text a user typed; dropped when prompts are not logged.
TEXT_KEYS = ("messages", "prompt", "input", "suffix")

log = logging.getLogger(__name__)
metadata = sa.MetaData()
# The tables as the newest migration leaves them (the migrations are the source of truth for the schema;
# these objects are only used to build statements).
completions = sa.Table(
    "completions",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("endpoint", sa.String(32), nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("request", sa.Text, nullable=True),
    sa.Column("output", sa.Text, nullable=True),
    sa.Column("finish_reasons", sa.Text, nullable=False),
    sa.Column("prompt_tokens", sa.Integer, nullable=False),
    sa.Column("completion_tokens", sa.Integer, nullable=False),
    sa.Column("latency_ms", sa.Float, nullable=True),
    sa.Column("ttft_ms", sa.Float, nullable=True),
    sa.Column("user", sa.String(MAX_USER_CHARS), nullable=True),
    sa.Column("prompts_logged", sa.Boolean, nullable=False),
    sa.Column("model_version", sa.String(64), nullable=True),  # 0003: the registry version that answered
)
feedback = sa.Table(
    "feedback",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("completion_id", sa.String(64), sa.ForeignKey("completions.id"), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("rating", sa.Integer, nullable=False),
    sa.Column("comment", sa.Text, nullable=True),
    sa.Column("user", sa.String(MAX_USER_CHARS), nullable=True),
    sa.Column("correction", sa.Text, nullable=True),
)


# --- 0003: the continuous-improvement loop (fornalha.improve) ------------------------------------------
# Model versions and promotion decisions mirror a registry's registry.json (written by
# fornalha.improve.registry); preference pairs and ingested documents are the loop's new data.
model_versions = sa.Table(
    "model_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("registry", sa.String(1024), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("number", sa.Integer, nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("created_by", sa.String(256), nullable=True),
    sa.Column("source", sa.String(2048), nullable=True),
    sa.Column("parent", sa.String(64), nullable=True),
    sa.Column("config", sa.Text, nullable=True),
    sa.Column("data_hashes", sa.Text, nullable=True),
    sa.Column("metrics", sa.Text, nullable=True),
    sa.Column("path", sa.String(2048), nullable=False),
)
promotion_decisions = sa.Table(
    "promotion_decisions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("registry", sa.String(1024), nullable=False),
    sa.Column("decision", sa.String(64), nullable=False),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("challenger", sa.String(64), nullable=True),
    sa.Column("champion_before", sa.String(64), nullable=True),
    sa.Column("champion_after", sa.String(64), nullable=True),
    sa.Column("promoted", sa.Boolean, nullable=False),
    sa.Column("forced", sa.Boolean, nullable=False),
    sa.Column("numbers", sa.Text, nullable=True),
    sa.Column("reasons", sa.Text, nullable=True),
    sa.Column("policy", sa.Text, nullable=True),
    sa.Column("created_by", sa.String(256), nullable=True),
)
preference_pairs = sa.Table(
    "preference_pairs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("source", sa.String(32), nullable=False),  # "regenerate", "compare", "import", ...
    sa.Column("conversation_id", sa.String(64), nullable=True),
    sa.Column("prompt", sa.Text, nullable=False),  # JSON: the messages before the answer
    sa.Column("chosen", sa.Text, nullable=False),
    sa.Column("rejected", sa.Text, nullable=False),
    sa.Column("chosen_completion_id", sa.String(64), nullable=True),
    sa.Column("rejected_completion_id", sa.String(64), nullable=True),
    sa.Column("user", sa.String(MAX_USER_CHARS), nullable=True),
)
ingested_documents = sa.Table(
    "ingested_documents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("created", sa.Float, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("source", sa.String(2048), nullable=True),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("meta", sa.Text, nullable=True),
    sa.Column("dataset", sa.String(2048), nullable=True),
)


class StoreError(FornalhaError):
    """Invalid feedback or a store that cannot be used."""


class UnknownCompletion(StoreError):
    """Feedback names a completion id the store has never seen."""


def migrations_dir() -> Path:
    return Path(__file__).parent / "migrations"


def alembic_config(connection: sa.Connection | None = None):
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["connection"] = connection
    return cfg


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """`alembic upgrade REVISION` on this engine."""
    from alembic import command

    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)


def current_revision(engine: sa.Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def make_engine(url: str) -> sa.Engine:
    """A SQLAlchemy engine; SQLite gets WAL, a busy timeout and FULL sync (acknowledged = on disk)."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"--db: not a database URL: {url!r}") from exc
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(parsed)
    if parsed.get_backend_name() == "sqlite":

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=10000")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

    return engine


def _row_from_record(record: dict, log_prompts: bool) -> dict:
    request = dict(record.get("request") or {})
    params = {k: v for k, v in request.items() if k not in TEXT_KEYS}
    return {
        "id": str(record["id"]),
        "created": float(record.get("created") or time.time()),
        "model": str(record.get("model") or ""),
        "endpoint": str(record.get("endpoint") or "chat.completions"),
        "params": json.dumps(params, ensure_ascii=False),
        "request": json.dumps(request, ensure_ascii=False) if log_prompts else None,
        "output": json.dumps(list(record.get("output") or []), ensure_ascii=False) if log_prompts else None,
        "finish_reasons": json.dumps(list(record.get("finish_reasons") or [])),
        "prompt_tokens": int(record.get("prompt_tokens") or 0),
        "completion_tokens": int(record.get("completion_tokens") or 0),
        "latency_ms": record.get("latency_ms"),
        "ttft_ms": record.get("ttft_ms"),
        "user": (str(record["user"])[:MAX_USER_CHARS] if record.get("user") else None),
        "prompts_logged": bool(log_prompts),
        "model_version": (str(record["model_version"])[:64] if record.get("model_version") else None),
    }


class Store:
    """Completions and feedback in a SQL database; completions written by a background thread."""

    def __init__(self, url: str, *, log_prompts: bool = True) -> None:
        self.url = url
        self.log_prompts = log_prompts
        self.engine = make_engine(url)
        try:
            upgrade(self.engine)
        except sa.exc.OperationalError as exc:
            raise StoreError(f"cannot open the store at {url}: {exc.orig}") from exc
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._pending: dict[str, int] = {}  # id -> how many queued records carry it
        self._cond = threading.Condition()
        self._closed = False
        self.write_errors = 0
        self._writer = threading.Thread(target=self._write_loop, name="fornalha-store-writer", daemon=True)
        self._writer.start()

    # --- completions: queued, written by one thread -------------------------------------------------
    def record_completion(self, record: dict) -> None:
        """Queue one completion for writing; returns at once (never touches the database here)."""
        if self._closed:
            raise StoreError("the store is closed")
        row = _row_from_record(record, self.log_prompts)
        with self._cond:
            self._pending[row["id"]] = self._pending.get(row["id"], 0) + 1
        self._queue.put(row)

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            rows = [self._queue.get()]
            while len(rows) < BATCH_MAX:
                try:
                    rows.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in rows:
                stop = True
                rows = [r for r in rows if r is not None]
            if rows:
                self._write_rows(rows)

    def _write_rows(self, rows: list[dict]) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(completions.insert(), rows)
        except sa.exc.IntegrityError:
            # One duplicate id must not lose the others: fall back to one transaction per row.
            for row in rows:
                try:
                    with self.engine.begin() as conn:
                        conn.execute(completions.insert(), [row])
                except sa.exc.SQLAlchemyError as exc:
                    self.write_errors += 1
                    log.error("store: completion %s not written: %s", row["id"], exc)
        except sa.exc.SQLAlchemyError as exc:
            self.write_errors += len(rows)
            log.error("store: %d completions not written: %s", len(rows), exc)
        finally:
            with self._cond:
                for row in rows:
                    n = self._pending.get(row["id"], 0) - 1
                    if n <= 0:
                        self._pending.pop(row["id"], None)
                    else:
                        self._pending[row["id"]] = n
                self._cond.notify_all()

    # --- feedback: synchronous and durable ------------------------------------------------------------
    def record_feedback(
        self,
        completion_id: str,
        rating: int,
        comment: str | None = None,
        user: str | None = None,
        correction: str | None = None,
    ) -> dict:
        """Store one rating of a completion; durable when it returns. Raises StoreError on bad input."""
        if not isinstance(completion_id, str) or not completion_id:
            raise StoreError("completion_id must be a non-empty string")
        if isinstance(rating, bool) or rating not in (1, -1):
            raise StoreError(f"rating must be 1 or -1, got {rating!r}")
        for name, value, limit in (
            ("comment", comment, MAX_COMMENT_CHARS),
            ("correction", correction, MAX_CORRECTION_CHARS),
            ("user", user, MAX_USER_CHARS),
        ):
            if value is not None and not isinstance(value, str):
                raise StoreError(f"{name} must be a string")
            if value is not None and len(value) > limit:
                raise StoreError(f"{name} is {len(value)} characters; at most {limit} are accepted")
        with self._cond:  # a completion still in the queue is about to exist: wait for it (bounded)
            self._cond.wait_for(lambda: completion_id not in self._pending, timeout=FEEDBACK_WAIT_S)
        row = {
            "completion_id": completion_id,
            "created": time.time(),
            "rating": int(rating),
            "comment": comment or None,
            "user": user or None,
            "correction": correction or None,
        }
        with self.engine.begin() as conn:
            found = conn.execute(sa.select(completions.c.id).where(completions.c.id == completion_id)).first()
            if found is None:
                raise UnknownCompletion(f"unknown completion_id {completion_id!r}")
            new_id = conn.execute(feedback.insert().values(**row)).inserted_primary_key[0]
        return {"id": int(new_id), **row}

    # --- reading (tests, the feedback export, people looking) ----------------------------------------
    def get_completion(self, completion_id: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(completions).where(completions.c.id == completion_id)).first()
        if row is None:
            return None
        out = dict(row._mapping)
        for key in ("params", "request", "output", "finish_reasons"):
            if out[key] is not None:
                out[key] = json.loads(out[key])
        return out

    def list_feedback(self, completion_id: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(feedback).order_by(feedback.c.id)
        if completion_id is not None:
            query = query.where(feedback.c.completion_id == completion_id)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    def counts(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            n_c = conn.execute(sa.select(sa.func.count()).select_from(completions)).scalar_one()
            n_f = conn.execute(sa.select(sa.func.count()).select_from(feedback)).scalar_one()
        return {"completions": int(n_c), "feedback": int(n_f)}

    # --- 0003: preference pairs and ingested documents (the improvement loop's new data) --------------
    def record_preference_pair(
        self,
        prompt: list[dict],
        chosen: str,
        rejected: str,
        *,
        source: str,
        conversation_id: str | None = None,
        chosen_completion_id: str | None = None,
        rejected_completion_id: str | None = None,
        user: str | None = None,
    ) -> int:
        """Store one "A is better than B" judgement; durable when it returns. Returns its id."""
        if not isinstance(prompt, list) or not all(isinstance(m, dict) for m in prompt):
            raise StoreError("prompt must be a list of chat messages")
        if not all(isinstance(t, str) and t for t in (chosen, rejected)):
            raise StoreError("chosen and rejected must be non-empty strings")
        if chosen == rejected:
            raise StoreError("chosen and rejected are the same answer")
        row = {
            "created": time.time(), "source": str(source)[:32], "conversation_id": conversation_id,
            "prompt": json.dumps(prompt, ensure_ascii=False), "chosen": chosen, "rejected": rejected,
            "chosen_completion_id": chosen_completion_id, "rejected_completion_id": rejected_completion_id,
            "user": user[:MAX_USER_CHARS] if user else None,
        }  # fmt: skip
        with self.engine.begin() as conn:
            return int(conn.execute(preference_pairs.insert().values(**row)).inserted_primary_key[0])

    def list_preference_pairs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = [
                dict(r._mapping)
                for r in conn.execute(sa.select(preference_pairs).order_by(preference_pairs.c.id))
            ]
        for r in rows:
            r["prompt"] = json.loads(r["prompt"])
        return rows

    def record_document(
        self, text: str, *, source: str | None = None, meta: dict | None = None
    ) -> int | None:
        """Store one newly ingested document; None when the same text (sha256) is already there."""
        import hashlib

        if not isinstance(text, str) or not text.strip():
            raise StoreError("a document must be non-empty text")
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        row = {"created": time.time(), "sha256": digest, "source": source, "text": text,
               "meta": json.dumps(meta or {}, ensure_ascii=False)}  # fmt: skip
        try:
            with self.engine.begin() as conn:
                return int(conn.execute(ingested_documents.insert().values(**row)).inserted_primary_key[0])
        except sa.exc.IntegrityError:
            return None

    def list_documents(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            query = sa.select(ingested_documents).order_by(ingested_documents.c.id)
            return [dict(r._mapping) for r in conn.execute(query)]

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued, then stop the writer and dispose of the engine."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(None)
        self._writer.join(timeout)
        if self._writer.is_alive():
            raise StoreError(f"the store writer did not finish within {timeout:.0f} s; records may be lost")
        self.engine.dispose()
