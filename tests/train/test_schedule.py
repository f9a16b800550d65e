"""Learning-rate schedules: warmup, cosine and warmup-stable-decay as functions of progress."""

from __future__ import annotations

import pytest

from fornalha.train.schedule import lr_multiplier, warmup_fraction


def test_warmup_rises_linearly():
    vals = [lr_multiplier(p, "cosine", warmup=0.1) for p in (0.02, 0.05, 0.1)]
    assert vals == pytest.approx([0.2, 0.5, 1.0])
    assert lr_multiplier(0.0, "cosine", warmup=0.1) > 0  # the first step still learns


def test_cosine_ends_at_min_ratio_and_is_monotone_after_warmup():
    xs = [0.1 + 0.9 * i / 50 for i in range(51)]
    ys = [lr_multiplier(x, "cosine", warmup=0.1, min_lr_ratio=0.1) for x in xs]
    assert ys[0] == pytest.approx(1.0) and ys[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(ys, ys[1:]))
    assert lr_multiplier(0.55, "cosine", warmup=0.1, min_lr_ratio=0.0) == pytest.approx(0.5)


def test_wsd_holds_then_decays_linearly():
    f = lambda p: lr_multiplier(p, "wsd", warmup=0.1, decay=0.2, min_lr_ratio=0.0)  # noqa: E731
    assert f(0.3) == f(0.8) == 1.0
    assert f(0.9) == pytest.approx(0.5) and f(1.0) == pytest.approx(0.0)
    assert f(1.5) == f(1.0)  # clamped


def test_constant_and_errors():
    assert lr_multiplier(0.7, "constant", warmup=0.1) == 1.0
    with pytest.raises(ValueError):
        lr_multiplier(0.5, "linear")
    assert warmup_fraction(0.05, None) == 0.05 and warmup_fraction(100, 1000) == 0.1


def test_run_clock_skips_missed_evaluation_slots_instead_of_evaluating_every_step():
    """Under a time budget, a step slower than the evaluation interval gives ONE evaluation, then the
    next slot after now (found by the SFT run on a loaded machine: it evaluated after every step)."""
    from types import SimpleNamespace

    from fornalha.train.schedule import RunClock

    t = SimpleNamespace(time_budget_minutes=1.0, evals_per_budget=6, max_steps=10**6, eval_interval=10)
    state = SimpleNamespace(step=0, elapsed_s=0.0, next_eval_s=0.0)
    clock = RunClock(t, state)
    assert state.next_eval_s == 10.0  # 60 s / 6
    now = [0.0]
    clock.elapsed = lambda: now[0]
    due = []
    for seconds in (5, 9, 35, 36, 37, 39, 41, 45):  # one slow step jumps from 9 s to 35 s
        now[0] = seconds
        due.append(clock.eval_due())
    assert due == [False, False, True, False, False, False, True, False]
    assert state.next_eval_s == 50.0
