"""Multiple-choice scoring: hand-set logits, a tiny trained model, accuracy numbers, file errors."""

from __future__ import annotations

import json
import math

import pytest
import torch
from evalhelpers import BigramModel, ByteTokenizer, tiny_gpt, train_on

from fornalha.errors import DataError
from fornalha.evaluate.multiple_choice import (
    binomial_stderr,
    encode_pair,
    evaluate_blimp,
    evaluate_hellaswag,
    load_blimp,
    load_hellaswag,
    score_continuations,
    spread,
)
from fornalha.tokenizer.char import CharTokenizer

TOK = ByteTokenizer()


def t(ch: str) -> int:
    return TOK.encode(ch)[0]


def preferring_model() -> BigramModel:
    """After a space, "x" is likelier than "y"; but once at "y", another "y" is almost certain.
    So " x" wins on summed log-prob and " yyyy" on log-prob per character."""
    m = BigramModel(TOK.vocab_size)
    with torch.no_grad():
        m.table[t(" "), t("x")] = 3.0
        m.table[t(" "), t("y")] = 2.0
        m.table[t("y"), t("y")] = 8.0
        m.table[t("a"), t("b")] = 6.0  # "ab" is much likelier than "ba"
    return m


def test_score_continuations_is_the_sum_of_log_probs():
    m = preferring_model()
    ctx, cont = encode_pair(TOK, "a", " yyyy")
    assert ctx == [TOK.bos_id, t("a")] and cont == TOK.encode(" yyyy")
    (score,) = score_continuations(m, [(ctx, cont)])
    expected = m.logprob(t("a"), t(" ")) + m.logprob(t(" "), t("y")) + 3 * m.logprob(t("y"), t("y"))
    assert score == pytest.approx(expected, rel=1e-6)


def test_hellaswag_acc_and_acc_norm_pick_what_the_model_prefers():
    m = preferring_model()
    examples = [
        {"ctx": "a", "endings": ["x", "yyyy", "zz", "q"], "label": 0},  # acc right, acc_norm wrong
        {"ctx": "b", "endings": ["q", "yyyy", "x", "zz"], "label": 1},  # acc wrong, acc_norm right
        {"ctx": "c", "endings": ["zz", "q", "x", "yyyy"], "label": 2},  # acc right, acc_norm wrong
    ]
    r = evaluate_hellaswag(m, TOK, examples, batch_size=5)
    assert (r.n, r.correct) == (3, 2)
    assert r.accuracy == pytest.approx(2 / 3)
    assert r.acc_norm == pytest.approx(1 / 3)
    assert r.chance == pytest.approx(0.25)
    assert r.stderr == pytest.approx(math.sqrt((2 / 3) * (1 / 3) / 3))


def test_acc_norm_divides_by_the_ending_alone_as_lm_eval_does():
    """lm-eval: acc_norm = argmax(loglikelihood / len(choice)), choice without the " " delimiter.
    Hand-computed: log-probs -2.0 ("a", 1 char) and -3.1 ("bb", 2 chars) give -2.0 and -1.55, so
    choice 1 wins; dividing by len(" " + ending) (-1.0 vs -1.0333) would have picked choice 0."""
    from fornalha.evaluate.multiple_choice import acc_norm_scores

    normed = acc_norm_scores([-2.0, -3.1], ["a", "bb"])
    assert normed == pytest.approx([-2.0, -1.55])
    assert max(range(2), key=lambda j: normed[j]) == 1
    assert acc_norm_scores([-4.0], ["é!"]) == pytest.approx([-2.0])  # characters, not UTF-8 bytes


def test_blimp_good_sentence_needs_the_higher_log_prob():
    m = preferring_model()
    examples = [
        {"sentence_good": "ab", "sentence_bad": "ba", "linguistics_term": "order"},
        {"sentence_good": "ba", "sentence_bad": "ab", "linguistics_term": "order"},
        {"sentence_good": "xab", "sentence_bad": "xba", "linguistics_term": "other"},
        {"sentence_good": "q", "sentence_bad": "q", "linguistics_term": "other"},  # a tie is not a win
    ]
    r = evaluate_blimp(m, TOK, examples)
    assert (r.n, r.correct, r.chance) == (4, 2, 0.5)
    assert r.groups == {"order": {"n": 2, "accuracy": 0.5}, "other": {"n": 2, "accuracy": 0.5}}
    assert r.stderr == pytest.approx(0.25)


def test_batching_padding_and_truncation_do_not_change_scores():
    # A real GPT: padding rows to the batch's longest must not change any row's score, and a
    # request longer than the context keeps its last block_size tokens.
    model = tiny_gpt(TOK.vocab_size, block_size=16)
    texts = [("The cat", " sat."), ("A", " b"), ("Some much longer context here", " and its end")]
    reqs = [encode_pair(TOK, c, e) for c, e in texts]
    one = score_continuations(model, reqs, batch_size=1)
    many = score_continuations(model, reqs, batch_size=8)
    assert many == pytest.approx(one, rel=1e-5, abs=1e-5)
    ctx, cont = reqs[2]
    full = ctx + cont
    x = torch.tensor([full[:-1][-16:]])
    with torch.no_grad():
        logits, _ = model(x)
    lp = torch.log_softmax(logits[0].double(), -1)
    y = full[1:][-16:]
    expected = sum(float(lp[i, y[i]]) for i in range(16 - len(cont), 16))
    assert one[2] == pytest.approx(expected, rel=1e-5)


def test_tiny_trained_model_prefers_its_training_text():
    text = "the cat sat on the mat. " * 40
    tok = CharTokenizer(text)
    model = tiny_gpt(tok.vocab_size, block_size=32)
    pairs = [
        {"sentence_good": "the cat sat on the mat.", "sentence_bad": ".tam eht no tas tac eht"},
        {"sentence_good": "the mat.", "sentence_bad": "teh mta."},
        {"sentence_good": "on the cat", "sentence_bad": "no hte act"},
    ]
    train_on(model, [tok.bos_id, *tok.encode(text)], steps=20, lr=1e-2)
    assert evaluate_blimp(model, tok, pairs).accuracy == 1.0
    story = [{"ctx": "the cat sat on the", "endings": ["tam.", "mat.", "cat sat", "atm."], "label": 1}]
    assert evaluate_hellaswag(model, tok, story).accuracy == 1.0
    scores = score_continuations(
        model, [encode_pair(tok, story[0]["ctx"], " " + e) for e in story[0]["endings"]]
    )
    assert scores[1] > max(scores[0], scores[2], scores[3]) + 2.0  # by a clear margin (nats)


def test_stderr_and_spread():
    assert binomial_stderr(0.5, 100) == pytest.approx(0.05)
    assert binomial_stderr(1.0, 10) == 0.0
    assert spread(list(range(10)), 5) == [0, 2, 4, 6, 8]
    assert spread(list(range(3)), None) == [0, 1, 2]
    assert spread(list(range(3)), 10) == [0, 1, 2]


def test_shared_files_load_and_limit_spreads_over_phenomena(eval_data):
    hs = load_hellaswag(eval_data / "hellaswag_val_idxmod10_0-2.jsonl", limit=10)
    assert len(hs) == 10 and all(len(e["endings"]) == 4 and 0 <= e["label"] < 4 for e in hs)
    blimp = load_blimp(eval_data / "blimp_pairs_000_099.jsonl", limit=67)
    assert len(blimp) == 67
    assert len({e["UID"] for e in blimp}) == 67  # one pair from each of the 67 phenomena


@pytest.fixture
def eval_data(shared_data):
    return shared_data / "eval"


def test_malformed_files_name_the_line(tmp_path):
    good = {"ctx": "a", "endings": ["b", "c", "d", "e"], "label": 0}
    path = tmp_path / "hs.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + "{not json\n")
    with pytest.raises(DataError, match="line 3: not valid JSON"):
        load_hellaswag(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "label": 4}) + "\n")
    with pytest.raises(DataError, match='line 2: "label"'):
        load_hellaswag(path)
    path.write_text(json.dumps({"ctx": "a", "endings": "b"}) + "\n")
    with pytest.raises(DataError, match='line 1: "endings"'):
        load_hellaswag(path)
    path.write_text(json.dumps({"sentence_good": "a"}) + "\n")
    with pytest.raises(DataError, match="line 1"):
        load_blimp(path)
    path.write_text("[1, 2]\n")
    with pytest.raises(DataError, match="expected a JSON object"):
        load_blimp(path)
    with pytest.raises(DataError, match="does not exist"):
        load_blimp(tmp_path / "missing.jsonl")
