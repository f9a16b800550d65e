"""Validation loss, perplexity and bits per byte: hand computations and direct re-computations."""

from __future__ import annotations

import math

import pytest
import torch
from evalhelpers import ByteTokenizer, direct_nll, tiny_gpt

from fornalha.data.dataset import write_dataset
from fornalha.errors import DataError
from fornalha.evaluate.loss import (
    bits_per_byte,
    evaluate_batches,
    evaluate_dataset,
    evaluate_texts,
    evaluate_token_stream,
    iter_windows,
)
from fornalha.tokenizer.char import CharTokenizer


def uniform_gpt(vocab_size: int):
    """A GPT whose logits are all zero (tied embedding zeroed): every token has probability 1/V."""
    model = tiny_gpt(vocab_size)
    with torch.no_grad():
        model.wte.weight.zero_()
    return model


def test_bits_per_byte_by_hand():
    # A uniform model over V tokens pays ln V nats for every token. Char tokens of different byte
    # lengths ("é" is 2 bytes) make bpb differ from log2 V; the <|bos|> target adds nats, no bytes.
    tok = CharTokenizer("héa")
    V = tok.vocab_size
    model = uniform_gpt(V)
    docs = ["héé", "aé"]  # stream: bos h é é bos a é -> 6 targets: h é é bos a é
    r = evaluate_texts(model, tok, docs)
    assert r.tokens == 6
    assert r.loss == pytest.approx(math.log(V), rel=1e-6)
    assert r.ppl == pytest.approx(V, rel=1e-5)
    assert r.bytes == 1 + 2 + 2 + 1 + 2  # the bos target has no bytes
    assert r.bpb == pytest.approx(6 * math.log(V) / (math.log(2) * 8), rel=1e-6)
    assert r.nats == pytest.approx(6 * math.log(V), rel=1e-6)
    assert bits_per_byte(8 * math.log(2), 8) == pytest.approx(1.0)


def test_loss_equals_direct_mean_over_tokens():
    tok = ByteTokenizer()
    model = tiny_gpt(tok.vocab_size, block_size=64)
    docs = ["the cat sat", "on the mat", "olá"]
    ids = [t for d in docs for t in (tok.bos_id, *tok.encode(d))]
    assert len(ids) <= 64
    nll = direct_nll(model, ids)
    targets = torch.tensor(ids[1:])
    has_bytes = targets >= 7
    r = evaluate_texts(model, tok, docs)
    assert r.tokens == len(ids) - 1
    assert r.loss == pytest.approx(float(nll.mean()), rel=1e-5)
    assert r.bytes == int(has_bytes.sum())
    assert r.bpb == pytest.approx(float(nll.sum()) / (math.log(2) * r.bytes), rel=1e-5)


@pytest.mark.parametrize(
    "n,seq_len,stride", [(50, 8, 8), (50, 8, 3), (9, 8, 4), (5, 8, 2), (33, 8, 1), (17, 4, 4)]
)
def test_windows_score_every_token_once(n, seq_len, stride):
    stream = list(range(1000, 1000 + n))
    chunks = [stream[i : i + 7] for i in range(0, n, 7)]  # arbitrary chunking must not matter
    scored = []
    for x, y in iter_windows(chunks, seq_len, stride):
        assert 1 <= len(x) <= seq_len and len(x) == len(y)
        for i, t in enumerate(y):
            if t != -1:
                assert t == x[i] + 1  # aligned: the target is the token after input i
                scored.append(t)
    assert scored == stream[1:]


def test_strided_windows_match_direct_computation_with_context():
    # seq_len 8, stride 4: each window scores its last 4 targets, seeing 4 tokens of earlier context.
    tok = ByteTokenizer()
    model = tiny_gpt(tok.vocab_size, block_size=8)
    ids = [tok.bos_id, *tok.encode("abcdefghijklmnopqrst")]  # 21 tokens, 20 targets
    expected = list(direct_nll(model, ids[:9]))  # window 1: targets 1..8
    for start in range(4, len(ids) - 1, 4):
        window = ids[start : start + 9]
        nll = direct_nll(model, window)
        expected += list(nll[4:])  # the first 4 targets were already scored
    expected = torch.stack(expected)
    assert len(expected) == 20
    r = evaluate_token_stream(model, [ids], tok.token_bytes(), stride=4, batch_size=3)
    assert r.tokens == 20
    assert r.loss == pytest.approx(float(expected.mean()), rel=1e-5)
    r8 = evaluate_token_stream(model, [ids], tok.token_bytes())  # stride = seq_len: less context
    assert r8.tokens == 20 and r8.loss != pytest.approx(r.loss, rel=1e-9)


def test_max_tokens_scores_exactly_that_many():
    tok = ByteTokenizer()
    model = tiny_gpt(tok.vocab_size, block_size=16)
    ids = [tok.bos_id, *tok.encode("hello world, hello fornalha")]
    r = evaluate_token_stream(model, [ids], tok.token_bytes(), max_tokens=10)
    assert r.tokens == 10
    assert r.loss == pytest.approx(float(direct_nll(model, ids[:11]).mean()), rel=1e-5)


def test_batches_match_stream_and_respect_ignore_and_limit():
    tok = ByteTokenizer()
    model = tiny_gpt(tok.vocab_size, block_size=8)
    ids = torch.tensor([tok.bos_id, *tok.encode("abcdefghijklmnopqrstuvwxyz0123456")])  # 34 = 4*8 + 2
    x = ids[:32].view(4, 8)
    y = ids[1:33].view(4, 8)
    batches = [(x[:2], y[:2]), (x[2:], y[2:])]
    rb = evaluate_batches(model, batches, tok.token_bytes())
    rs = evaluate_token_stream(model, [ids[:33].tolist()], tok.token_bytes())
    assert rb.tokens == rs.tokens == 32
    assert rb.loss == pytest.approx(rs.loss, rel=1e-6)
    assert rb.bpb == pytest.approx(rs.bpb, rel=1e-6)

    y_masked = y.clone()
    y_masked[:, :4] = -1  # loss masks are ignored
    r = evaluate_batches(model, [(x, y_masked)], tok.token_bytes())
    assert r.tokens == 16
    r = evaluate_batches(model, batches, tok.token_bytes(), max_tokens=13)
    assert r.tokens == 13
    assert evaluate_batches(model, batches).bpb is None  # no byte lengths: no bpb


def test_dataset_folder_loss_and_determinism(tmp_path):
    val_docs = ["Era uma vez um gato.", "The quick brown fox jumps.", "ão ção"]
    ds = write_dataset(tmp_path / "ds", {"train": ["x"], "val": val_docs})
    tok = ByteTokenizer()
    model = tiny_gpt(tok.vocab_size, block_size=128)
    ids = [t for d in val_docs for t in (tok.bos_id, *tok.encode(d))]
    r1 = evaluate_dataset(model, tok, ds, "val")
    r2 = evaluate_dataset(model, tok, ds, "val", batch_size=1)
    assert r1.tokens == len(ids) - 1
    assert r1.loss == pytest.approx(float(direct_nll(model, ids).mean()), rel=1e-5)
    assert r1.bytes == sum(len(d.encode()) for d in val_docs)
    assert r1.to_dict()["bytes_per_token"] == pytest.approx(r1.bytes / r1.tokens)
    assert r1.split == "val" and r1.loss == pytest.approx(r2.loss, rel=1e-9)
    with pytest.raises(DataError, match="no 'test' split"):
        evaluate_dataset(model, tok, ds, "test")
    with pytest.raises(DataError, match="not found"):
        evaluate_dataset(model, tok, tmp_path / "missing")


def test_shards_folder_scores_the_same_windows(tmp_path):
    from fornalha.tokenizer.encode_dataset import tokenize_dataset

    docs = ["the cat sat on the mat", "um gato leu um livro", "and then it slept"]
    ds = write_dataset(tmp_path / "ds", {"train": docs, "val": docs})
    tok = CharTokenizer("".join(docs))
    tok.save(tmp_path / "tok")
    tokenize_dataset(ds, tmp_path / "tok", tmp_path / "shards", progress=False)
    model = tiny_gpt(tok.vocab_size, block_size=16)
    from_shards = evaluate_dataset(model, tok, tmp_path / "shards", "val")
    n_ids = sum(len(d) + 1 for d in docs)  # the loader keeps whole windows of 16 targets only
    assert from_shards.tokens == (n_ids - 1) // 16 * 16
    from_text = evaluate_dataset(model, tok, ds, "val", max_tokens=from_shards.tokens)
    assert from_shards.loss == pytest.approx(from_text.loss, rel=1e-6)
    assert from_shards.bpb == pytest.approx(from_text.bpb, rel=1e-6)
