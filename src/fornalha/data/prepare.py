"""The data stage's orchestrator: sources -> clean -> filter -> PII -> dedup -> split -> shards.

:func:`prepare` is what ``fornalha data prepare`` calls. The flow, per document::

    reader (main process)          workers (multiprocessing, one batch at a time)
    ---------------------          ----------------------------------------------
    iter_source(spec) ─ batches ─▶ decode -> html->text -> normalize -> quality filters
                                   -> language -> PII scrub -> exact hash + MinHash
    orchestrator (main process, in input order)
    -------------------------------------------
    ◀─ results ─ dedup (exact + LSH) -> split (cluster hash / tail) -> weights -> shard writers

*Bounded memory*: at most ``2 x workers`` batches (each <= 1 MB or 16 documents) are in flight; shards
are streamed to zstd files; only per-document hashes (and the LSH index) are kept.
*Deterministic*: results are consumed in input order, so the output does not depend on the
number of workers.
*Cached*: the output's ``manifest.json`` records a key made of the config and every input
file's size, mtime and content hash; running again with the same key reuses the folder
(after checking the shard hashes) and says so.

Output layout (see DESIGN.md §1)::

    DIR/manifest.json  DIR/report.json  DIR/train/part-00000.jsonl.zst  DIR/val/part-00000.jsonl.zst

The folder is claimed through `fornalha.outputs` (refused when it is not ours); shards are staged in
``DIR/.fornalha-tmp-<pid>/`` and published with manifest.json last.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fornalha.data.clean import (
    CleanConfig,
    DecodeError,
    decode,
    html_to_text,
    language_reason,
    normalize,
    quality_reason,
    repair_mojibake,
)
from fornalha.data.dedup import DedupConfig, Deduplicator, exact_hash, signature
from fornalha.data.pii import PiiConfig, scrub
from fornalha.data.sources import (
    RawDoc,
    Skipped,
    SourceSpec,
    fingerprint,
    iter_source,
    parse_source,
    take_limited,
)
from fornalha.data.split import SplitConfig, assign_side, hash_unit, tail_split
from fornalha.errors import ConfigError, DataError
from fornalha.files import file_sha256
from fornalha.progress import byte_progress

FORMAT = "fornalha-dataset"
VERSION = 1
BATCH_DOCS = 16
BATCH_BYTES = 1024 * 1024
ENGINES = ("local", "datatrove")  # where the per-document work runs (see fornalha.data.engines)


class SourceEntry(BaseModel):
    """One source of a recipe (the YAML form of ``--source SRC::WEIGHT``)."""

    model_config = ConfigDict(extra="forbid")

    source: str
    weight: float = Field(1.0, ge=0.0)
    text_field: str = "text"
    column: str | None = None
    preset: Literal["code", "prose"] | None = None


class PrepareConfig(BaseModel):
    """Everything that decides the output of ``data prepare`` (and so the cache key)."""

    model_config = ConfigDict(extra="forbid")

    sources: list[SourceEntry] = Field(default_factory=list)
    clean: CleanConfig = Field(default_factory=CleanConfig)
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    pii: PiiConfig = Field(default_factory=PiiConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    max_docs: int | None = Field(None, ge=1, description="per source: stop after N documents read")
    max_bytes: int | None = Field(None, ge=1, description="per source: stop after N bytes read")
    shard_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="uncompressed text per shard")

    @classmethod
    def from_yaml(cls, path: str | Path) -> PrepareConfig:
        """Load a YAML data recipe (see ``docs/data.md`` for an example)."""
        import yaml

        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError as exc:
            raise DataError(f"recipe not found: {path}") from exc
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ConfigError(f"recipe {path} is not valid YAML: {str(exc).splitlines()[0]}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"recipe {path} must be a mapping with a 'sources' list")
        raw["sources"] = [{"source": s} if isinstance(s, str) else s for s in raw.get("sources") or []]
        base = Path(path).resolve().parent
        for entry in raw["sources"]:  # relative paths are relative to the recipe
            src = entry.get("source", "") if isinstance(entry, dict) else ""
            if src and ":" not in src.split("/")[0] and not os.path.isabs(src):
                entry["source"] = str(base / src)
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"recipe {path}: {loc}: {first['msg']}") from exc


# --------------------------------------------------------------------------- report


@dataclass
class SourceStats:
    """Counts for one source."""

    docs_in: int = 0
    bytes_in: int = 0
    docs_out: int = 0
    bytes_out: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "docs_in": self.docs_in,
            "bytes_in": self.bytes_in,
            "docs_out": self.docs_out,
            "bytes_out": self.bytes_out,
            "dropped": dict(sorted(self.dropped.items())),
            "skipped": dict(sorted(self.skipped.items())),
        }


@dataclass
class PrepareReport:
    """What :func:`prepare` did; also written as ``report.json``."""

    out_dir: str
    sources: dict[str, SourceStats] = field(default_factory=dict)
    splits: dict[str, dict[str, int]] = field(default_factory=dict)
    pii: Counter[str] = field(default_factory=Counter)
    repaired: int = 0
    seconds: float = 0.0
    workers: int = 1
    cached: bool = False
    cache_key: str | None = None
    notes: list[str] = field(default_factory=list)
    examples: dict[str, dict[str, str]] = field(default_factory=dict)  # first dropped document per reason

    @property
    def bytes_in(self) -> int:
        return sum(s.bytes_in for s in self.sources.values())

    @property
    def mb_per_s(self) -> float:
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else 0.0

    def reasons(self) -> Counter[str]:
        """Documents dropped or skipped, per reason, over all sources."""
        total: Counter[str] = Counter()
        for stats in self.sources.values():
            total.update({f"skipped: {k}": v for k, v in stats.skipped.items()})
            total.update({f"dropped: {k}": v for k, v in stats.dropped.items()})
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "sources": {k: v.to_dict() for k, v in self.sources.items()},
            "splits": self.splits,
            "reasons": dict(sorted(self.reasons().items())),
            "pii_replaced": dict(sorted(self.pii.items())),
            "mojibake_repaired": self.repaired,
            "bytes_in": self.bytes_in,
            "seconds": round(self.seconds, 3),
            "throughput_mb_s": round(self.mb_per_s, 3),
            "workers": self.workers,
            "cached": self.cached,
            "cache_key": self.cache_key,
            "notes": self.notes,
            "examples": self.examples,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PrepareReport:
        sources = {}
        for name, s in d.get("sources", {}).items():
            sources[name] = SourceStats(
                s["docs_in"], s["bytes_in"], s["docs_out"], s["bytes_out"],
                Counter(s.get("dropped", {})), Counter(s.get("skipped", {})),
            )  # fmt: skip
        return cls(
            out_dir=d["out_dir"],
            sources=sources,
            splits=d.get("splits", {}),
            pii=Counter(d.get("pii_replaced", {})),
            repaired=d.get("mojibake_repaired", 0),
            seconds=d.get("seconds", 0.0),
            workers=d.get("workers", 1),
            cached=d.get("cached", False),
            cache_key=d.get("cache_key"),
            notes=list(d.get("notes", [])),
            examples=dict(d.get("examples", {})),
        )


# --------------------------------------------------------------------------- worker side


@dataclass
class Processed:
    """A worker's verdict on one document."""

    source: str
    doc_id: str
    bytes_in: int
    text: str | None = None
    skip: str | None = None  # could not be read as text (binary, invalid UTF-8, empty)
    drop: str | None = None  # read fine, removed by a filter
    doc_hash: str = ""
    sig: Any = None
    pii: Counter[str] | None = None
    repaired: bool = False
    preview: str | None = None  # the start of a dropped document (PII scrubbed), for the report


_WORKER_CFG: PrepareConfig | None = None
_WORKER_NEAR: bool = True


PREVIEW_CHARS = 240  # characters of a dropped document kept in report.json as an example


def _example(report: PrepareReport, reason: str, doc: Processed, preview: str | None) -> None:
    """Keep the first dropped document of each reason (its id, source and start) for the run report."""
    if reason not in report.examples:
        report.examples[reason] = {"source": doc.source, "id": doc.doc_id, "preview": preview or ""}


def _init_worker(cfg_json: str, near: bool) -> None:
    global _WORKER_CFG, _WORKER_NEAR
    _WORKER_CFG = PrepareConfig.model_validate_json(cfg_json)
    _WORKER_NEAR = near


def process_doc(doc: RawDoc, cfg: PrepareConfig, near: bool = True) -> Processed:
    """Decode, normalise, filter and scrub one document (pure: runs in any process)."""
    nbytes = len(doc.data) if isinstance(doc.data, bytes) else len(doc.data.encode("utf-8", "replace"))
    out = Processed(doc.source, doc.doc_id, nbytes)
    norm = cfg.clean.normalize
    try:
        text = decode(doc.data, norm.invalid_utf8)
    except DecodeError as exc:
        out.skip = str(exc)
        return out
    if doc.html:
        text = html_to_text(text)
    if norm.ftfy:
        fixed = repair_mojibake(text)
        out.repaired = fixed != text
        text = fixed
    text = normalize(text, norm.model_copy(update={"ftfy": False}))
    if not text.strip():
        out.drop = "empty after cleaning"
        return out
    if cfg.clean.filters:
        reason = quality_reason(text, cfg.clean.filters_for(doc.kind))
        if reason is None and doc.kind != "code":
            reason = language_reason(text, cfg.clean.language)
        if reason:
            out.drop = reason
            out.preview = scrub(text[:PREVIEW_CHARS], cfg.pii)[0]
            return out
    text, out.pii = scrub(text, cfg.pii)
    out.text = text
    out.doc_hash = exact_hash(text)
    if near:
        out.sig = signature(text, cfg.dedup.num_perm, cfg.dedup.shingle_words)
    return out


def _process_batch(batch: list[RawDoc]) -> list[Processed]:
    assert _WORKER_CFG is not None
    return [process_doc(doc, _WORKER_CFG, _WORKER_NEAR) for doc in batch]


def _batches(docs: Iterable[RawDoc]) -> Iterator[list[RawDoc]]:
    batch: list[RawDoc] = []
    size = 0
    for doc in docs:
        batch.append(doc)
        size += len(doc.data)
        if len(batch) >= BATCH_DOCS or size >= BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _ordered_map(
    fn: Callable[[list[RawDoc]], list[Processed]], batches: Iterable[list[RawDoc]], pool: Any, inflight: int
) -> Iterator[Processed]:
    """Like ``pool.imap`` but with at most ``inflight`` batches queued (bounded memory)."""
    if pool is None:
        for batch in batches:
            yield from fn(batch)
        return
    pending: deque[Any] = deque()
    for batch in batches:
        pending.append(pool.apply_async(fn, (batch,)))
        while len(pending) >= inflight:
            yield from pending.popleft().get()
    while pending:
        yield from pending.popleft().get()


# --------------------------------------------------------------------------- output


class ShardWriter:
    """Writes ``{"text", "source", "id"}`` lines to ``part-NNNNN.jsonl.zst`` files."""

    def __init__(self, folder: Path, shard_bytes: int):
        import zstandard

        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.shard_bytes = shard_bytes
        self._cctx = zstandard.ZstdCompressor(level=3)
        self._fh: Any = None
        self._raw: Any = None
        self.shards: list[dict[str, Any]] = []
        self.documents = 0
        self.bytes = 0

    def write(self, text: str, source: str, doc_id: str) -> None:
        if self._fh is None or self.shards[-1]["bytes"] >= self.shard_bytes:
            self._open()
        line = json.dumps({"text": text, "source": source, "id": doc_id}, ensure_ascii=False) + "\n"
        self._fh.write(line.encode("utf-8"))
        nbytes = len(text.encode("utf-8"))
        shard = self.shards[-1]
        shard["documents"] += 1
        shard["bytes"] += nbytes
        self.documents += 1
        self.bytes += nbytes

    def _open(self) -> None:
        self._close_current()
        name = f"part-{len(self.shards):05d}.jsonl.zst"
        self._raw = open(self.folder / name, "wb")  # noqa: SIM115 - closed in _close_current
        self._fh = self._cctx.stream_writer(self._raw)
        self.shards.append({"file": f"{self.folder.name}/{name}", "documents": 0, "bytes": 0})

    def _close_current(self) -> None:
        if self._fh is not None:
            self._fh.close()  # also closes the raw file
            self._fh = self._raw = None

    def close(self) -> list[dict[str, Any]]:
        self._close_current()
        for shard in self.shards:
            shard["sha256"] = file_sha256(self.folder.parent / shard["file"])
        return self.shards


# --------------------------------------------------------------------------- orchestration


def resolve_sources(cfg: PrepareConfig) -> list[SourceSpec]:
    """Parse every source entry (raises `DataError` for missing paths and unknown schemes)."""
    if not cfg.sources:
        raise DataError("no sources: give --source PATH|GLOB|hf:NAME|URL|builtin: or a --recipe")
    specs = []
    for entry in cfg.sources:
        spec = parse_source(entry.source, text_field=entry.text_field, column=entry.column)
        if "::" not in entry.source:
            spec.weight = entry.weight
        if entry.preset:
            spec.preset = entry.preset
        specs.append(spec)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise DataError(f"the same source is given twice: {sorted({n for n in names if names.count(n) > 1})}")
    return specs


def cache_key(cfg: PrepareConfig, specs: list[SourceSpec]) -> tuple[str | None, list[dict[str, Any]]]:
    """(key, fingerprints): the key is None when a remote source makes the run uncacheable."""
    prints = [fingerprint(s) for s in specs]
    if any(p.get("remote") for p in prints):
        return None, prints
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "config": cfg.model_dump(mode="json"),
        "inputs": [{"spec": p["spec"], "sha256": p["sha256"]} for p in prints],
        "weights": [s.weight for s in specs],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest(), prints


def _try_cache(out: Path, key: str | None) -> PrepareReport | None:
    if key is None or not (out / "manifest.json").is_file() or not (out / "report.json").is_file():
        return None
    try:
        manifest = json.loads((out / "manifest.json").read_text())
        if manifest.get("cache_key") != key:
            return None
        for split in manifest["splits"].values():
            for shard in split["shards"]:
                if file_sha256(out / shard["file"]) != shard["sha256"]:
                    return None
        report = PrepareReport.from_dict(json.loads((out / "report.json").read_text()))
    except (OSError, ValueError, KeyError):
        return None
    report.cached = True
    report.out_dir = str(out)
    return report


def _repeats(weight: float, key: str) -> int:
    """How many copies of a training document a source weight asks for (deterministic)."""
    whole = math.floor(weight)
    return whole + (1 if hash_unit(key, "weight") < weight - whole else 0)


def prepare(
    cfg: PrepareConfig,
    out_dir: str | Path,
    *,
    workers: int | None = None,
    progress: bool = False,
    use_cache: bool = True,
    engine: str = "local",
) -> PrepareReport:
    """Run the whole data stage; write ``out_dir``; return the report.

    ``workers``: processes for the per-document work (default: all cores; 1 = in-process).
    ``engine``: ``local`` (this module's pool) or ``datatrove`` (the same per-document work as a
    datatrove pipeline, see :mod:`fornalha.data.engines`); the output is the same.
    """
    if engine not in ENGINES:
        raise ConfigError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    from fornalha.outputs import claim

    out = Path(out_dir)
    specs = resolve_sources(cfg)
    owned = claim(out, "data prepare")  # refuses a folder that is not ours before any work
    key, prints = cache_key(cfg, specs)
    if use_cache and (cached := _try_cache(out, key)) is not None:
        return cached

    workers = max(1, workers or os.cpu_count() or 1)
    report = PrepareReport(out_dir=str(out), workers=workers, cache_key=key)
    if key is None:
        report.notes.append("remote source: the result is not cached")
    report.sources = {s.name: SourceStats() for s in specs}
    weights = {s.name: s.weight for s in specs}
    started = time.perf_counter()

    tmp = owned.staging()
    try:
        writers = {side: ShardWriter(tmp / side, cfg.shard_bytes) for side in ("train", "val")}

        def reader() -> Iterator[RawDoc]:
            for spec in specs:
                stats = report.sources[spec.name]
                for item in take_limited(iter_source(spec), cfg.max_docs, cfg.max_bytes):
                    if isinstance(item, Skipped):
                        stats.skipped[item.reason] += 1
                        stats.bytes_in += item.nbytes
                        continue
                    yield item

        near = cfg.dedup.near or (cfg.split.group_near_duplicates and cfg.split.mode == "doc")
        dedup = Deduplicator(cfg.dedup, use_near=near)
        held: Processed | None = None  # last train document, kept back for the empty-val fallback

        def emit_train(doc: Processed) -> None:
            assert doc.text is not None
            for r in range(_repeats(weights[doc.source], doc.doc_id)):
                writers["train"].write(doc.text, doc.source, doc.doc_id if r == 0 else f"{doc.doc_id}~{r}")

        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        pool = None
        if workers > 1 and engine == "local":
            pool = ctx.Pool(workers, initializer=_init_worker, initargs=(cfg.model_dump_json(), near))
        else:
            _init_worker(cfg.model_dump_json(), near)
        try:
            with byte_progress("preparing", _total_bytes(specs, cfg), enabled=progress) as advance:
                if engine == "datatrove":
                    from fornalha.data.engines import datatrove_results

                    results = datatrove_results(cfg, specs, report, out, workers=workers, near=near)
                else:
                    results = _ordered_map(_process_batch, _batches(reader()), pool, 2 * workers)
                for doc in results:
                    stats = report.sources[doc.source]
                    stats.docs_in += 1
                    stats.bytes_in += doc.bytes_in
                    advance(doc.bytes_in)
                    if doc.skip:
                        stats.skipped[doc.skip] += 1
                        continue
                    if doc.drop:
                        stats.dropped[doc.drop] += 1
                        _example(report, doc.drop, doc, doc.preview)
                        continue
                    report.repaired += int(doc.repaired)
                    report.pii.update(doc.pii or {})
                    found = dedup.add(doc.doc_hash, doc.sig)
                    if found.kind == "exact" and cfg.dedup.exact:
                        stats.dropped["duplicate (exact)"] += 1
                        _example(report, "duplicate (exact)", doc, (doc.text or "")[:PREVIEW_CHARS])
                        continue
                    if found.kind == "near" and cfg.dedup.near:
                        stats.dropped["duplicate (near)"] += 1
                        _example(report, "duplicate (near)", doc, (doc.text or "")[:PREVIEW_CHARS])
                        continue
                    assert doc.text is not None
                    stats.docs_out += 1
                    stats.bytes_out += len(doc.text.encode("utf-8"))
                    if cfg.split.mode == "tail":
                        head, tail = tail_split(doc.text, cfg.split.val_fraction)
                        if head:
                            doc_head = Processed(doc.source, doc.doc_id, 0, text=head)
                            emit_train(doc_head)
                        if tail:
                            writers["val"].write(tail, doc.source, doc.doc_id + "#tail")
                        continue
                    cluster = found.cluster if cfg.split.group_near_duplicates else doc.doc_hash
                    if assign_side(cluster, cfg.split) == "val":
                        writers["val"].write(doc.text, doc.source, doc.doc_id)
                        continue
                    if held is not None:
                        emit_train(held)
                    held = doc
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
        if held is not None:
            if writers["val"].documents == 0 and cfg.split.val_fraction > 0:
                assert held.text is not None
                head, tail = tail_split(held.text, cfg.split.val_fraction)
                if tail:
                    report.notes.append(
                        f"no document fell in validation; its tail of {held.doc_id} was used (as --split tail)"
                    )
                    writers["val"].write(tail, held.source, held.doc_id + "#tail")
                    held = Processed(held.source, held.doc_id, 0, text=head)
            emit_train(held)

        shards = {side: w.close() for side, w in writers.items()}
        report.splits = {
            side: {"documents": writers[side].documents, "bytes": writers[side].bytes} for side in writers
        }
        report.seconds = time.perf_counter() - started
        if sum(s.docs_out for s in report.sources.values()) == 0:
            report.notes.append("no document survived cleaning")
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "cache_key": key,
            "sources": [
                {"spec": s.spec, "kind": s.kind, "weight": s.weight, "fingerprint": _short_print(p)}
                for s, p in zip(specs, prints)
            ],
            "config": cfg.model_dump(mode="json"),
            "counts": {
                "documents_in": sum(s.docs_in for s in report.sources.values()),
                "documents_out": sum(s.docs_out for s in report.sources.values()),
                "bytes_in": report.bytes_in,
                "bytes_out": sum(s.bytes_out for s in report.sources.values()),
            },
            "splits": {
                side: {
                    "documents": writers[side].documents,
                    "bytes": writers[side].bytes,
                    "shards": shards[side],
                }
                for side in writers
            },
        }
        (tmp / "report.json").write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # nothing half-written stays behind
        raise
    owned.publish(tmp, last=["manifest.json"])  # manifest.json moves last: it marks completion
    return report


def _short_print(p: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in p.items() if k != "file_list"}


def _total_bytes(specs: list[SourceSpec], cfg: PrepareConfig) -> int | None:
    if cfg.max_docs is not None or cfg.max_bytes is not None:
        return None
    from fornalha.data.sources import total_input_bytes

    return total_input_bytes(specs)
