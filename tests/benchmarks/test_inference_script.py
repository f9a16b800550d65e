"""benchmarks/inference.py end to end on a small run folder: the figures, the JSON last line, and the
validation loss of each case's own decode step (fp16 weights and cache within 0.1 % of float32)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_inference_benchmark_on_a_run_with_validation_text(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import inference
    finally:
        sys.path.remove(str(BENCH))
    from fornalha.data.dataset import write_dataset

    run = inference.make_run("10M", tmp_path)  # random weights, 65-character tokenizer
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune. "
    write_dataset(run / "dataset", {"train": [text], "val": [text * 40]})
    r = subprocess.run(
        [sys.executable, str(BENCH / "inference.py"), "--run", str(run), "--cases", "fornalha", "fp32", "hf",
         "--new-tokens", "6", "--prefill-len", "16", "--repeat", "1"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.strip().splitlines()
    assert "val loss" in lines[0] and "vs fp32" in lines[0]
    result = json.loads(lines[-1])
    for case in ("fornalha", "fp32", "hf"):
        assert result[f"{case}_run_b1_tok_s"] > 0 and result[f"{case}_run_b8_tok_s"] > 0
    exact, fast = result["fp32_run_val_loss"], result["fornalha_run_val_loss"]
    assert 3.0 < exact < 6.0  # random weights over 65 tokens: about ln 65 = 4.17
    assert abs(fast - exact) / exact < 1e-3, (fast, exact)  # fp16 weights and cache: ~1e-6 here
    assert "hf_run_val_loss" not in result  # transformers' generate: no decode step of ours to score
    assert result["ratio_b1_vs_hf"] == round(result["fornalha_b1_tok_s"] / result["hf_b1_tok_s"], 2)
