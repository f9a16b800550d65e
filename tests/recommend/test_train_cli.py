"""End to end through the real CLI: prepare -> train (the project's training loop) -> eval -> predict.

Needs the train branch's Task interface (`fornalha.train.trainer.train(..., task=)`)."""

from __future__ import annotations

import json

from tests.recommend.conftest import fornalha, write_planted


def test_learns_the_planted_rule(trained):
    run, data = trained
    assert (run / "checkpoints" / "best" / "model.safetensors").is_file()
    assert (run / "items.json").is_file() and (run / "plots" / "loss.png").is_file()
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e.get("kind") == "eval"]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] or evals[0]["ndcg@10"] > 0.3
    for n in range(8):  # after A<n> comes B<n>: the top recommendation
        out = json.loads(fornalha("recommend", "predict", "--run", str(run), "--history", "F01",
                                  "--history", f"A{n}", "--k", "3").stdout.splitlines()[-1])  # fmt: skip
        assert out["data"][0]["item"] == f"B{n}", out
        assert all(r["item"] not in ("F01", f"A{n}") for r in out["data"])  # seen items never recommended


def test_eval_json_and_baselines(trained):
    run, data = trained
    res = json.loads(
        fornalha("recommend", "eval", "--run", str(run), "--data", str(data)).stdout.splitlines()[-1]
    )
    for key in ("users", "hr@10", "ndcg@10", "popularity_hr@10", "popularity_ndcg@10", "itemknn_ndcg@10",
                "als_ndcg@10", "hr@5", "ndcg@20"):  # fmt: skip
        assert key in res
    assert res["users"] == 120
    lo, hi = res["ndcg@10_vs_best_baseline_ci95"]  # paired bootstrap over users
    assert lo <= res["ndcg@10_vs_best_baseline"] <= hi
    assert res["best_baseline_ndcg@10"] == res[f"{res['best_baseline']}_ndcg@10"]
    # the test item follows the rule for users whose last pair is (A, B): the model must beat popularity
    assert res["ndcg@10"] > res["popularity_ndcg@10"]


def test_eval_on_new_users_with_vocab_from(trained, tmp_path):
    run, _ = trained
    write_planted(tmp_path / "other.dat", users=40, seed=7)
    with open(tmp_path / "other.dat", "a") as f:
        f.write("999::NEWITEM::5::2000000\n")
    proc = fornalha("recommend", "prepare", "--ratings", str(tmp_path / "other.dat"), "--vocab-from", str(run),
                    "--out", str(tmp_path / "d2"))  # fmt: skip
    man = json.loads(proc.stdout.splitlines()[-1])
    assert man["dropped"]["unknown_items"] == 1
    res = json.loads(
        fornalha("recommend", "eval", "--run", str(run), "--data", str(tmp_path / "d2")).stdout.splitlines()[
            -1
        ]
    )
    assert res["users"] == 40 and res["ndcg@10"] > res["popularity_ndcg@10"]


def test_bad_input_is_one_line_exit_2(trained, tmp_path):
    run, data = trained
    p = fornalha("recommend", "predict", "--run", str(run), "--history", "NOPE", check=False)
    assert p.returncode == 2 and "NOPE" in p.stderr and "Traceback" not in p.stderr
    p = fornalha("recommend", "prepare", "--ratings", str(tmp_path / "missing.dat"), "--out", str(tmp_path / "x"),
                 check=False)  # fmt: skip
    assert p.returncode == 2 and "not found" in p.stderr
