"""`data prepare` on the local engine and on datatrove, in one run, on the same corpus.

Corpus (``--source``): by default ``builtin:stdlib+tests``, the `.py` files of the Python standard
library that runs this script with its test suites (~31 MB raw, the tokenizer benchmark's corpus);
``builtin:`` is the stdlib alone (~12 MB, what ``make demo``'s data stage reads). Both engines get the same config (the defaults:
cleaning, filters, PII scrub, exact + MinHash near-duplicate removal, doc split), the same
``--workers`` and no cache; they run in turn (local first), best of ``--repeats`` each.

Reported per engine: wall seconds, documents read per second, MB read per second; the ratio is
datatrove / local by wall time (above 1: datatrove is slower). The two output folders must hold the
same documents, ids, texts and train/val sides (checked; the script exits 1 otherwise).

    .venv/bin/python benchmarks/data_engine.py [--workers 2] [--repeats 1] [--source builtin:stdlib+tests]

Prints a table; the last line is a JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from fornalha.data.engines import fingerprint_results
from fornalha.data.prepare import PrepareConfig, SourceEntry, prepare


def run(engine: str, workers: int, out: Path, source: str) -> dict[str, float]:
    cfg = PrepareConfig(sources=[SourceEntry(source=source)])
    started = time.perf_counter()
    report = prepare(cfg, out, workers=workers, use_cache=False, engine=engine)
    wall = time.perf_counter() - started
    docs = sum(s.docs_in for s in report.sources.values())
    kept = sum(s.docs_out for s in report.sources.values())
    return {
        "wall_s": round(wall, 2),
        "docs_in": docs,
        "docs_kept": kept,
        "mb_in": round(report.bytes_in / 1e6, 2),
        "docs_per_s": round(docs / wall, 1),
        "mb_per_s": round(report.bytes_in / 1e6 / wall, 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--source", default="builtin:stdlib+tests")
    args = parser.parse_args()

    results: dict[str, dict[str, float]] = {}
    prints: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fornalha-engine-bench-") as tmp:
        for _ in range(args.repeats):
            for engine in ("local", "datatrove"):
                out = Path(tmp) / engine
                figures = run(engine, args.workers, out, args.source)
                prints[engine] = fingerprint_results(out)
                if engine not in results or figures["wall_s"] < results[engine]["wall_s"]:
                    results[engine] = figures
    same = prints["local"] == prints["datatrove"]
    ratio = results["datatrove"]["wall_s"] / results["local"]["wall_s"]

    print(f"{'engine':<10} {'wall s':>8} {'docs in':>8} {'kept':>7} {'MB in':>7} {'docs/s':>8} {'MB/s':>7}")
    for engine, r in results.items():
        print(
            f"{engine:<10} {r['wall_s']:>8.2f} {r['docs_in']:>8} {r['docs_kept']:>7} {r['mb_in']:>7.2f} "
            f"{r['docs_per_s']:>8.1f} {r['mb_per_s']:>7.3f}"
        )
    print(f"datatrove / local wall time: {ratio:.3f}; identical output: {same}")
    print(
        json.dumps(
            {
                "benchmark": "data_engine",
                "corpus": args.source,
                "workers": args.workers,
                "repeats": args.repeats,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "baseline": {"engine": "local", **results["local"]},
                "datatrove": results["datatrove"],
                "ratio_wall_datatrove_over_local": round(ratio, 3),
                "identical_output": same,
            }
        )
    )
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
