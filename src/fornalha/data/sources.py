"""Where text comes from: parse a source spec and stream its documents.

A *source spec* is one string, as typed after `--source`:

    ../shared/data/pt            a folder, walked recursively (hidden files skipped)
    "books/*.txt"                a glob (``**`` recurses)
    notes.jsonl.gz               one file; .gz/.zst/.bz2/.xz are decompressed on the fly
    hf:org/name[:config][@split] a Hugging Face dataset, streamed (or a local path /
                                 a folder written by ``Dataset.save_to_disk``)
    https://example.org/page     a web page (plain text or HTML)
    builtin: / builtin:stdlib    the built-in corpus: the Python standard library's own
                                 ``.py`` files, which every Python install has offline
    builtin:stdlib+tests         the same plus the stdlib test suites (about 2.5x bigger)

and may end in ``::WEIGHT`` (``pt::2`` repeats that source twice in the training split).

Reading is *streaming*: sources are generators that yield one :class:`RawDoc` at a time
(one file, one JSONL line, one CSV row, one parquet row...), so a corpus larger than memory
works. A document keeps its raw ``bytes`` when it came straight from a file: decoding (and
deciding that a file is binary or not UTF-8) happens later, in the worker processes.
Anything that cannot be read (a binary file, a truncated ``.gz``, a bad JSON line) becomes a
:class:`Skipped` record with a reason, never an exception; only a *missing* source or an
*unknown* scheme raises :class:`~fornalha.errors.DataError`, because those are typos.
"""

from __future__ import annotations

import bz2
import csv
import glob
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Literal

from fornalha.errors import DataError
from fornalha.files import file_digest

Kind = Literal["code", "prose"]

COMPRESSED = {".gz", ".zst", ".zstd", ".bz2", ".xz"}
TEXT_EXTS = {".txt", ".text", ".md", ".markdown", ".rst", ""}
HTML_EXTS = {".html", ".htm", ".xhtml"}
JSON_EXTS = {".jsonl", ".ndjson", ".json"}
TABLE_EXTS = {".csv", ".tsv"}
PARQUET_EXTS = {".parquet"}
CODE_EXTS = {
    ".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".rs", ".go", ".java", ".js", ".ts",
    ".sh", ".rb", ".lua", ".sql", ".toml", ".yaml", ".yml", ".css", ".tex",
}  # fmt: skip
KNOWN_EXTS = TEXT_EXTS | HTML_EXTS | JSON_EXTS | TABLE_EXTS | PARQUET_EXTS | CODE_EXTS

#: Plain-text files bigger than this are cut (at a line boundary) into several documents,
#: so that a single 20 GB ``.txt`` never has to fit in memory.
MAX_DOC_BYTES = 32 * 1024 * 1024

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


@dataclass(frozen=True)
class RawDoc:
    """One document as read, before cleaning. ``data`` is bytes for whole files, else str."""

    source: str
    doc_id: str
    data: bytes | str
    kind: Kind = "prose"
    html: bool = False


@dataclass(frozen=True)
class Skipped:
    """Something a source could not turn into a document (counted in the report)."""

    source: str
    doc_id: str
    reason: str
    nbytes: int = 0


@dataclass
class SourceSpec:
    """A parsed ``--source`` string (or one entry of a YAML recipe)."""

    spec: str
    kind: Literal["path", "glob", "hf", "url", "builtin"]
    location: str
    weight: float = 1.0
    text_field: str = "text"
    column: str | None = None
    preset: Kind | None = None  # force code/prose cleaning for every document of the source
    options: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The label used in reports: the spec without its weight."""
        return self.spec


def parse_source(spec: str, *, text_field: str = "text", column: str | None = None) -> SourceSpec:
    """Parse ``SRC[::WEIGHT]`` and check that it exists; raise `DataError` if it cannot work."""
    raw = spec.strip()
    weight = 1.0
    if "::" in raw:
        head, _, tail = raw.rpartition("::")
        try:
            weight = float(tail)
        except ValueError as exc:
            raise DataError(f"bad source weight in {spec!r}: {tail!r} is not a number") from exc
        if weight < 0:
            raise DataError(f"bad source weight in {spec!r}: must be >= 0")
        raw = head
    if not raw:
        raise DataError("empty --source")
    common = dict(spec=raw, weight=weight, text_field=text_field, column=column)
    if raw.startswith("builtin:") or raw == "builtin":
        name = raw.partition(":")[2] or "stdlib"
        if name not in ("stdlib", "stdlib+tests"):
            raise DataError(f"unknown built-in corpus {name!r}: use builtin:stdlib or builtin:stdlib+tests")
        return SourceSpec(kind="builtin", location=name, preset="code", **common)
    if raw.startswith("hf:"):
        if not raw[3:]:
            raise DataError("hf: needs a dataset name, e.g. hf:org/name[:config][@split]")
        return SourceSpec(kind="hf", location=raw[3:], **common)
    if raw.startswith(("http://", "https://")):
        return SourceSpec(kind="url", location=raw, **common)
    if raw.startswith("file://"):
        raw = raw[len("file://") :]
        common["spec"] = raw
    if os.path.exists(raw):
        return SourceSpec(kind="path", location=raw, **common)
    if any(ch in raw for ch in "*?["):
        if not glob.glob(raw, recursive=True):
            raise DataError(f"source glob matches no files: {raw}")
        return SourceSpec(kind="glob", location=raw, **common)
    match = _SCHEME.match(raw)
    if match and len(match.group(1)) > 1:  # not a Windows drive letter
        raise DataError(
            f"unknown source scheme {match.group(1)!r} in {raw!r} "
            "(use a path, a glob, hf:org/name, http(s)://… or builtin:)"
        )
    raise DataError(f"source not found: {raw}")


# --------------------------------------------------------------------------- files


def split_suffixes(path: str) -> tuple[str, str | None]:
    """Return (content extension, compression extension), e.g. ``a.jsonl.gz`` -> (.jsonl, .gz)."""
    lower = path.lower()
    base, ext = os.path.splitext(lower)
    comp = None
    if ext in COMPRESSED:
        comp = ext
        base, ext = os.path.splitext(base)
    return ext, comp


def open_binary(path: str) -> IO[bytes]:
    """Open a file for reading, transparently decompressing by its extension."""
    _, comp = split_suffixes(path)
    if comp == ".gz":
        return gzip.open(path, "rb")
    if comp == ".bz2":
        return bz2.open(path, "rb")
    if comp == ".xz":
        return lzma.open(path, "rb")
    if comp in (".zst", ".zstd"):
        import zstandard

        fh = open(path, "rb")  # noqa: SIM115 - closed by the stream reader
        return zstandard.ZstdDecompressor().stream_reader(fh, closefd=True, read_across_frames=True)
    return open(path, "rb")  # noqa: SIM115


def walk_files(root: str) -> Iterator[str]:
    """All non-hidden files under ``root`` in a stable (sorted) order."""
    if os.path.isfile(root):
        yield root
        return
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for name in sorted(filenames):
            if not name.startswith("."):
                yield os.path.join(dirpath, name)


def file_kind(path: str) -> Kind:
    """Whether a file holds source code or prose, judged by its extension."""
    ext, _ = split_suffixes(path)
    return "code" if ext in CODE_EXTS else "prose"


def _read_all(fh: IO[bytes], limit: int) -> Iterator[bytes]:
    """Read a stream in pieces of about ``limit`` bytes, each ending at a newline if possible."""
    carry = b""
    while True:
        block = fh.read(limit)
        if not block:
            break
        block = carry + block
        cut = block.rfind(b"\n")
        if cut < 0 or len(block) < limit:
            carry = block
            continue
        yield block[: cut + 1]
        carry = block[cut + 1 :]
    if carry:
        yield carry


def iter_file(path: str, spec: SourceSpec, rel: str | None = None) -> Iterator[RawDoc | Skipped]:
    """Yield the documents of one file, or `Skipped` records for what cannot be read."""
    name = spec.name
    doc_id = rel or os.path.basename(path)
    ext, _ = split_suffixes(path)
    if ext not in KNOWN_EXTS:
        yield Skipped(name, doc_id, f"unsupported file type {ext}", _size(path))
        return
    kind: Kind = spec.preset or file_kind(path)
    try:
        if ext in JSON_EXTS:
            yield from _iter_json(path, spec, doc_id, kind)
        elif ext in TABLE_EXTS:
            yield from _iter_table(path, spec, doc_id, kind, delimiter="\t" if ext == ".tsv" else ",")
        elif ext in PARQUET_EXTS:
            yield from _iter_parquet(path, spec, doc_id, kind)
        else:
            html = ext in HTML_EXTS
            with open_binary(path) as fh:
                pieces = _read_all(fh, MAX_DOC_BYTES)
                first = next(pieces, None)
                if first is None:
                    yield Skipped(name, doc_id, "empty file", 0)
                    return
                second = next(pieces, None)
                if second is None:
                    yield RawDoc(name, doc_id, first, kind, html)
                    return
                yield RawDoc(name, f"{doc_id}#0", first, kind, html)
                yield RawDoc(name, f"{doc_id}#1", second, kind, html)
                for i, piece in enumerate(pieces, start=2):
                    yield RawDoc(name, f"{doc_id}#{i}", piece, kind, html)
    except DataError:
        raise
    except (EOFError, gzip.BadGzipFile, lzma.LZMAError, OSError, ValueError) as exc:
        yield Skipped(name, doc_id, _io_reason(exc), _size(path))
    except Exception as exc:  # zstandard.ZstdError, pyarrow errors, csv errors...
        yield Skipped(name, doc_id, _io_reason(exc), _size(path))


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _io_reason(exc: BaseException) -> str:
    """A short, stable reason string for a read failure."""
    text = f"{type(exc).__name__}: {exc}".lower()
    if isinstance(exc, EOFError) or "truncat" in text or "end-of-stream" in text or "incomplete" in text:
        return "truncated or corrupt compressed file"
    if isinstance(exc, gzip.BadGzipFile | lzma.LZMAError) or "zstd" in text or "bz2" in text:
        return "corrupt compressed file"
    if isinstance(exc, PermissionError):
        return "unreadable (permission denied)"
    if isinstance(exc, OSError):
        return "unreadable (I/O error)"
    if "parquet" in text or "arrow" in text:
        return "corrupt parquet file"
    return f"unreadable ({type(exc).__name__})"


def _iter_json(path: str, spec: SourceSpec, doc_id: str, kind: Kind) -> Iterator[RawDoc | Skipped]:
    """JSON Lines (one object per line), or one JSON document holding a list of objects."""
    field_name = spec.text_field
    with open_binary(path) as fh:
        head = fh.read(1)
        while head in (b" ", b"\n", b"\r", b"\t"):
            head = fh.read(1)
        if not head:
            yield Skipped(spec.name, doc_id, "empty file", 0)
            return
        if head == b"[" and split_suffixes(path)[0] == ".json":
            try:
                records = json.loads((head + fh.read()).decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                yield Skipped(spec.name, doc_id, "invalid JSON", _size(path))
                return
            lines: Iterator[tuple[int, object]] = enumerate(records)
        else:
            lines = ((i, line) for i, line in enumerate(_prepend(head, fh)))
        for i, item in lines:
            rid = f"{doc_id}:{i}"
            if isinstance(item, bytes):
                if not item.strip():
                    continue
                try:
                    item = json.loads(item)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    yield Skipped(spec.name, rid, "invalid JSON line", len(item))
                    continue
            text = item.get(field_name) if isinstance(item, dict) else None
            if not isinstance(text, str):
                yield Skipped(spec.name, rid, f"no text field {field_name!r}")
                continue
            yield RawDoc(spec.name, rid, text, kind)


def _prepend(first: bytes, fh: IO[bytes]) -> Iterator[bytes]:
    """Lines of ``fh`` whose first byte was already consumed into ``first``."""
    reader = io.BufferedReader(fh) if not hasattr(fh, "readline") else fh
    line = reader.readline()
    yield first + line
    while True:
        line = reader.readline()
        if not line:
            return
        yield line


def _iter_table(
    path: str, spec: SourceSpec, doc_id: str, kind: Kind, delimiter: str
) -> Iterator[RawDoc | Skipped]:
    """One document per CSV/TSV row, from column ``--column`` (default: ``text``)."""
    column = spec.column or spec.text_field
    csv.field_size_limit(1 << 30)
    with open_binary(path) as fh:
        text_stream = io.TextIOWrapper(fh, encoding="utf-8", newline="")
        reader = csv.DictReader(text_stream, delimiter=delimiter)
        if reader.fieldnames is None:
            yield Skipped(spec.name, doc_id, "empty file", 0)
            return
        if column not in reader.fieldnames:
            raise DataError(
                f"{path}: no column {column!r} (columns: {', '.join(reader.fieldnames)}); use --column"
            )
        for i, row in enumerate(reader):
            text = row.get(column)
            if text:
                yield RawDoc(spec.name, f"{doc_id}:{i}", text, kind)


def _iter_parquet(path: str, spec: SourceSpec, doc_id: str, kind: Kind) -> Iterator[RawDoc | Skipped]:
    """One document per row of a parquet file, read one record batch at a time."""
    import pyarrow.parquet as pq

    column = spec.column or spec.text_field
    pf = pq.ParquetFile(path)
    if column not in pf.schema_arrow.names:
        raise DataError(f"{path}: no column {column!r} (columns: {', '.join(pf.schema_arrow.names)})")
    i = 0
    for batch in pf.iter_batches(columns=[column], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text:
                yield RawDoc(spec.name, f"{doc_id}:{i}", text, kind)
            i += 1


# --------------------------------------------------------------------------- other sources


def builtin_root() -> str:
    """The folder of the running interpreter's standard library."""
    return sysconfig.get_paths()["stdlib"]


def _is_test_path(rel: str) -> bool:
    parts = rel.replace(os.sep, "/").split("/")
    return any(p in ("test", "tests", "idle_test") for p in parts[:-1])


def builtin_files(name: str = "stdlib") -> Iterator[tuple[str, str]]:
    """(absolute path, id) of the built-in corpus: the stdlib ``.py`` files.

    ``site-packages`` is excluded (it is whatever the user installed, not the same on every
    machine). The test suites are excluded by default: they are 60 % of the bytes, full of
    deliberately odd inputs (bad encodings, syntax errors, huge literals) and repetitive, so
    the default corpus stays ~12 MB — quick enough for the 10-minute quickstart.
    ``builtin:stdlib+tests`` includes them (~31 MB, the tokenizer benchmark's corpus).
    """
    root = builtin_root()
    with_tests = name == "stdlib+tests"
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("site-packages", "__pycache__", "dist-packages")
        )
        for fname in sorted(filenames):
            if not fname.endswith(".py"):
                continue
            path = os.path.join(dirpath, fname)
            rel = os.path.relpath(path, root)
            if not with_tests and _is_test_path(rel):
                continue
            yield path, "stdlib/" + rel.replace(os.sep, "/")


def iter_builtin(spec: SourceSpec) -> Iterator[RawDoc | Skipped]:
    """Documents of the built-in corpus (one per stdlib ``.py`` file)."""
    for path, rel in builtin_files(spec.location):
        yield from iter_file(path, spec, rel)


def iter_url(spec: SourceSpec, timeout: float = 30.0) -> Iterator[RawDoc | Skipped]:
    """Fetch one page. A URL that cannot be fetched is a `DataError` (like a missing path)."""
    request = urllib.request.Request(spec.location, headers={"User-Agent": "fornalha-data/0.1"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = response.read()
            ctype = response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as exc:
        raise DataError(f"cannot fetch {spec.location}: HTTP {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"cannot fetch {spec.location}: {getattr(exc, 'reason', exc)}") from exc
    charset = re.search(r"charset=([\w-]+)", ctype)
    if charset and charset.group(1).lower() not in ("utf-8", "utf8"):
        body = body.decode(charset.group(1), errors="replace").encode("utf-8")
    html = "html" in ctype.lower() or body.lstrip()[:15].lower().startswith((b"<!doctype html", b"<html"))
    yield RawDoc(spec.name, spec.location, body, "prose", html)


def parse_hf(location: str) -> tuple[str, str | None, str]:
    """``org/name[:config][@split]`` -> (name, config, split)."""
    name, _, split = location.partition("@")
    name, _, config = name.partition(":")
    return name, (config or None), (split or "train")


def iter_hf(spec: SourceSpec) -> Iterator[RawDoc | Skipped]:
    """Stream a Hugging Face dataset: a ``save_to_disk`` folder, a local path or a hub name."""
    try:
        import datasets
    except ImportError as exc:  # pragma: no cover - extras not installed
        raise DataError("hf: sources need the 'datasets' package: pip install 'fornalha[hf]'") from exc
    name, config, split = parse_hf(spec.location)
    field_name = spec.column or spec.text_field
    try:
        if os.path.isdir(name) and (
            os.path.exists(os.path.join(name, "dataset_info.json"))
            or os.path.exists(os.path.join(name, "dataset_dict.json"))
            or os.path.exists(os.path.join(name, "state.json"))
        ):
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{spec.name}: no split {split!r} (splits: {', '.join(ds)})")
                ds = ds[split]
            ds = ds.to_iterable_dataset()
        else:
            ds = datasets.load_dataset(name, config, split=split, streaming=True)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"cannot open Hugging Face dataset {spec.location!r}: {exc}".splitlines()[0]) from exc
    kind: Kind = spec.preset or "prose"
    for i, row in enumerate(ds):
        text = row.get(field_name)
        if not isinstance(text, str):
            if i == 0 and field_name not in row:
                raise DataError(
                    f"{spec.name}: no field {field_name!r} (fields: {', '.join(row)}); use --text-field"
                )
            yield Skipped(spec.name, f"{name}:{i}", f"no text field {field_name!r}")
            continue
        yield RawDoc(spec.name, f"{name}:{i}", text, kind)


def iter_source(spec: SourceSpec) -> Iterator[RawDoc | Skipped]:
    """Stream the documents of any source, in a deterministic order."""
    if spec.kind == "builtin":
        yield from iter_builtin(spec)
    elif spec.kind == "url":
        yield from iter_url(spec)
    elif spec.kind == "hf":
        yield from iter_hf(spec)
    else:
        for path, rel in source_files(spec):
            yield from iter_file(path, spec, rel)


def source_files(spec: SourceSpec) -> Iterator[tuple[str, str]]:
    """(path, id) of every local file a path/glob/builtin source reads."""
    if spec.kind == "builtin":
        yield from builtin_files(spec.location)
    elif spec.kind == "glob":
        for path in sorted(glob.glob(spec.location, recursive=True)):
            if os.path.isfile(path):
                yield path, path
            elif os.path.isdir(path):
                for sub in walk_files(path):
                    yield sub, sub
    elif spec.kind == "path":
        root = spec.location
        if os.path.isfile(root):
            yield root, os.path.basename(root)
        else:
            for path in walk_files(root):
                yield path, os.path.relpath(path, root).replace(os.sep, "/")
    elif spec.kind == "hf":
        name, _, _ = parse_hf(spec.location)
        if os.path.exists(name):
            for path in walk_files(name):
                yield path, os.path.relpath(path, name)


def fingerprint(spec: SourceSpec) -> dict[str, object]:
    """What the content-hash cache compares: every file's size, mtime and BLAKE2 hash.

    Remote sources (URLs, hub datasets) cannot be fingerprinted without fetching them, so
    they get ``"remote": True`` and make a run uncacheable.
    """
    if spec.kind == "url" or (spec.kind == "hf" and not os.path.exists(parse_hf(spec.location)[0])):
        return {"spec": spec.spec, "remote": True}
    files = []
    total = 0
    for path, rel in source_files(spec):
        try:
            st = os.stat(path)
            digest = file_digest(path, "blake2b", digest_size=16)
        except OSError:
            files.append({"id": rel, "error": "unreadable"})
            continue
        total += st.st_size
        files.append({"id": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "blake2b": digest})
    combined = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return {"spec": spec.spec, "files": len(files), "bytes": total, "sha256": combined, "file_list": files}


def total_input_bytes(specs: list[SourceSpec]) -> int | None:
    """Sum of the local input file sizes (for the progress bar), None if unknown."""
    total = 0
    for spec in specs:
        if spec.kind in ("url", "hf"):
            return None
        for path, _ in source_files(spec):
            total += _size(path)
    return total


def take_limited(
    items: Iterable[RawDoc | Skipped], max_docs: int | None, max_bytes: int | None
) -> Iterator[RawDoc | Skipped]:
    """One source's items up to ``max_docs`` documents or ``max_bytes`` bytes of documents, whichever
    comes first (None: no limit). Skipped files pass through and count toward neither."""
    n_docs = n_bytes = 0
    for item in items:
        if isinstance(item, Skipped):
            yield item
            continue
        if max_docs is not None and n_docs >= max_docs:
            return
        if max_bytes is not None and n_bytes >= max_bytes:
            return
        n_docs += 1
        n_bytes += len(item.data)
        yield item
