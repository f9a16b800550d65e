"""benchmarks/gpu_check.py and gpu_serve_check.py are run on a lent GPU only; here their smoke modes
prove the scripts still run, and without CUDA they say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
SCRIPT, SERVE_SCRIPT = BENCHMARKS / "gpu_check.py", BENCHMARKS / "gpu_serve_check.py"


def smoke(script: Path) -> dict:
    """The script's `--device cpu --smoke` run: its final JSON line."""
    r = subprocess.run(
        [sys.executable, str(script), "--device", "cpu", "--smoke"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_gpu_check_smoke_on_cpu() -> None:
    result = smoke(SCRIPT)
    # the CPU peak is measured while the parallel test workers load the machine: a loose sanity bound
    assert result["tokens_per_s"] > 0 and 0 < result["mfu_vs_measured_peak"] < 3
    assert result["final_loss"] > 0


def test_gpu_serve_check_smoke_on_cpu() -> None:
    """The serving GPU check's smoke mode: the graphs' static step (run eagerly without a GPU)
    gives the eager engine's tokens, and both speeds are measured."""
    result = smoke(SERVE_SCRIPT)
    assert result["same_tokens"]["tokens_equal"] and result["same_tokens"]["rows"] == 16
    assert result["same_tokens"]["max_logit_diff"] < 1e-3
    speed = result["decode_smoke"]
    assert speed["eager_b1_tok_s"] > 0 and speed["graphs_b16_tok_s"] > 0
    assert "serve" not in result


@pytest.mark.parametrize("script", [SCRIPT, SERVE_SCRIPT], ids=["gpu_check", "gpu_serve_check"])
def test_says_when_cuda_is_missing(script: Path) -> None:
    if __import__("torch").cuda.is_available():
        return  # on a GPU machine the real check runs instead
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "CUDA is not available" in r.stderr
