"""Learning-rate schedules as pure functions of training progress.

A schedule maps progress p in [0, 1] (the fraction of the run done) to a multiplier of each
parameter group's base learning rate. Driving schedules by *progress* rather than by step lets
the same code serve a step budget (p = step / max_steps) and a wall-clock budget
(p = elapsed / budget): the run warms up, decays and ends on time either way.

    cosine:  warmup linearly 0 -> 1, then cosine from 1 down to min_lr_ratio
             1 ┤  ╭──╮_
               │ ╱     ‾╲_
               │╱         ‾──╮        (ends at min_lr_ratio)
    wsd:     warmup-stable-decay: warmup, hold 1, then decay linearly to min_lr_ratio over the
             last `decay` fraction of the run (nanochat, MiniCPM). Good for runs whose length
             is not known in advance: the stable phase can be cut short at any point.
             1 ┤  ╭──────────╮
               │ ╱            ╲
               │╱              ╲__
    constant: warmup, then 1.
"""

from __future__ import annotations

import math

SCHEDULES = ("cosine", "wsd", "constant")


def warmup_fraction(warmup: float, max_steps: int | None) -> float:
    """`warmup` below 1 is already a fraction of the run; 1 or more counts steps out of max_steps."""
    if warmup < 1:
        return max(0.0, float(warmup))
    if not max_steps:
        raise ValueError("warmup given in steps needs max_steps")
    return min(1.0, warmup / max_steps)


def lr_multiplier(
    progress: float,
    schedule: str = "cosine",
    warmup: float = 0.05,
    min_lr_ratio: float = 0.1,
    decay: float = 0.3,
) -> float:
    """The learning-rate multiplier at `progress` (clamped to [0, 1]).

    warmup and decay are fractions of the run; min_lr_ratio is where the schedule ends.
    The first step (progress 0) gets a small non-zero rate, so no step is wasted.
    """
    p = min(max(progress, 0.0), 1.0)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    if warmup > 0 and p < warmup:
        return max(p / warmup, 0.01)
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        span = max(1.0 - warmup, 1e-12)
        t = (p - warmup) / span
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    # wsd
    decay_start = 1.0 - decay
    if p <= decay_start or decay <= 0:
        return 1.0
    t = (p - decay_start) / decay
    return 1.0 - (1.0 - min_lr_ratio) * t
