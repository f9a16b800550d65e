"""The evaluation gate: the rule on numbers, the preference figures against a hand computation, and a
promotion measured now on held-out data (bpb on a dataset, preference accuracy on pairs)."""

from __future__ import annotations

import json

import pytest
import torch
from improve_helpers import TEXT, make_run

from fornalha.checkpoint import load_run
from fornalha.errors import ConfigError, DataError
from fornalha.evaluate.loss import evaluate_dataset
from fornalha.improve.gate import GatePolicy, decide, make_gate, measure_on, preference_metrics, read_pairs
from fornalha.improve.registry import Registry, read_registry_file
from fornalha.improve.simulate import val_dataset
from fornalha.tokenizer.chat import render_chat

PROMPTS = ["the fox?", "lazy dog", "0123", "ABC", "é ü ç!", "jumps over"]


def test_decide_states_each_check():
    p = GatePolicy(bpb_tolerance=0.02)
    champ = {"val_bpb": 2.0, "preference_accuracy": 0.5}
    ok = decide(champ, {"val_bpb": 2.02, "preference_accuracy": 0.51}, p, "recorded")
    assert ok.passed and [c.passed for c in ok.checks] == [True, True]
    worse = decide(champ, {"val_bpb": 2.0201, "preference_accuracy": 0.9}, p, "recorded")
    assert not worse.passed and "worse beyond tolerance" in worse.reasons[0]
    same = decide(champ, {"val_bpb": 1.9, "preference_accuracy": 0.5}, p, "recorded")
    assert not same.passed and "not better" in same.reasons[1]
    missing = decide(champ, {"val_bpb": 1.9}, p, "recorded")
    assert not missing.passed and "not measured for the challenger" in missing.reasons[1]
    gain = GatePolicy(feedback_metric="reward_margin", min_gain=0.5)
    assert not decide(
        {"val_bpb": 2, "reward_margin": 1.0}, {"val_bpb": 2, "reward_margin": 1.4}, gain, "x"
    ).passed
    assert decide(
        {"val_bpb": 2, "reward_margin": 1.0}, {"val_bpb": 2, "reward_margin": 1.6}, gain, "x"
    ).passed
    assert ok.numbers["checks"][0]["challenger"] == 2.02 and "0.02" in ok.policy["rule"]
    with pytest.raises(ConfigError):
        GatePolicy(feedback_metric="bleu")


def _walk(model, tok, prompt: str, best: bool, n: int = 12) -> str:
    """The answer the model likes most (each step's most likely character) or least (the least likely)."""
    ids = render_chat(tok, [{"role": "user", "content": prompt}])
    first = len(tok.special_ids)  # characters only
    out = []
    with torch.no_grad():
        for _ in range(n):
            logits, _ = model(torch.tensor([ids + out]))
            row = logits[0, -1, first : tok.vocab_size]
            out.append(first + int(row.argmax() if best else row.argmin()))
    return tok.decode(out)


def _answer_logprob_by_hand(model, tok, prompt: str, answer: str) -> float:
    """Sum over the answer's tokens and its <|end|> of log p(token | everything before), one forward per token."""
    ids = render_chat(tok, [{"role": "user", "content": prompt}])
    target = tok.encode(answer) + [tok.special_ids["<|end|>"]]
    total = 0.0
    with torch.no_grad():
        for t in target:
            logits, _ = model(torch.tensor([ids]))
            total += float(torch.log_softmax(logits[0, -1].float(), -1)[t])
            ids = ids + [t]
    return total


def test_preference_metrics_match_a_hand_computation(tmp_path):
    model, tok, _ = load_run(make_run(tmp_path, "m", 5))
    pairs = [{"messages": [{"role": "user", "content": p}], "chosen": "the dog", "rejected": "a fox jumps"}
             for p in PROMPTS[:3]]  # fmt: skip
    got = preference_metrics(model, tok, pairs)
    diffs = [_answer_logprob_by_hand(model, tok, p["messages"][0]["content"], p["chosen"])
             - _answer_logprob_by_hand(model, tok, p["messages"][0]["content"], p["rejected"]) for p in pairs]  # fmt: skip
    assert got["reward_margin"] == pytest.approx(sum(diffs) / 3, rel=1e-4, abs=1e-4)
    assert got["preference_accuracy"] == sum(d > 0 for d in diffs) / 3


def _val_dataset(root):
    return val_dataset(root, [TEXT[i:] + TEXT[:i] for i in range(0, 60, 7)])


def test_promotion_measured_now_on_the_same_held_out_data(tmp_path, cli):
    champion = make_run(tmp_path, "champion", 11)
    challenger = make_run(tmp_path, "challenger", 12, parent=champion / "checkpoints" / "best")
    m0, tok, _ = load_run(champion)
    m1, _, _ = load_run(challenger)
    # held-out pairs the challenger gets right by construction (its likeliest answer against its least
    # likely one); the champion, another random model, does not
    pairs = tmp_path / "heldout_pairs.jsonl"
    with open(pairs, "w") as f:
        for p in PROMPTS:
            chosen, rejected = _walk(m1, tok, p, True), _walk(m1, tok, p, False)
            f.write(
                json.dumps(
                    {"messages": [{"role": "user", "content": p}], "chosen": chosen, "rejected": rejected}
                )
                + "\n"
            )
    val = _val_dataset(tmp_path / "val_data")
    reg = tmp_path / "reg"
    for run in (champion, challenger):
        assert cli("registry", "register", "--registry", reg, "--run", run)[0] == 0
    code, out, err = cli(
        "registry", "promote", "--registry", reg, "--val-data", val, "--pairs", pairs, "--tolerance", "100"
    )  # random models: only the feedback check decides here
    assert code == 0, out + err
    decision = read_registry_file(reg)["decisions"][-1]
    assert decision["promoted"] and decision["numbers"]["source"].startswith("measured now")
    ch, cp = decision["numbers"]["champion"], decision["numbers"]["challenger"]
    assert cp["preference_accuracy"] == 1.0 and ch["preference_accuracy"] < 1.0
    assert cp["preference_pairs"] == len(PROMPTS)
    # the bpb in the decision is the evaluation of each model on that very dataset
    assert ch["val_bpb"] == pytest.approx(evaluate_dataset(m0, tok, val, "val").bpb, rel=1e-5)
    assert cp["val_bpb"] == pytest.approx(evaluate_dataset(m1, tok, val, "val").bpb, rel=1e-5)
    # back the other way, measured the same way: v1 loses on the users' pairs, so it is refused
    r = Registry(reg)
    d = r.promote("v1", gate=make_gate(GatePolicy(bpb_tolerance=100), measure_on(val, pairs), "measured"))
    r.close()
    assert not d.promoted and "not better" in d.reasons[1]
    assert read_registry_file(reg)["aliases"]["champion"] == "v2"


def test_bad_pairs_are_data_errors(tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}], "chosen": "a"}\n')
    with pytest.raises(DataError, match="p.jsonl:1: rejected"):
        read_pairs(bad)
    bad.write_text("not json\n")
    with pytest.raises(DataError, match=":1: not JSON"):
        read_pairs(bad)
    good = tmp_path / "g.jsonl"
    good.write_text('{"prompt": "hi", "chosen": "a", "rejected": "b"}\n')
    assert read_pairs(good)[0]["messages"] == [{"role": "user", "content": "hi"}]
