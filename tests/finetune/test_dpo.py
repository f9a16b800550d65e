"""DPO: the loss against a hand computation, the pair data and its adapters, and the command end to end."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from dpo_helpers import make_run, pair_texts, synthetic_pairs, write_jsonl

from fornalha.errors import DataError
from fornalha.finetune.dpo import collate, dpo_loss, preference_metrics, reply_logps
from fornalha.finetune.preference_data import (
    encode_reply,
    pair_from_record,
    parse_hh_transcript,
    read_preference_file,
    split_pairs,
)
from fornalha.tokenizer.char import CharTokenizer
from fornalha.tokenizer.chat import SPECIAL_IDS

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def fornalha(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1", COLUMNS="200")
    return subprocess.run(
        [sys.executable, "-m", "fornalha.cli", *args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=400,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# The loss
# --------------------------------------------------------------------------------------------


def test_dpo_loss_equals_a_hand_computation():
    # policy moved chosen up by 0.5 nats and rejected down by 0.5 vs the reference; beta 0.1:
    # margin = 0.1·0.5 − 0.1·(−0.5) = 0.1, loss = −log σ(0.1) = log(1 + e^−0.1)
    pc, pr = torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -1.0])
    rc, rr = torch.tensor([-1.5, -3.0]), torch.tensor([-1.5, -1.0])
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta=0.1)
    expected = (math.log(1 + math.exp(-0.1)) + math.log(2.0)) / 2  # second pair: margin 0 -> log 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert chosen.tolist() == pytest.approx([0.05, 0.0])
    assert rejected.tolist() == pytest.approx([-0.05, 0.0])
    m = preference_metrics(
        torch.stack([pc, pr], 1).double(), torch.stack([rc, rr], 1).double(), torch.ones(2, 2), 0.1
    )
    assert m["val_loss"] == pytest.approx(expected, abs=1e-6)
    assert m["reward_margin"] == pytest.approx(0.05)
    assert m["preference_accuracy"] == pytest.approx(0.75)  # one win, one tie (counts half)


def test_reply_logps_sum_only_the_reply_tokens():
    from fornalha.model import GPT, ModelConfig

    tok = CharTokenizer.train(["hello there, general kenobi"])
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=tok.vocab_size, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    messages = [{"role": "user", "content": "hello"}]
    enc = encode_reply(tok, messages, "there", max_len=65)
    batch = collate([(enc, encode_reply(tok, messages, "kenobi", max_len=65))])
    got = reply_logps(model, batch.x, batch.y)[0]
    with torch.no_grad():
        logits, _ = model(torch.tensor([enc.ids[:-1]]))
    logp = torch.log_softmax(logits[0].double(), -1)
    by_hand = sum(logp[t, enc.ids[t + 1]] for t in range(len(enc.ids) - 1) if enc.mask[t + 1])
    assert got.item() == pytest.approx(by_hand.item(), abs=1e-4)
    assert int(batch.n_reply[0]) == len(tok.encode("there")) + 1  # the reply and its <|end|>


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def test_mask_covers_the_final_reply_and_its_end_token_only():
    tok = CharTokenizer.train(["abcdefghij ?!"])
    messages = [
        {"role": "user", "content": "ab"},
        {"role": "assistant", "content": "cd"},  # an earlier reply: context, not trained
        {"role": "user", "content": "ef"},
    ]
    enc = encode_reply(tok, messages, "ghi", max_len=100)
    trained = [i for i, m in zip(enc.ids, enc.mask) if m]
    assert trained == [*tok.encode("ghi"), SPECIAL_IDS["<|end|>"]]
    assert enc.ids[-5] == SPECIAL_IDS["<|assistant|>"] and not enc.truncated
    cut = encode_reply(tok, messages, "ghi", max_len=8)  # the prompt's oldest tokens go first
    assert len(cut.ids) == 8 and cut.truncated and cut.ids[-4:] == enc.ids[-4:]


def test_hh_transcripts_become_messages():
    record = {
        "chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to bake?\n\nAssistant: Use an oven.",
        "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how to bake?\n\nAssistant: No idea.",
    }
    pair, shape = pair_from_record(record)
    assert shape == "hh"
    assert pair.messages == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "how to bake?"},
    ]
    assert (pair.chosen, pair.rejected) == ("Use an oven.", "No idea.")
    assert parse_hh_transcript("\n\nHuman: a\n\nAssistant: b")[1] == {"role": "assistant", "content": "b"}
    with pytest.raises(DataError, match="differ before"):
        pair_from_record({"chosen": record["chosen"], "rejected": "\n\nHuman: other\n\nAssistant: x"})


def test_bad_records_are_counted_with_line_numbers(tmp_path):
    good = synthetic_pairs(2)
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [good[0], "{not json", {"prompt": "q", "chosen": "same", "rejected": "same"},
         {"messages": [{"role": "user", "content": "q"}], "chosen": "", "rejected": "b"}, good[1],
         {"prompt": "q", "chosen": "a", "rejected": "b"}],
    )  # fmt: skip
    pf = read_preference_file(path)
    assert len(pf.pairs) == 3 and [p.line for p in pf.pairs] == [1, 5, 6]
    assert [n for n, _ in pf.bad] == [2, 3, 4]
    assert "not JSON" in pf.bad[0][1] and "same reply" in pf.bad[1][1] and "empty" in pf.bad[2][1]
    assert pf.shapes == {"messages": 2, "prompt": 1}


def test_the_shared_preference_files_parse(shared_data):
    oasst = read_preference_file(shared_data / "preference" / "oasst1_en_100_pairs.jsonl")
    assert len(oasst.pairs) == 417 and not oasst.bad and oasst.shapes == {"messages": 417}
    hh = read_preference_file(shared_data / "preference" / "hh_rlhf_harmless_base_test.jsonl")
    assert hh.shapes.get("hh", 0) > 2200 and len(hh.pairs) + len(hh.bad) == 2312
    assert all(p.messages[-1]["role"] == "user" for p in hh.pairs)
    train, held = split_pairs(oasst.pairs, 0.1)
    prompts = lambda ps: {json.dumps(p.messages) for p in ps}  # noqa: E731
    assert not prompts(train) & prompts(held)  # split by conversation: no prompt on both sides
    assert 0.04 < len(held) / len(oasst.pairs) < 0.2


# --------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------


def test_dpo_raises_held_out_preference_accuracy(tmp_path):
    pairs = synthetic_pairs(80)
    run = make_run(tmp_path / "base", pair_texts(pairs))
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    r = fornalha(
        "finetune", "dpo", "--run", str(run), "--data", str(data), "--out", "dpo", "--held-out", "0.25",
        "--set", "train.max_steps=16", "--set", "train.eval_interval=8", "--set", "train.lr=1e-3",
        "--set", "train.progress=false", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    report = json.loads((tmp_path / "dpo" / "dpo_report.json").read_text())
    before, after = report["before"], report["after"]
    assert before["preference_accuracy"] == 0.5 and before["reward_margin"] == 0.0  # policy = reference
    assert after["preference_accuracy"] > 0.8 and after["reward_margin"] > 0.0
    assert after["val_loss"] < before["val_loss"] == pytest.approx(math.log(2))
    assert report["data"]["held_out_pairs"] + report["data"]["train_pairs"] == 80
    # the reference was computed once and cached; the result is an ordinary run folder
    assert (tmp_path / "dpo" / "cache" / "dpo_reference.json").is_file()
    from fornalha.checkpoint import load_run

    model, _, meta = load_run(tmp_path / "dpo")
    assert meta["metrics"]["preference_accuracy"] == after["preference_accuracy"]


def test_bad_data_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    from fornalha.cli import main

    monkeypatch.chdir(tmp_path)
    run = make_run(tmp_path / "base", ["abc"])
    bad = write_jsonl(tmp_path / "bad.jsonl", ["nope", {"chosen": 1, "rejected": 2}])

    def fails(*args: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(["finetune", "dpo", *args, "--out", "o"])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "Traceback" not in err, err
        assert err.startswith("error:") and len(err.strip().splitlines()) == 1, err  # one line
        return err

    err = fails("--run", str(run), "--data", str(bad))
    assert "no valid preference pair" in err and "line 1" in err and "line 2" in err  # bad lines named
    assert "no such file" in fails("--run", str(run), "--data", "missing.jsonl").splitlines()[0]
    assert "not a run folder" in fails("--run", str(tmp_path), "--data", str(bad))
    good = write_jsonl(tmp_path / "good.jsonl", synthetic_pairs(20))
    assert "--beta must be a positive" in fails("--run", str(run), "--data", str(good), "--beta", "0")
    assert "--lora rank must be a positive" in fails("--run", str(run), "--data", str(good), "--lora", "0")
    assert not (tmp_path / "o").exists()


def test_hh_transcripts_train_end_to_end(tmp_path, shared_data):
    lines = (shared_data / "preference" / "hh_rlhf_harmless_base_test.jsonl").read_text().splitlines()[:40]
    data = tmp_path / "hh40.jsonl"  # a 40-pair slice, in the test's temporary folder only
    data.write_text("\n".join(lines) + "\n")
    run = make_run(tmp_path / "base", [json.loads(x)["chosen"] + json.loads(x)["rejected"] for x in lines])
    from rich.console import Console

    from fornalha.finetune.dpo import DPOSettings, finetune_dpo

    sets = ["train.max_steps=3", "train.eval_interval=3", "train.batch_size=4", "train.progress=false"]
    with open(tmp_path / "log.txt", "w") as f:
        finetune_dpo(run, data, tmp_path / "hh", DPOSettings(held_out=0.25), sets, console=Console(file=f))
    report = json.loads((tmp_path / "hh" / "dpo_report.json").read_text())
    assert report["data"]["shapes"] == {"hh": 40} and report["data"]["truncated"] > 0  # 64-token context
    assert all(math.isfinite(v) for v in report["after"].values())
    assert report["after"]["val_loss"] != report["before"]["val_loss"]  # the model moved


def test_help_has_an_example():
    from typer.testing import CliRunner

    from fornalha.cli import app

    r = CliRunner().invoke(app, ["finetune", "dpo", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert r.exit_code == 0 and "fornalha finetune dpo --run" in r.output and "--lora" in r.output
