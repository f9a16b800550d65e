"""benchmarks/serve_load.py --quick runs end to end and ends with its JSON line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_serve_load_quick():
    env = {**os.environ, "FORNALHA_NO_KERNELS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "serve_load.py"), "--quick", "--no-llamacpp"],
                         capture_output=True, text=True, timeout=180, env=env, check=True)  # fmt: skip
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["errors"] == 0
    assert res["fornalha_c1_tok_s"] > 0 and res["fornalha_c4"]["tokens"] == 4 * 8  # ignore_eos: fixed length
    assert res["llamacpp_c1_tok_s"] is None and "skipped" in res["llamacpp_reason"]
