"""The model registry: numbered versions of one model, their lineage, and who is serving.

A registry is a folder::

    DIR/registry.json          the source of truth: versions, the aliases `champion` and `challenger`,
                               the champion history (for rollback) and every promotion decision
    DIR/versions/v1/           a run folder (checkpoints/best/, tokenizer/, config.yaml, version.json):
                               `fornalha serve/generate/eval --run DIR/versions/v1` accept it as is
    DIR/fornalha.db            the default database (`--db URL` for another): the same versions and
                               decisions as rows, beside the serving store's completions and feedback
    DIR/report.html            every decision with its numbers (`fornalha registry report`)
    DIR/.fornalha-output.json  the files the registry created (fornalha.outputs); nothing else is touched

Algorithm
---------
1. `register(run)`: verify the run's best checkpoint (every sha256 in its meta.json), then hard-link
   its files into ``versions/.vN.tmp`` (a copy where the file system cannot link; checkpoints are
   written new and renamed, never edited in place, so a link can never change under us), rename
   the folder to ``versions/vN``, and record the version with its lineage: the parent version
   (found from the checkpoint's `lineage.parent`: a registered version's folder or source run, or
   the same weights), the data hashes (tokenizer, dataset/shards, extra `--data` files), the run's
   config and metrics, and who created it. The first version becomes the champion; a later one
   becomes the challenger.
2. `promote(vN, gate)`: the gate (fornalha.improve.gate) compares the challenger with the champion;
   only a passing challenger (or `force`) becomes the champion. The decision and its numbers are
   recorded either way.
3. `rollback()`: the champion before the current one comes back (the history is a stack).

Every change is read-modify-write of registry.json under an exclusive `flock` (``DIR/.registry.lock``),
written to a temporary file, fsync'ed and renamed: a reader (the server polling the champion) sees
the old file or the new one, whole. The database mirrors the file: rows missing from it (a crash
between the two writes, a new `--db`) are inserted by the next command that opens it.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fornalha.errors import DataError, FornalhaError

FORMAT = "fornalha-registry"
REGISTRY_FILE = "registry.json"
LOCK_FILE = ".registry.lock"
DB_FILE = "fornalha.db"
VERSIONS = "versions"
OWNER_COMMAND = "registry"  # the command name in DIR/.fornalha-output.json
ALIASES = ("champion", "challenger")


class RegistryError(FornalhaError):
    """A registry that does not exist, a version that is not in it, an impossible promotion."""


class UnknownVersionError(RegistryError):
    """A version id that is not in the registry (HTTP 404 at `POST /admin/promote`)."""


def who() -> str:
    """Who is acting: user@host (what `created_by` and decisions record)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def default_db_url(root: Path) -> str:
    return f"sqlite:///{Path(root).resolve() / DB_FILE}"


def read_registry_file(root: str | os.PathLike[str]) -> dict[str, Any]:
    """The parsed registry.json (no lock: the file is replaced atomically, a reader sees it whole)."""
    path = Path(root) / REGISTRY_FILE
    if not path.is_file():
        raise RegistryError(f"{root} is not a model registry (no {REGISTRY_FILE}); create one with "
                            "`fornalha registry register --registry DIR --run RUN`")  # fmt: skip
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RegistryError(f"{path} is unreadable: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RegistryError(f"{path} is not a fornalha registry file")
    return data


def champion_of(root: str | os.PathLike[str]) -> tuple[str, Path] | None:
    """(version id, its run folder) of the current champion, or None: what `fornalha serve --registry` polls."""
    data = read_registry_file(root)
    vid = data["aliases"].get("champion")
    if vid is None:
        return None
    return vid, Path(root) / VERSIONS / vid


@dataclass
class Decision:
    """One change of the champion (or a refused one), as recorded in registry.json and the database."""

    id: str
    action: str  # "initial", "promote", "rollback"
    challenger: str | None
    champion_before: str | None
    champion_after: str | None
    promoted: bool
    forced: bool = False
    numbers: dict[str, Any] | None = None  # the gate's measurements and checks
    reasons: list[str] | None = None
    policy: dict[str, Any] | None = None
    created: float = 0.0
    created_by: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class Registry:
    """One registry folder; see the module docstring. Methods that change it hold the lock."""

    def __init__(self, root: str | os.PathLike[str], db_url: str | None = None) -> None:
        self.root = Path(root)
        self.db_url = db_url or default_db_url(self.root)
        self._engine = None

    # ---- creating and reading -------------------------------------------------------------------
    @classmethod
    def open(
        cls, root: str | os.PathLike[str], db_url: str | None = None, *, create: bool = False
    ) -> Registry:
        """An existing registry, or (create=True) a new one in a missing or empty folder."""
        from fornalha.outputs import claim

        root = Path(root)
        if not (root / REGISTRY_FILE).is_file():
            if not create:
                read_registry_file(root)  # raises the one-line error
            out = claim(root, OWNER_COMMAND)  # refuses a folder holding someone else's files
            out.record([])  # creates the folder and the ownership manifest
            reg = cls(root, db_url)
            with reg._locked():
                if not (root / REGISTRY_FILE).is_file():
                    reg._write({"format": FORMAT, "version": 1, "created": _now_iso(),
                                "aliases": dict.fromkeys(ALIASES), "versions": {}, "champion_history": [],
                                "decisions": []})  # fmt: skip
            return reg
        return cls(root, db_url)

    def data(self) -> dict[str, Any]:
        return read_registry_file(self.root)

    def versions(self) -> list[dict[str, Any]]:
        return sorted(self.data()["versions"].values(), key=lambda v: v["number"])

    def version(self, vid: str) -> dict[str, Any]:
        found = self.data()["versions"].get(vid)
        if found is None:
            known = ", ".join(sorted(self.data()["versions"], key=_number)) or "none"
            raise UnknownVersionError(f"no version {vid!r} in {self.root} (versions: {known})")
        return found

    def path(self, vid: str) -> Path:
        return self.root / VERSIONS / vid

    def alias(self, name: str) -> str | None:
        return self.data()["aliases"].get(name)

    # ---- the file, under the lock ---------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / LOCK_FILE, "a+") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def _write(self, data: dict[str, Any]) -> None:
        from fornalha.files import fsync_dir
        from fornalha.outputs import claim

        path = self.root / REGISTRY_FILE
        tmp = path.with_name(f".{REGISTRY_FILE}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(self.root)
        out = claim(self.root, OWNER_COMMAND)
        if REGISTRY_FILE not in out.owned or LOCK_FILE not in out.owned:
            out.record([REGISTRY_FILE, LOCK_FILE])

    # ---- registering a run ----------------------------------------------------------------------
    def register(
        self,
        run: str | os.PathLike[str],
        *,
        parent: str | None = None,
        data_paths: list[Path] | None = None,
        metrics: dict[str, float] | None = None,
        note: str | None = None,
        created_by: str | None = None,
        make_challenger: bool = True,
    ) -> dict[str, Any]:
        """Add the run's best checkpoint and tokenizer as the next version vN; returns its record."""
        from fornalha.checkpoint import resolve_checkpoint, verify_checkpoint
        from fornalha.errors import CheckpointError
        from fornalha.outputs import claim

        run = Path(run)
        if not (run / "tokenizer").is_dir():
            raise RegistryError(
                f"{run} is not a run folder (no tokenizer/ inside); give a `fornalha train` --out"
            )
        try:
            ckpt = resolve_checkpoint(run, "best")
            meta = verify_checkpoint(ckpt)
        except CheckpointError as exc:
            raise RegistryError(f"cannot register {run}: {exc}") from None
        for p in data_paths or []:
            if not Path(p).exists():
                raise DataError(f"--data {p} does not exist")
        with self._locked():
            data = self.data()
            if parent is not None and parent not in data["versions"]:
                raise RegistryError(f"--parent {parent!r} is not a version of {self.root}")
            number = 1 + max((v["number"] for v in data["versions"].values()), default=0)
            vid = f"v{number}"
            versions_dir = self.root / VERSIONS
            final = versions_dir / vid
            if final.exists():
                raise RegistryError(f"{final} exists but is not in {REGISTRY_FILE}; move it away first")
            _remove_dead_staging(versions_dir)
            tmp = versions_dir / f".{vid}.tmp-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            linked = _link_tree(ckpt, tmp / "checkpoints" / "best")
            linked += _link_tree(run / "tokenizer", tmp / "tokenizer")
            for name in ("config.yaml", "summary.json", "eval.json"):
                if (run / name).is_file():
                    linked += _link_tree(run / name, tmp / name)
            all_metrics = _run_metrics(run, meta)
            all_metrics.update(metrics or {})
            record = {
                "id": vid,
                "number": number,
                "created": _now_iso(),
                "created_ts": time.time(),
                "created_by": created_by or who(),
                "command": " ".join(["fornalha", *sys.argv[1:]])
                if sys.argv and "fornalha" in sys.argv[0]
                else None,
                "source": str(run.resolve()),
                "source_checkpoint": str(ckpt.resolve()),
                "parent": parent if parent is not None else _find_parent(data, meta, self.root),
                "checkpoint": {"step": meta.get("step"), "files": meta.get("files", {})},
                "data_hashes": _data_hashes(run, meta, data_paths or []),
                "config": meta.get("run_config") or {},
                "metrics": all_metrics,
                "note": note,
                "files": "hard links" if linked else "copies",
            }
            (tmp / "version.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
            out = claim(self.root, OWNER_COMMAND)
            rel = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file()]
            out.record(f"{VERSIONS}/{vid}/{r}" for r in rel)  # owned before it appears under its name
            os.rename(tmp, final)
            data["versions"][vid] = record
            if data["aliases"]["champion"] is None:
                decision = Decision(_next_decision_id(data), "initial", vid, None, vid, True,
                                    reasons=["the first version of the registry becomes the champion"],
                                    created=time.time(), created_by=created_by or who())  # fmt: skip
                data["aliases"]["champion"] = vid
                data["champion_history"].append(vid)
                data["decisions"].append(decision.to_dict())
            elif make_challenger:
                data["aliases"]["challenger"] = vid
            self._write(data)
        self.sync_db()
        return record

    # ---- changing the champion ------------------------------------------------------------------
    def promote(
        self,
        vid: str | None = None,
        *,
        gate: Callable[[dict[str, Any], dict[str, Any]], Any] | None = None,
        force: bool = False,
        created_by: str | None = None,
    ) -> Decision:
        """Make `vid` (default: the challenger) the champion if `gate(champion, challenger)` passes.

        gate: returns a `fornalha.improve.gate.GateResult` (anything with `.passed`, `.reasons`,
        `.numbers`, `.policy`); None means no gate, which only `force` allows. The decision is
        recorded whatever it is; the champion changes only when it passed or was forced.
        """
        data = self.data()
        vid = vid or data["aliases"].get("challenger")
        if vid is None:
            raise RegistryError("no challenger to promote: name a version (e.g. `promote v3`)")
        challenger = self.version(vid)
        champion_id = data["aliases"].get("champion")
        if champion_id == vid:
            raise RegistryError(f"{vid} is already the champion")
        champion = self.version(champion_id) if champion_id else None
        reasons: list[str] = []
        numbers: dict[str, Any] = {}
        policy: dict[str, Any] | None = None
        passed = True
        if champion is not None and gate is not None:
            result = gate(
                {**champion, "_path": str(self.path(champion_id))},  # type: ignore[arg-type]
                {**challenger, "_path": str(self.path(vid))},
            )  # may take minutes: outside the lock
            passed, reasons, numbers, policy = (
                bool(result.passed),
                list(result.reasons),
                result.numbers,
                result.policy,
            )
        elif champion is not None and not force:
            raise RegistryError("promotion needs the evaluation gate or --force")
        promoted = passed or force
        if force and not passed:
            reasons.append("forced: promoted although the gate did not pass")
        elif force and gate is None:
            reasons.append("forced: promoted without the gate")
        with self._locked():
            data = self.data()
            if data["aliases"].get("champion") != champion_id:
                raise RegistryError("the champion changed while the gate ran; run promote again")
            decision = Decision(_next_decision_id(data), "promote", vid, champion_id,
                                vid if promoted else champion_id, promoted, force, numbers, reasons, policy,
                                time.time(), created_by or who())  # fmt: skip
            if promoted:
                data["aliases"]["champion"] = vid
                data["champion_history"].append(vid)
                if data["aliases"].get("challenger") == vid:
                    data["aliases"]["challenger"] = None
            data["decisions"].append(decision.to_dict())
            self._write(data)
        self.sync_db()
        return decision

    def rollback(self, to: str | None = None, *, created_by: str | None = None) -> Decision:
        """The previous champion (or `to`, a version that was champion before) serves again."""
        with self._locked():
            data = self.data()
            history: list[str] = data["champion_history"]
            current = data["aliases"].get("champion")
            if to is None:
                if len(history) < 2:
                    raise RegistryError("no earlier champion to roll back to")
                target = history[-2]
            else:
                self.version(to)
                if to == current:
                    raise RegistryError(f"{to} is already the champion")
                if to not in history:
                    raise RegistryError(f"{to} was never the champion; use `promote {to}` instead")
                target = to
            # the history is a stack: everything after the target's last appearance is unwound
            cut = len(history) - 1 - history[::-1].index(target)
            data["champion_history"] = history[: cut + 1]
            data["aliases"]["champion"] = target
            decision = Decision(_next_decision_id(data), "rollback", None, current, target, True,
                                reasons=[f"rolled back from {current} to {target}"], created=time.time(),
                                created_by=created_by or who())  # fmt: skip
            data["decisions"].append(decision.to_dict())
            self._write(data)
        self.sync_db()
        return decision

    # ---- the database mirror --------------------------------------------------------------------
    def engine(self):  # noqa: ANN201 - a sqlalchemy Engine
        if self._engine is None:
            import sqlalchemy as sa

            from fornalha.serve.store import StoreError, make_engine, upgrade

            if self.db_url == default_db_url(self.root) and not (self.root / DB_FILE).exists():
                from fornalha.outputs import claim

                claim(self.root, OWNER_COMMAND).record([DB_FILE])  # ours: created here, in our folder
            self._engine = make_engine(self.db_url)
            try:
                upgrade(self._engine)
            except sa.exc.OperationalError as exc:
                raise StoreError(f"cannot open the database at {self.db_url}: {exc.orig}") from exc
        return self._engine

    def sync_db(self) -> int:
        """Insert the versions and decisions of registry.json that the database lacks; returns how many."""
        import sqlalchemy as sa

        from fornalha.serve.store import model_versions, promotion_decisions

        data = self.data()
        key = str(self.root.resolve())
        eng = self.engine()
        added = 0
        with eng.begin() as conn:
            have_v = set(
                conn.execute(
                    sa.select(model_versions.c.version).where(model_versions.c.registry == key)
                ).scalars()
            )
            have_d = set(conn.execute(sa.select(promotion_decisions.c.decision).where(promotion_decisions.c.registry == key)).scalars())  # fmt: skip
            for v in data["versions"].values():
                if v["id"] in have_v:
                    continue
                conn.execute(model_versions.insert().values(
                    registry=key, version=v["id"], number=v["number"], created=v.get("created_ts") or time.time(),
                    created_by=v.get("created_by"), source=v.get("source"), parent=v.get("parent"),
                    config=json.dumps(v.get("config")), data_hashes=json.dumps(v.get("data_hashes")),
                    metrics=json.dumps(v.get("metrics")), path=str(self.path(v["id"]).resolve()),
                ))  # fmt: skip
                added += 1
            for d in data["decisions"]:
                if d["id"] in have_d:
                    continue
                conn.execute(promotion_decisions.insert().values(
                    registry=key, decision=d["id"], created=d["created"], action=d["action"],
                    challenger=d.get("challenger"), champion_before=d.get("champion_before"),
                    champion_after=d.get("champion_after"), promoted=bool(d["promoted"]),
                    forced=bool(d.get("forced")), numbers=json.dumps(d.get("numbers")),
                    reasons=json.dumps(d.get("reasons")), policy=json.dumps(d.get("policy")),
                    created_by=d.get("created_by"),
                ))  # fmt: skip
                added += 1
        return added

    def db_rows(self) -> dict[str, list[dict[str, Any]]]:
        """The database's rows for this registry (tests, `registry show --db`)."""
        import sqlalchemy as sa

        from fornalha.serve.store import model_versions, promotion_decisions

        key = str(self.root.resolve())
        with self.engine().connect() as conn:
            vs = conn.execute(sa.select(model_versions).where(model_versions.c.registry == key)
                              .order_by(model_versions.c.number))  # fmt: skip
            ds = conn.execute(sa.select(promotion_decisions).where(promotion_decisions.c.registry == key)
                              .order_by(promotion_decisions.c.id))  # fmt: skip
            return {"versions": [dict(r._mapping) for r in vs], "decisions": [dict(r._mapping) for r in ds]}

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


# ---- helpers --------------------------------------------------------------------------------------
def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _number(vid: str) -> int:
    return int(vid[1:]) if vid[1:].isdigit() else 0


def _next_decision_id(data: dict[str, Any]) -> str:
    return f"d{len(data['decisions']) + 1}"


def _remove_dead_staging(versions_dir: Path) -> None:
    """Remove ``versions/.vN.tmp-PID`` folders of a killed `register` (ours by name; their process is gone)."""
    from fornalha.outputs import _pid_alive

    if not versions_dir.is_dir():
        return
    for p in versions_dir.glob(".v*.tmp-*"):
        pid = p.name.rsplit("-", 1)[-1]
        if p.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)


def _link_tree(src: Path, dst: Path) -> bool:
    """Hard-link (else copy) a file or every file of a folder to dst; True when everything was linked."""
    files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
    linked = True
    for f in files:
        target = dst if src.is_file() else dst / f.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(f, target)
        except OSError:  # another file system, or links not allowed: a copy
            shutil.copy2(f, target)
            linked = False
    return linked


def _run_metrics(run: Path, meta: dict[str, Any]) -> dict[str, float]:
    """Numbers the run measured itself: its best checkpoint's evaluation, then eval.json if present."""
    metrics: dict[str, float] = {}
    for source in (
        meta.get("metrics") or {},
        {"val_loss": meta.get("val_loss"), "val_bpb": meta.get("val_bpb")},
    ):
        for k, v in source.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k not in metrics:
                metrics[k] = float(v)
    eval_file = run / "eval.json"
    if eval_file.is_file():
        with contextlib.suppress(OSError, ValueError):
            ev = json.loads(eval_file.read_text())
            for k in ("val_loss", "val_bpb", "bpb", "loss"):
                if isinstance(ev.get(k), int | float):
                    metrics.setdefault(f"eval_{k}", float(ev[k]))
    return metrics


def _find_parent(data: dict[str, Any], meta: dict[str, Any], root: Path) -> str | None:
    """The registered version this checkpoint was fine-tuned from (its `lineage.parent`), if any."""
    from fornalha.checkpoint import read_meta

    parent_path = (meta.get("lineage") or {}).get("parent")
    if not parent_path:
        return None
    p = Path(parent_path).resolve()
    weights = None
    with contextlib.suppress(FornalhaError, OSError):
        weights = read_meta(p).get("files", {}).get("model.safetensors")
    for v in sorted(data["versions"].values(), key=lambda v: -v["number"]):
        vdir = (root / VERSIONS / v["id"]).resolve()
        if p == vdir or vdir in p.parents:
            return v["id"]
        if str(p) in (v.get("source"), v.get("source_checkpoint")):
            return v["id"]
        if weights is not None and v["checkpoint"]["files"].get("model.safetensors") == weights:
            return v["id"]
    return None


def _data_hashes(run: Path, meta: dict[str, Any], extra: list[Path]) -> dict[str, str]:
    """sha256 of what the version learned from: its tokenizer, its training data's recorded hashes,
    and any extra files or folders given (`--data`, e.g. the preference pairs of a DPO run)."""
    from fornalha.files import file_sha256, tree_sha256

    tok = run / "tokenizer"
    hashes = {"tokenizer": tree_sha256([p for p in tok.rglob("*") if p.is_file()], tok)}
    data_path = ((meta.get("run_config") or {}).get("data") or {}).get("path")
    if data_path and Path(data_path).is_dir():
        d = Path(data_path)
        for marker, keys in (("index.json", ("dataset_sha256", "tokenizer_sha256")), ("manifest.json", ("sha256", "content_sha256"))):  # fmt: skip
            if (d / marker).is_file():
                with contextlib.suppress(OSError, ValueError):
                    info = json.loads((d / marker).read_text())
                    for k in keys:
                        if isinstance(info.get(k), str):
                            hashes[f"train_data.{k}"] = info[k]
        hashes.setdefault("train_data.path", str(d.resolve()))
    for p in extra:
        p = Path(p)
        if p.is_file():
            hashes[f"data:{p.name}"] = file_sha256(p)
        else:
            hashes[f"data:{p.name}"] = tree_sha256([f for f in p.rglob("*") if f.is_file()], p)
    return hashes


# ---- the report -----------------------------------------------------------------------------------
REPORT_FILE = "report.html"
_REPORT = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>registry {{ root }}</title>
<style>body{font:15px/1.45 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;
vertical-align:top}th{background:#f3f3f3}.ok{color:#176b21;font-weight:600}.no{color:#a31515;font-weight:600}
.alias{background:#fde68a;border-radius:4px;padding:0 .4em;margin-left:.3em;font-size:.85em}code{font-size:.9em}
small{color:#666}</style></head><body>
<h1>Model registry</h1>
<p><code>{{ root }}</code>. Champion: <b>{{ aliases.champion or "none" }}</b>; challenger:
<b>{{ aliases.challenger or "none" }}</b>. {{ versions|length }} version(s), {{ decisions|length }} decision(s).</p>
{% if chart %}<img alt="metrics per version" src="data:image/png;base64,{{ chart }}" style="max-width:100%">{% endif %}
<h2>Decisions, newest first</h2>
{% for d in decisions|reverse %}
<h3>{{ d.id }} · {{ d.action }}{% if d.challenger %} {{ d.challenger }}{% endif %} ·
{% if d.promoted %}<span class="ok">{{ "promoted" if d.action == "promote" else "done" }}</span>{% else %}<span class="no">refused</span>{% endif %}
{% if d.forced %}<span class="no">(forced)</span>{% endif %}
<small>{{ d.when }} by {{ d.created_by }}; champion {{ d.champion_before or "none" }} → {{ d.champion_after }}</small></h3>
{% if d.policy %}<p>Rule: <code>{{ d.policy.rule }}</code>; numbers: {{ d.numbers.source }}.</p>{% endif %}
{% if d.numbers and d.numbers.checks %}<table><tr><th>check</th><th>rule</th><th>champion</th><th>challenger</th><th>result</th></tr>
{% for c in d.numbers.checks %}<tr><td>{{ c.name }}</td><td>{{ c.rule }}</td><td>{{ fmt(c.champion) }}</td>
<td>{{ fmt(c.challenger) }}</td><td class="{{ 'ok' if c.passed else 'no' }}">{{ "pass" if c.passed else "fail" }}</td></tr>{% endfor %}
</table>{% endif %}
<ul>{% for r in d.reasons or [] %}<li>{{ r }}</li>{% endfor %}</ul>
{% endfor %}
<h2>Versions</h2>
<table><tr><th>version</th><th>parent</th><th>created</th><th>metrics</th><th>data hashes</th><th>source</th></tr>
{% for v in versions|reverse %}<tr><td><b>{{ v.id }}</b>{% for a, t in aliases.items() if t == v.id %}<span class="alias">{{ a }}</span>{% endfor %}</td>
<td>{{ v.parent or "—" }}</td><td>{{ v.created }}<br><small>{{ v.created_by }}</small></td>
<td>{% for k, x in v.metrics.items() %}{{ k }} = {{ fmt(x) }}<br>{% endfor %}</td>
<td><small>{% for k, x in v.data_hashes.items() %}{{ k }}: <code>{{ x[:16] }}</code><br>{% endfor %}</small></td>
<td><small><code>{{ v.source }}</code> (step {{ v.checkpoint.step }}){% if v.note %}<br>{{ v.note }}{% endif %}</small></td></tr>{% endfor %}
</table></body></html>
"""


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4f}"
    return "—" if x is None else str(x)


def _chart(versions: list[dict[str, Any]], champion: str | None) -> str | None:
    """A PNG (base64) of each version's validation bpb and feedback metrics, the champion in orange."""
    import base64
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        k
        for k in ("val_bpb", "preference_accuracy", "reward_margin")
        if any(k in v["metrics"] for v in versions)
    ]
    if not keys:
        return None
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 2.6), squeeze=False)
    for ax, key in zip(axes[0], keys):
        have = [v for v in versions if key in v["metrics"]]
        colors = ["#f59e0b" if v["id"] == champion else "#94a3b8" for v in have]
        ax.bar([v["id"] for v in have], [v["metrics"][key] for v in have], color=colors)
        ax.set_title(key + (" (lower is better)" if key == "val_bpb" else " (higher is better)"), fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def write_report(reg: Registry) -> Path:
    """DIR/report.html: the decisions (with every number and the rule) and the versions' lineage."""
    import jinja2

    from fornalha.files import write_text_atomic
    from fornalha.outputs import claim

    data = reg.data()
    decisions = [{**d, "when": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(d["created"]))}
                 for d in data["decisions"]]  # fmt: skip
    env = jinja2.Environment(autoescape=True)
    html = env.from_string(_REPORT).render(
        root=str(reg.root.resolve()), aliases=data["aliases"], decisions=decisions,
        versions=sorted(data["versions"].values(), key=lambda v: v["number"]), fmt=_fmt,
        chart=_chart(sorted(data["versions"].values(), key=lambda v: v["number"]), data["aliases"]["champion"]),
    )  # fmt: skip
    with reg._locked():
        out = claim(reg.root, OWNER_COMMAND)
        if REPORT_FILE not in out.owned:
            if (reg.root / REPORT_FILE).exists():
                raise RegistryError(f"{reg.root / REPORT_FILE} was not written by fornalha; move it away")
            out.record([REPORT_FILE])
        write_text_atomic(reg.root / REPORT_FILE, html)
    return reg.root / REPORT_FILE
