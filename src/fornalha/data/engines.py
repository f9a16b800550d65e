"""Engines for ``data prepare``: the per-document work on fornalha's own pool or on datatrove.

``local`` (the default) is :func:`fornalha.data.prepare.prepare`'s own ``multiprocessing`` pool.
``datatrove`` runs the *same* per-document work as a `datatrove <https://github.com/huggingface/datatrove>`_
pipeline, so the identical code scales from this laptop (``LocalPipelineExecutor``) to a Slurm
cluster (``SlurmPipelineExecutor``) or a Ray cluster (``RayPipelineExecutor``). The algorithm::

    stage 1 — datatrove, N tasks (one per worker here; thousands on a cluster)
    ----------------------------------------------------------------------------------------------
    FornalhaReader      every task walks the sources (same readers, same --max-docs/--max-bytes
                        limits) and keeps input number i when i % N == its rank
    FornalhaProcess     fornalha's process_doc: decode -> html->text -> normalize -> quality and
                        language filters -> PII scrub -> exact hash + MinHash signature
    FornalhaResults     writes (input number, verdict) to WORK/results/rank-NNNNN.pkl, in input order

    stage 2 — one process: the global step
    ----------------------------------------------------------------------------------------------
    merge the N result files by input number (heapq.merge: each file is already sorted), and feed
    the merged stream to the very same orchestrator loop as ``local``: exact + near-duplicate
    removal (fornalha's LSH over the signatures the tasks computed), train/val split, source
    weights, shard writers, report.

Near-duplicate removal needs to see every document: two near-copies may land on different tasks.
The tasks do the expensive part (shingling and MinHash, ~90 % of the work); the global step only
inserts 128-number signatures into one LSH index, in input order, so *the kept documents, their ids,
texts and train/val sides equal the local run's exactly* (``tests/data/test_engines.py`` checks it).
datatrove's own MinHash stages (signatures -> buckets -> clusters -> filter) are not used: they
shingle differently and keep a different member of each cluster, so the output would differ.

*Resumable*: datatrove marks each finished task in ``WORK/completions``; an interrupted run,
started again with the same inputs, config and worker count, skips the finished tasks. ``WORK`` is
``OUT/.datatrove`` and is removed once the dataset is published.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from datatrove.data import Document
from datatrove.pipeline.base import PipelineStep

from fornalha.data.sources import RawDoc, Skipped, SourceSpec, iter_source, take_limited
from fornalha.errors import DataError

if TYPE_CHECKING:
    from fornalha.data.prepare import PrepareConfig, PrepareReport, Processed

WORK_DIR = ".datatrove"


def iter_inputs(specs: list[SourceSpec], cfg: PrepareConfig) -> Iterator[RawDoc | Skipped]:
    """Every item the sources yield, with the per-source ``max_docs``/``max_bytes`` limits.

    The same walk as the reader inside :func:`fornalha.data.prepare.prepare`; numbering its items
    0, 1, 2... gives every document a global input number that does not depend on the engine.
    """
    for spec in specs:
        yield from take_limited(iter_source(spec), cfg.max_docs, cfg.max_bytes)


# --------------------------------------------------------------------------- datatrove pipeline steps


class FornalhaReader(PipelineStep):
    """fornalha's readers; task ``rank`` keeps the input numbers i with i % world_size == rank."""

    name = "fornalha sources"
    type = "📖 - READER"

    def __init__(self, cfg_json: str, specs: list[SourceSpec]):
        super().__init__()
        self.cfg_json = cfg_json
        self.specs = specs

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        from fornalha.data.prepare import PrepareConfig

        cfg = PrepareConfig.model_validate_json(self.cfg_json)
        for index, item in enumerate(iter_inputs(self.specs, cfg)):
            if index % world_size != rank:
                continue
            self.stat_update("skipped at read" if isinstance(item, Skipped) else "documents")
            yield Document(text="", id=str(index), metadata={"index": index, "item": item})


class FornalhaProcess(PipelineStep):
    """fornalha's ``process_doc``: cleaning, filters, PII scrub, exact hash, MinHash signature."""

    name = "fornalha clean + filter + PII + MinHash"
    type = "🔻 - FILTER"

    def __init__(self, cfg_json: str, near: bool):
        super().__init__()
        self.cfg_json = cfg_json
        self.near = near

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        from fornalha.data.prepare import PrepareConfig, process_doc

        cfg = PrepareConfig.model_validate_json(self.cfg_json)
        for doc in data or ():
            item = doc.metadata["item"]
            if isinstance(item, RawDoc):
                with self.track_time():
                    verdict = process_doc(item, cfg, self.near)
                self.stat_update(
                    f"skipped: {verdict.skip}" if verdict.skip
                    else f"dropped: {verdict.drop}" if verdict.drop else "kept"
                )  # fmt: skip
                doc.text = verdict.text or ""
                doc.metadata["item"] = verdict
            yield doc


class FornalhaResults(PipelineStep):
    """The sink: (input number, verdict) pickles to ``WORK/results/rank-NNNNN.pkl``, renamed when whole."""

    name = "fornalha results"
    type = "💽 - WRITER"

    def __init__(self, work: str):
        super().__init__()
        self.work = work

    def run(self, data: Any = None, rank: int = 0, world_size: int = 1) -> Iterator[Document]:
        folder = Path(self.work) / "results"
        folder.mkdir(parents=True, exist_ok=True)
        final = folder / f"rank-{rank:05d}.pkl"
        partial = final.with_suffix(".pkl.partial")
        with open(partial, "wb") as fh:
            for doc in data or ():
                pickle.dump((doc.metadata["index"], doc.metadata["item"]), fh, pickle.HIGHEST_PROTOCOL)
        os.replace(partial, final)
        yield from ()


def make_steps(
    cfg: PrepareConfig, specs: list[SourceSpec], work: str | Path, near: bool
) -> list[PipelineStep]:
    """The stage-1 pipeline, [reader, process, results]: hand it to any datatrove executor."""
    cfg_json = cfg.model_dump_json()
    return [FornalhaReader(cfg_json, specs), FornalhaProcess(cfg_json, near), FornalhaResults(str(work))]


def cluster_steps(cfg: PrepareConfig, out_dir: str | Path, tasks: int) -> tuple[list[PipelineStep], str]:
    """(stage-1 steps, logging_dir) for running stage 1 on a cluster executor (Slurm, Ray).

    ``out_dir`` must be on a filesystem every node sees. Run the steps with ``tasks`` tasks and the
    returned ``logging_dir``; then ``fornalha data prepare ... --engine datatrove --workers TASKS
    --out OUT_DIR`` finds every task completed and runs only the global step (see
    ``docs/data-engines.md``).
    """
    from fornalha.data.prepare import cache_key, resolve_sources

    specs = resolve_sources(cfg)
    key, _ = cache_key(cfg, specs)
    work = _work_dir(Path(out_dir), key, tasks)
    near = cfg.dedup.near or (cfg.split.group_near_duplicates and cfg.split.mode == "doc")  # as prepare()
    return make_steps(cfg, specs, work, near), str(work / "logs")


def _read_results(path: Path) -> Iterator[tuple[int, Any]]:
    with open(path, "rb") as fh:
        while True:
            try:
                yield pickle.load(fh)
            except EOFError:
                return


def _work_dir(out: Path, key: str | None, workers: int) -> Path:
    """``OUT/.datatrove``, emptied unless it holds a resumable run of the same key and worker count."""
    work = out / WORK_DIR
    out.mkdir(parents=True, exist_ok=True)
    stamp = json.dumps({"key": key, "workers": workers})
    stamp_file = work / "run.json"
    resumable = key is not None and stamp_file.is_file() and stamp_file.read_text() == stamp
    if not resumable:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        stamp_file.write_text(stamp)
    return work


def datatrove_results(
    cfg: PrepareConfig,
    specs: list[SourceSpec],
    report: PrepareReport,
    out: Path,
    *,
    workers: int,
    near: bool,
) -> Iterator[Processed]:
    """Run stage 1 on datatrove's ``LocalPipelineExecutor``; yield the verdicts in input order.

    Items the readers could not turn into documents are counted in ``report`` (as the local path
    does); the caller's loop (dedup, split, write) consumes the documents.
    """
    import multiprocessing as mp

    from datatrove.executor import LocalPipelineExecutor

    work = _work_dir(out, report.cache_key, workers)
    executor = LocalPipelineExecutor(
        pipeline=make_steps(cfg, specs, work, near),
        tasks=workers,
        workers=workers,
        logging_dir=str(work / "logs"),
        skip_completed=True,
        start_method="fork" if "fork" in mp.get_all_start_methods() else "spawn",
    )
    executor.run()
    report.notes.append(
        f"engine: datatrove LocalPipelineExecutor, {workers} tasks (logs were in {work}/logs)"
    )
    files = [work / "results" / f"rank-{rank:05d}.pkl" for rank in range(workers)]
    if missing := [f.name for f in files if not f.is_file()]:
        raise DataError(f"datatrove stage 1 left no results for {', '.join(missing)}; see {work}/logs")
    for _, item in heapq.merge(*(_read_results(f) for f in files), key=lambda pair: pair[0]):
        if isinstance(item, Skipped):
            stats = report.sources[item.source]
            stats.skipped[item.reason] += 1
            stats.bytes_in += item.nbytes
            continue
        yield item
    shutil.rmtree(work, ignore_errors=True)


def fingerprint_results(out_dir: str | Path) -> str:
    """SHA-256 over the (side, id, text) lines of a dataset folder: equal for equal datasets."""
    import zstandard

    digest = hashlib.sha256()
    for side in ("train", "val"):
        for part in sorted((Path(out_dir) / side).glob("part-*.jsonl.zst")):
            with open(part, "rb") as fh:
                data = zstandard.ZstdDecompressor().stream_reader(fh).read()
            digest.update(side.encode() + b"\0" + data)
    return digest.hexdigest()
