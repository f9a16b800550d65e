"""How long the decode loop waits to record a completion: the store's queue vs a synchronous insert.

Baseline (same run): one INSERT + COMMIT per completion on the calling thread, what a server would pay
inside its loop without a writer thread. Measured: `Store.record_completion` (a queue put), then the time
`close()` needs to write the backlog. SQLite in WAL mode with synchronous=FULL, on local disk.

    python benchmarks/store_write.py [--n 2000]
The last stdout line is JSON with the figures and the baseline.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from fornalha.serve.store import Store, _row_from_record, completions


def record(i: int) -> dict:
    return {
        "id": f"cmpl-{i}",
        "created": time.time(),
        "model": "bench",
        "endpoint": "chat.completions",
        "request": {"messages": [{"role": "user", "content": "hello " * 50}], "temperature": 0.7},
        "output": ["an answer " * 30],
        "finish_reasons": ["stop"],
        "prompt_tokens": 60,
        "completion_tokens": 40,
        "latency_ms": 100.0,
        "ttft_ms": 10.0,
        "user": None,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    n = ap.parse_args().n
    with tempfile.TemporaryDirectory() as tmp:
        sync_store = Store(f"sqlite:///{Path(tmp) / 'sync.db'}")
        sync_times = []
        for i in range(n):
            t0 = time.perf_counter()
            with sync_store.engine.begin() as conn:
                conn.execute(completions.insert(), [_row_from_record(record(i), True)])
            sync_times.append(time.perf_counter() - t0)
        sync_store.close()

        store = Store(f"sqlite:///{Path(tmp) / 'queued.db'}")
        q_times = []
        t_all = time.perf_counter()
        for i in range(n):
            t0 = time.perf_counter()
            store.record_completion(record(i))
            q_times.append(time.perf_counter() - t0)
        t_calls = time.perf_counter() - t_all
        store.close()
        t_total = time.perf_counter() - t_all
        written = Store(f"sqlite:///{Path(tmp) / 'queued.db'}").counts()["completions"]

    def us(xs: list[float], q: float) -> float:
        return round(statistics.quantiles(xs, n=100)[int(q) - 1] * 1e6, 1)

    out = {
        "n": n,
        "baseline_sync_insert_p50_us": us(sync_times, 50),
        "baseline_sync_insert_p99_us": us(sync_times, 99),
        "queued_call_p50_us": us(q_times, 50),
        "queued_call_p99_us": us(q_times, 99),
        "p50_speedup": round(us(sync_times, 50) / max(us(q_times, 50), 0.1), 1),
        "queued_calls_s": round(t_calls, 3),
        "queued_total_with_flush_s": round(t_total, 3),
        "baseline_total_s": round(sum(sync_times), 3),
        "written": written,
    }
    print(
        f"sync INSERT+COMMIT per completion: p50 {out['baseline_sync_insert_p50_us']} us, "
        f"p99 {out['baseline_sync_insert_p99_us']} us; record_completion: p50 {out['queued_call_p50_us']} us, "
        f"p99 {out['queued_call_p99_us']} us; {n} written in {out['queued_total_with_flush_s']} s incl. flush"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
