"""`fornalha pipeline --preset assistant` at toy size: pre-training, chat SFT and the before/after
answer evaluation in one folder, ending in a JSON line whose answer loss falls."""

from __future__ import annotations

import json

import pytest
from test_sft import qa_rows

from fornalha.cli import main


def test_assistant_preset_end_to_end(tmp_path, capsys, shared_data):
    corpus = shared_data / "pt" / "machado_dom_casmurro.txt"
    sft = tmp_path / "qa.jsonl"
    sft.write_text("\n".join(json.dumps(r) for r in qa_rows(8)) + "\n")
    out = tmp_path / "assistant"
    small = ["--set", "model.n_layer=2", "--set", "model.n_embd=32", "--set", "model.n_head=2",
             "--set", "model.block_size=64", "--set", "train.batch_size=8", "--set", "train.max_steps=40",
             "--set", "train.samples=0", "--set", "train.eval_batches=2"]  # fmt: skip
    sft_small = ["--sft-set", "train.max_steps=60", "--sft-set", "train.batch_size=4", "--sft-set", "train.lr=0.003",
                 "--sft-set", "train.samples=0", "--sft-set", "train.eval_interval=20"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", "--preset", "assistant", "--out", str(out), "--minutes", "6", "--source", str(corpus),
              "--max-bytes", "60000", "--sft-data", str(sft), "--tokenizer", "char", "--questions", "6", "--max-answer-tokens", "24",
              "--device", "cpu", *small, *sft_small])  # fmt: skip
    stdout, err = capsys.readouterr()
    assert (exit_.value.code or 0) == 0, err[-3000:]
    result = json.loads(stdout.strip().splitlines()[-1])
    for key in ("answer_loss_before", "answer_loss_after", "chrf_before", "chrf_after",
                "end_of_turn_rate_before", "end_of_turn_rate_after"):  # fmt: skip
        assert isinstance(result[key], float | int), key
    assert result["answer_loss_after"] < result["answer_loss_before"] - 0.3, result
    assert 0 <= result["end_of_turn_rate_after"] <= 1 and 0 <= result["chrf_after"] <= 100
    assert (out / "base" / "report.html").is_file() and (out / "base" / "checkpoints" / "best").is_dir()
    assert (out / "checkpoints" / "best").is_dir() and (out / "sft_report.json").is_file()
    saved = json.loads((out / "assistant_eval.json").read_text())
    assert len(saved["answers"]["after"]) == result["questions"] == 6
    assert "held-out questions" in (out / "report.html").read_text()

    # again without --overwrite: refused, nothing touched
    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "pipeline",
                "--preset",
                "assistant",
                "--out",
                str(out),
                "--source",
                str(corpus),
                "--sft-data",
                str(sft),
            ]
        )
    assert exit_.value.code == 2 and "--overwrite" in capsys.readouterr().err
