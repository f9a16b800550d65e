"""fornalha's HellaSwag numbers beside EleutherAI's lm-evaluation-harness, on the same model and examples.

    python benchmarks/lmeval_hellaswag.py --run RUN --n 300 --lmeval-python /path/to/venv/bin/python

The run is exported with `fornalha export hf`; the first N examples of
../shared/data/eval/hellaswag_val_idxmod10_0-2.jsonl are scored by `fornalha.evaluate` in this
process and by lm-eval (`--model hf`, `add_bos_token=True`, float32, CPU) through a local-JSONL task
with the same context (`ctx`), the same four endings and " " as the target delimiter. lm-eval is run
by another interpreter (its own virtual environment: it pins packages fornalha does not need).
The last line is JSON: both harnesses' acc and acc_norm and whether they agree.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "eval" / "hellaswag_val_idxmod10_0-2.jsonl"

TASK_YAML = """task: hellaswag_local
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "{{{{ctx}}}}"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{endings}}}}"
target_delimiter: " "
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=Path)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--lmeval-python", required=True, help="python of a venv with lm-eval installed")
    args = ap.parse_args()

    from fornalha.checkpoint import load_model
    from fornalha.evaluate.multiple_choice import evaluate_hellaswag, load_hellaswag
    from fornalha.tokenizer import load_tokenizer

    examples = load_hellaswag(DATA, limit=args.n)
    work = Path(tempfile.mkdtemp(prefix="lmeval-"))
    data = work / "hellaswag.jsonl"
    with data.open("w") as f:
        for ex in examples:
            f.write(
                json.dumps({"ctx": ex["ctx"], "endings": ex["endings"], "label": int(ex["label"])}) + "\n"
            )
    (work / "tasks").mkdir()
    (work / "tasks" / "hellaswag_local.yaml").write_text(TASK_YAML.format(data=data))

    subprocess.run(
        [
            sys.executable,
            "-m",
            "fornalha.cli",
            "export",
            "hf",
            "--run",
            str(args.run),
            "--out",
            str(work / "hf"),
        ],
        check=True,
    )
    t0 = time.perf_counter()
    model, _meta = load_model(args.run)
    model.eval()
    ours = evaluate_hellaswag(model, load_tokenizer(args.run), examples)
    ours_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    subprocess.run(
        [
            args.lmeval_python, "-m", "lm_eval", "--model", "hf",
            "--model_args", f"pretrained={work / 'hf'},add_bos_token=True,dtype=float32",
            "--include_path", str(work / "tasks"), "--tasks", "hellaswag_local",
            "--device", "cpu", "--batch_size", "8", "--output_path", str(work / "out"),
        ],
        check=True,
    )  # fmt: skip
    theirs_s = time.perf_counter() - t0
    result_file = sorted((work / "out").rglob("results_*.json"))[-1]
    res = json.loads(result_file.read_text())["results"]["hellaswag_local"]
    figures = {
        "n": len(examples),
        "fornalha_acc": round(ours.accuracy, 4),
        "fornalha_acc_norm": round(ours.acc_norm, 4),
        "lmeval_acc": round(res["acc,none"], 4),
        "lmeval_acc_norm": round(res["acc_norm,none"], 4),
        "fornalha_s": round(ours_s, 1),
        "lmeval_s": round(theirs_s, 1),
    }
    figures["acc_identical"] = figures["fornalha_acc"] == figures["lmeval_acc"]
    figures["acc_norm_identical"] = figures["fornalha_acc_norm"] == figures["lmeval_acc_norm"]
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
