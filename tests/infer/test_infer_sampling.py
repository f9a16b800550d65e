"""The logit processors and the batched sampler do what their names say."""

from __future__ import annotations

import math

import pytest
import torch

from fornalha.errors import ConfigError
from fornalha.infer.sampling import (
    SamplingParams,
    SlotSampler,
    apply_penalties,
    filter_logits,
    sample_logits,
    sort_descending,
)

# probabilities 0.5, 0.25, 0.15, 0.07, 0.03 for tokens 3, 0, 4, 1, 2
PROBS = torch.tensor([0.25, 0.07, 0.03, 0.5, 0.15])
LOGITS = PROBS.log()[None]


def kept(top_k=0, top_p=1.0, min_p=0.0) -> set[int]:
    s, ids = filter_logits(LOGITS, torch.tensor([top_k]), torch.tensor([top_p]), torch.tensor([min_p]))
    return {int(i) for i, v in zip(ids[0], s[0]) if v > float("-inf")}


def test_top_k_top_p_min_p_keep_the_right_tokens():
    assert kept() == {0, 1, 2, 3, 4}
    assert kept(top_k=1) == {3}
    assert kept(top_k=3) == {3, 0, 4}
    assert kept(top_p=0.5) == {3}  # the best token alone holds 0.5
    assert kept(top_p=0.6) == {3, 0}  # 0.5 < 0.6 <= 0.75
    assert kept(top_p=0.89) == {3, 0, 4}  # 0.75 < 0.89 <= 0.9
    assert kept(top_p=0.92) == {3, 0, 4, 1}
    assert kept(min_p=0.35) == {3, 0}  # at least 0.35 * 0.5 = 0.175
    assert kept(min_p=0.2) == {3, 0, 4}  # at least 0.1
    assert kept(top_k=2, top_p=0.4) == {3}


def test_sampling_frequencies_follow_the_filtered_distribution():
    n = 20000
    g = torch.Generator().manual_seed(0)
    u = torch.rand(n, generator=g)
    logits = LOGITS.expand(n, -1)
    ones = torch.ones(n)
    toks = sample_logits(
        logits, ones, u, torch.zeros(n, dtype=torch.long), torch.full((n,), 0.9), torch.zeros(n)
    )
    freq = torch.bincount(toks, minlength=5).float() / n
    expected = torch.tensor([0.25, 0.0, 0.0, 0.5, 0.15]) / 0.9
    assert torch.allclose(freq, expected, atol=0.015), freq
    # temperature 2 flattens: p ∝ sqrt(p)
    toks = sample_logits(logits, 2 * ones, u)
    freq = torch.bincount(toks, minlength=5).float() / n
    flat = PROBS.sqrt() / PROBS.sqrt().sum()
    assert torch.allclose(freq, flat, atol=0.015), freq


def test_temperature_zero_is_argmax_and_rows_have_their_own_parameters():
    logits = torch.randn(4, 50)
    u = torch.rand(4)
    temp = torch.tensor([0.0, 1.0, 0.0, 0.7])
    top_k = torch.tensor([0, 1, 0, 5])
    out = sample_logits(logits, temp, u, top_k=top_k)
    assert out[0] == logits[0].argmax() and out[2] == logits[2].argmax()
    assert out[1] == logits[1].argmax()  # top-k 1 is greedy too
    assert out[3] in logits[3].topk(5).indices
    for r in range(4):  # a row alone gives the same token as in the batch
        alone = sample_logits(logits[r : r + 1], temp[r : r + 1], u[r : r + 1], top_k=top_k[r : r + 1])
        assert alone.item() == out[r].item()


def test_penalties():
    logits = torch.tensor([[2.0, -2.0, 1.0, 0.5]])
    seen = torch.tensor([[True, True, False, False]])
    counts = torch.tensor([[0.0, 0.0, 3.0, 0.0]])
    out = apply_penalties(logits, seen, counts, torch.tensor([2.0]), torch.tensor([0.0]), torch.tensor([0.0]))
    assert out.tolist() == [[1.0, -4.0, 1.0, 0.5]]  # positive halved, negative doubled, unseen unchanged
    out = apply_penalties(
        logits, seen, counts, torch.tensor([1.0]), torch.tensor([0.5]), torch.tensor([0.25])
    )
    assert out.tolist() == [[2.0, -2.0, 1.0 - 1.5 - 0.25, 0.5]]


def test_slot_sampler_penalty_state_and_logprobs():
    s = SlotSampler(2, 5)
    s.assign(0, SamplingParams(temperature=0, repetition_penalty=100.0, logprobs=2), [3], None)
    s.assign(1, SamplingParams(temperature=0, frequency_penalty=10.0), [], None)
    logits = LOGITS.expand(2, -1).clone()
    out = s.sample(logits)
    assert out.tokens.tolist() == [0, 3]  # row 0 saw token 3 in its prompt: penalised away
    assert out.logprobs[0].item() == pytest.approx(math.log(0.25), abs=1e-5)
    assert out.top_ids[0].tolist() == [3, 0]
    s.observe(out.tokens)
    assert s.sample(logits).tokens.tolist() == [4, 0]  # row 1 generated 3 once: -10 on it


def test_seeded_generators_reproduce():
    def draws(seed):
        s = SlotSampler(1, 5)
        s.assign(0, SamplingParams(temperature=1.0), [], torch.Generator().manual_seed(seed))
        return [int(s.sample(LOGITS).tokens[0]) for _ in range(30)]

    assert draws(1) == draws(1)
    assert draws(1) != draws(2)


def test_params_validation():
    with pytest.raises(ConfigError):
        SamplingParams(top_p=0)
    with pytest.raises(ConfigError):
        SamplingParams(temperature=-1)
    with pytest.raises(ConfigError, match="unknown"):
        SamplingParams.from_dict({"temprature": 1})
    assert SamplingParams(stop="x").stop == ["x"]


def test_rows_with_and_without_filters_draw_alike_in_any_company():
    """A row without a filter skips the sort (vocabulary order) and one with a filter sorts; which
    path a row takes is its own business: alone or beside any neighbour, the same token for the
    same u, and the unsorted path still follows the distribution."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 40, generator=g)
    u = torch.rand(6, generator=g)
    temp = torch.tensor([1.0, 0.8, 1.0, 0.0, 1.2, 1.0])
    top_k = torch.tensor([0, 5, 0, 0, 0, 3])
    top_p = torch.tensor([1.0, 1.0, 0.9, 1.0, 1.0, 1.0])
    min_p = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.1])
    batch = sample_logits(logits, temp, u, top_k, top_p, min_p)
    for r in range(6):
        s = slice(r, r + 1)
        assert sample_logits(logits[s], temp[s], u[s], top_k[s], top_p[s], min_p[s]).item() == batch[r].item()
    for r in (0, 4):  # unfiltered rows: vocabulary order, not probability order
        p = (logits[r] / temp[r]).softmax(-1).cumsum(-1)
        assert batch[r].item() == int((p > u[r] * p[-1]).nonzero()[0])
    n = 20000
    u = torch.rand(n, generator=g)
    toks = sample_logits(LOGITS.expand(n, -1), torch.ones(n), u)
    freq = torch.bincount(toks, minlength=5).float() / n
    assert torch.allclose(freq, PROBS, atol=0.015), freq


def test_sort_descending_matches_torch_sort():
    """The NumPy sort the CPU path uses gives torch.sort's order (no ties in random floats), row by
    row the same alone as in a batch, and keeps -inf (a masked token) last."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 300, generator=g)
    logits[1, ::7] = float("-inf")
    values, ids = sort_descending(logits)
    want_values, want_ids = logits.sort(dim=-1, descending=True)
    assert torch.equal(values, want_values)
    assert torch.equal(ids[[0, 2, 3, 4]], want_ids[[0, 2, 3, 4]])  # row 1's -inf ties may differ
    assert torch.equal(logits.gather(-1, ids), values) and ids.dtype == torch.long
    assert torch.equal(sort_descending(logits[3:4])[1][0], ids[3])
