"""Speculative decoding is greedy-exact: the output equals the target model's own greedy output."""

from __future__ import annotations

import pytest
from infer_helpers import random_model
from test_infer_engine import reference_greedy

from fornalha.infer.speculative import speculative_generate

PROMPT = [0, 20, 30, 40, 50, 60]


@pytest.mark.parametrize("k", [1, 3, 5])
def test_output_equals_target_greedy_with_a_different_draft(k):
    target = random_model(seed=0)
    draft = random_model(seed=1, n_layer=1, n_embd=16, n_head=2, n_kv_head=1)
    out, stats = speculative_generate(target, draft, PROMPT, 20, k=k)
    assert out == reference_greedy(target, PROMPT, 20)
    assert stats.rounds >= 20 // (k + 1)


def test_perfect_draft_accepts_everything_and_context_limit():
    target = random_model(seed=0)
    out, stats = speculative_generate(target, target, PROMPT, 21, k=4)
    assert out == reference_greedy(target, PROMPT, 21)
    assert stats.acceptance_rate == 1.0 and stats.rounds == 5  # 4 accepted + 1 bonus per round, then 1
    # the context (block_size 64) ends generation like the engine: prompt + output = 65 tokens
    out, _ = speculative_generate(target, target, PROMPT, 500, k=4)
    assert len(PROMPT) + len(out) == 65
    assert out == reference_greedy(target, PROMPT, 59)


def test_stop_token():
    target = random_model(seed=0)
    free = reference_greedy(target, PROMPT, 12)
    out, _ = speculative_generate(target, target, PROMPT, 12, k=3, stop_ids={free[7]})
    assert out == free[: free.index(free[7])]
