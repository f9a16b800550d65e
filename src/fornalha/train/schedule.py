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


class RunClock:
    """How far the run is, whether an evaluation or a checkpoint is due, and whether it is over.

    One object for both run modes, so the training loop never asks which one it is in:

        step count   progress = step / max_steps; evaluate every eval_interval steps, checkpoint
                     every checkpoint_interval (default: eval_interval); over at max_steps
        time budget  progress = elapsed / budget (or step / max_steps, whichever is further:
                     max_steps stays an upper bound); evaluate evals_per_budget times, evenly in
                     time, and checkpoint at each; over when the time is up or at max_steps

    `state` is the run's TrainState (its step, elapsed_s from earlier sessions, next_eval_s);
    `agree(flag)` makes a time-based decision the same on every process (rank 0's, under torchrun).
    """

    def __init__(self, t, state, agree=lambda flag: flag) -> None:
        import time

        self.t, self.state, self.agree, self._now = t, state, agree, time.perf_counter
        self.budget_s = t.time_budget_minutes * 60 if t.time_budget_minutes else None
        self.session_start = self._now()
        self.ended_by_time = False
        if self.budget_s is not None and state.step == 0 and not state.next_eval_s:
            state.next_eval_s = self.budget_s / t.evals_per_budget

    def elapsed(self) -> float:
        """Seconds of training in this run, earlier sessions (before a resume) included."""
        return self.state.elapsed_s + self._now() - self.session_start

    def lr_multiplier(self) -> float:
        """The schedule's multiplier for the step about to run."""
        t, step = self.t, self.state.step
        by_steps = (step + 1) / t.max_steps
        if self.budget_s is None:
            return lr_multiplier(
                by_steps, t.schedule, warmup_fraction(t.warmup, t.max_steps), t.min_lr_ratio, t.decay
            )
        progress = max(self.elapsed() / self.budget_s, by_steps)
        if t.warmup < 1:  # a fraction of the run's time
            return lr_multiplier(progress, t.schedule, t.warmup, t.min_lr_ratio, t.decay)
        # warmup in steps under a time budget: a linear ramp over the first `warmup` steps
        return lr_multiplier(progress, t.schedule, 0.0, t.min_lr_ratio, t.decay) * min(
            1.0, (step + 1) / t.warmup
        )

    def over(self) -> bool:
        """max_steps reached, or (time budget) the time is up. Call once per step."""
        if self.state.step >= self.t.max_steps:
            return True
        if self.budget_s is not None and self.agree(self.elapsed() >= self.budget_s):
            self.ended_by_time = True
            return True
        return False

    def eval_due(self) -> bool:
        """Every eval_interval steps, or (time budget) at the next evenly spaced moment. Call once per step."""
        if self.budget_s is None:
            return self.state.step % self.t.eval_interval == 0
        now = self.elapsed()
        if self.agree(now >= self.state.next_eval_s):
            # the next slot after now: slots missed while a slow step (or the evaluation itself) ran
            # are skipped, not caught up one evaluation per step
            interval = self.budget_s / self.t.evals_per_budget
            behind = max(0.0, now - self.state.next_eval_s)
            self.state.next_eval_s += interval * (1 + int(behind // interval))
            return True
        return False

    def checkpoint_due(self, evaluated: bool) -> bool:
        if self.budget_s is not None:
            return evaluated
        return self.state.step % (self.t.checkpoint_interval or self.t.eval_interval) == 0

    def end_status(self) -> str:
        return "time_budget" if self.ended_by_time and self.state.step < self.t.max_steps else "completed"
