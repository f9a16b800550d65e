"""benchmarks/structured.py in its smoke mode: it runs, every case generates its full budget, and
the last line is the JSON of figures with the baseline named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "structured.py"


def test_structured_benchmark_smoke(shared_data) -> None:
    r = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--threads", "1"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "FORNALHA_NO_KERNELS": "1"})  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    result = json.loads(r.stdout.strip().splitlines()[-1])
    for case in ("free", "constrained", "mixed"):
        assert result[f"tokens_per_s_{case}"] > 0
    assert result["constrained_vs_free"] > 0 and result["mask_ms_per_step_batch"] > 0
    assert "free" in result["baseline"]
