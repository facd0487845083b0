"""Learning-rate schedules and fitting the number of steps to a wall-clock budget.

Pre-training (paper Table 4: warm-up 1 %, cosine to min 5e-5): linear warm-up over `warmup_steps` =
max(`warmup_min_steps`, ceil(`warmup_frac` * total)) steps (HF's `get_warmup_steps` rounding, SlamKit's
max(100 steps, 1 %) rule from `cli/train.py`), then cosine from `lr` to `min_lr`, reaching `min_lr` exactly
at the last step (index total - 1).

The total is not known in advance. The first `untimed_steps` steps (compilation, allocator) are not timed;
the next `calibration_steps` are, and the total is fitted to the remaining budget (`fit_total_steps`); the
warm-up length is fixed at that moment. Until then the LR is the smallest any fit could give at that step
(`prefit_lr`): 0 when the total is uncapped (the warm-up of an unknown total can be arbitrarily long; Adam's
moments still see those gradients, the weights do not move), else the ramp of the `max_steps` cap. So the LR
never jumps above the fitted ramp, and after the fit it is one warm-up then one cosine.

With `fixed_total` (`train.schedule_by=steps`) none of this happens: the schedule is warm-up + cosine over
exactly `max_steps` from the first step, and the clock only stops a run that would overrun the budget, so the
LR at every step, and with it the trained model, is the same on a fast, slow or busy machine.

After calibration the total is re-fitted every `calibration_steps` steps from the median of the recent step
times, when it moves by more than `refit_tolerance` (a noisy neighbour during calibration, checkpoint
saves, a slower phase). The cosine stays continuous: from the re-fit step on, its progress continues from
where it was and reaches 1 (min_lr) on the new last step. Re-fits wait for the end of the warm-up. The loop
also stops when the next step would overrun the budget, so the budget is never exceeded by more than a step.

Everything the schedule decides from is in `state_dict()` (fitted total, warm-up, measured step time,
re-fit anchor, the clock times it is still averaging), and checkpoints carry it: a resumed run does not
re-calibrate, so its LR at every step equals the uninterrupted run's, given the same budget clock.

DPO: linear warm-up then inverse-sqrt decay (as HF's `get_inverse_sqrt_schedule`, paper Table 5), or
constant after warm-up (what SlamKit's `cosine_with_min_lr` with min_lr = lr amounts to).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

STATE_VERSION = 1


def warmup_steps_for(total_steps: int, warmup_frac: float, min_steps: int = 0) -> int:
    """max(min_steps, ceil(warmup_frac * total)), but always leaving the last step to the decay."""
    steps = max(int(min_steps), math.ceil(warmup_frac * total_steps - 1e-9))
    return max(0, min(steps, total_steps - 1))


def _cosine(progress: float, peak_lr: float, min_lr: float) -> float:
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, max(0.0, progress))))


def warmup_cosine_lr(step: int, total_steps: int, warmup_steps: int, peak_lr: float, min_lr: float) -> float:
    """LR of optimiser step `step` (0-based): ramp peak*(step+1)/warmup, then cosine to min_lr at total - 1."""
    if step < warmup_steps:
        return peak_lr * ((step + 1) / warmup_steps)
    decay_steps = total_steps - 1 - warmup_steps
    if decay_steps <= 0:
        return min_lr
    return _cosine((step - warmup_steps) / decay_steps, peak_lr, min_lr)


def cosine_lr(step: int, total_steps: int, peak_lr: float, min_lr: float, warmup_frac: float,
              warmup_min_steps: int = 0) -> float:
    """LR of optimiser step `step` (0-based) in a run of `total_steps`; equals min_lr at step total_steps - 1."""
    warmup = warmup_steps_for(total_steps, warmup_frac, warmup_min_steps)
    return warmup_cosine_lr(step, total_steps, warmup, peak_lr, min_lr)


def inverse_sqrt_lr(step: int, peak_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to peak_lr over warmup_steps, then peak_lr * sqrt(warmup / (step + 1)): HF's
    get_inverse_sqrt_schedule one step later, so the first step does not run at LR 0."""
    timescale = max(1, warmup_steps)
    if step < warmup_steps:
        return peak_lr * ((step + 1) / warmup_steps)
    return peak_lr / math.sqrt((step - warmup_steps + timescale + 1) / timescale)


def constant_lr(step: int, peak_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to peak_lr over warmup_steps, then constant."""
    return peak_lr * ((step + 1) / warmup_steps) if step < warmup_steps else peak_lr


DPO_SCHEDULES = {"inverse_sqrt": inverse_sqrt_lr, "constant": constant_lr}


def _median_step_s(end_times_s: list[float]) -> float:
    """Median step time from consecutive step end times: robust to a stray slow step (GC, a noisy neighbour, a
    checkpoint save)."""
    return max(float(np.median(np.diff(end_times_s))), 1e-9)


def fit_total_steps(budget_s: float, elapsed_s: float, step_time_s: float, steps_done: int) -> int:
    """Steps done so far plus as many steps of `step_time_s` as fit in the rest of the budget (at least one)."""
    if step_time_s <= 0:
        raise ValueError(f"step_time_s must be positive, got {step_time_s}")
    remaining_s = max(0.0, budget_s - elapsed_s)
    return max(steps_done + 1, steps_done + int(math.floor(remaining_s / step_time_s)))


@dataclass
class BudgetSchedule:
    """Warm-up + cosine schedule whose length is fitted to a wall-clock budget after timed calibration steps.

    Call `lr(step)` before each step and `end_step(step, elapsed_s)` after it; `done(step_count, elapsed_s)`
    says whether to stop. `max_steps` caps the total. `start_step` > 0 without a restored state (a checkpoint
    written before schedules were saved) calibrates afresh from there.
    """

    budget_s: float
    peak_lr: float
    min_lr: float
    warmup_frac: float
    calibration_steps: int
    max_steps: int | None = None
    start_step: int = 0
    warmup_min_steps: int = 0
    untimed_steps: int = 1
    refit_tolerance: float = 0.1
    fixed_total: bool = False  # train.schedule_by=steps: exactly max_steps long, never fitted to the clock
    # ---- state (state_dict) ----
    total_steps: int | None = None  # None until calibrated (or restored)
    warmup_steps: int | None = None
    calibrated: bool = False
    step_time_s: float | None = None
    calib_end_step: int | None = None  # steps done when the fit happened; re-fits count windows from here
    _calib_times: list[float] = field(default_factory=list)  # budget-clock end times of the timed steps
    _anchor: tuple[int, float] | None = None  # (step, cosine progress) of the last re-fit
    _recent: list[float] = field(default_factory=list)  # budget-clock end times of the latest steps

    def __post_init__(self) -> None:
        if self.total_steps is not None and self.max_steps is not None:
            self.total_steps = min(self.total_steps, self.max_steps)
        if self.fixed_total:
            if self.max_steps is None:
                raise ValueError("a fixed-length schedule needs max_steps")
            self.total_steps = self.max_steps
            self.warmup_steps = warmup_steps_for(self.max_steps, self.warmup_frac, self.warmup_min_steps)
            self.calibrated, self.calib_end_step = True, 0

    # ---- the curve ----
    def lr(self, step: int) -> float:
        if not self.calibrated:
            return self.prefit_lr(step)
        if self._anchor is not None:
            return _cosine(self._cosine_progress(step), self.peak_lr, self.min_lr)
        return warmup_cosine_lr(step, self.total_steps, self.warmup_steps, self.peak_lr, self.min_lr)

    def prefit_lr(self, step: int) -> float:
        """Before the fit: the ramp of the largest total allowed (max_steps), 0 when uncapped, and min_lr once
        past that ramp; so it is never above the fitted warm-up at the same step."""
        if self.max_steps is None:
            return 0.0
        warmup = warmup_steps_for(self.max_steps, self.warmup_frac, self.warmup_min_steps)
        return self.peak_lr * ((step + 1) / warmup) if step < warmup else min(self.min_lr, self.peak_lr)

    def _cosine_progress(self, step: int) -> float:
        """Position on the cosine (0 at the end of warm-up, 1 at the last step) under the current total."""
        if self._anchor is None:
            span = max(1, self.total_steps - 1 - self.warmup_steps)
            return min(1.0, max(0.0, (step - self.warmup_steps) / span))
        anchor_step, anchor_progress = self._anchor
        span = max(1, self.total_steps - 1 - anchor_step)
        return min(1.0, anchor_progress + (1.0 - anchor_progress) * (step - anchor_step) / span)

    # ---- fitting ----
    def _fit(self, total: int) -> int:
        return min(total, self.max_steps) if self.max_steps is not None else total

    def _remember(self, elapsed_s: float) -> int:
        """Keep the end times of the latest steps (one more than the window); returns the window."""
        window = max(2, self.calibration_steps)
        self._recent = self._recent[-window:] + [elapsed_s]
        return window

    def _maybe_refit(self, steps_done: int, elapsed_s: float) -> None:
        window = self._remember(elapsed_s)
        if len(self._recent) <= window or (steps_done - self.calib_end_step) % window:
            return
        if steps_done < self.warmup_steps:
            return
        step_time_s = _median_step_s(self._recent)
        total = self._fit(fit_total_steps(self.budget_s, elapsed_s, step_time_s, steps_done))
        self.step_time_s = step_time_s
        if abs(total - self.total_steps) <= self.refit_tolerance * self.total_steps or total <= steps_done:
            return
        self._anchor = (steps_done, self._cosine_progress(steps_done))
        self.total_steps = total

    def end_step(self, step: int, elapsed_s: float) -> None:
        """Record that optimiser step `step` finished at `elapsed_s` (budget clock, across resumes)."""
        steps_done = step + 1
        if self.fixed_total:
            # the clock only feeds the budget-overrun stop (`done`), never the curve
            self._remember(elapsed_s)
            if len(self._recent) > 1:
                self.step_time_s = _median_step_s(self._recent)
            return
        if self.calibrated:
            self._maybe_refit(steps_done, elapsed_s)
            return
        if steps_done < self.start_step + max(1, self.untimed_steps):
            return  # still compiling / warming up allocators: the time says nothing about later steps
        self._calib_times.append(elapsed_s)  # the first entry is the end of the last untimed step
        if len(self._calib_times) > max(1, self.calibration_steps):
            self.step_time_s = _median_step_s(self._calib_times)
            self.total_steps = self._fit(fit_total_steps(self.budget_s, elapsed_s, self.step_time_s, steps_done))
            self.warmup_steps = warmup_steps_for(self.total_steps, self.warmup_frac, self.warmup_min_steps)
            self.calibrated, self.calib_end_step = True, steps_done

    def done(self, steps_done: int, elapsed_s: float) -> bool:
        """Stop when the fitted total (or the cap) is reached, or the next step would overrun the budget."""
        total = self.total_steps if self.calibrated else self.max_steps
        if total is not None and steps_done >= total:
            return True
        next_step_s = self.step_time_s or 0.0
        return elapsed_s + next_step_s > self.budget_s

    @property
    def expected_total_steps(self) -> int | None:
        """The fitted total, else the cap (None: not known yet)."""
        return self.total_steps if self.calibrated else self.max_steps

    def fraction_done(self, steps_done: int, elapsed_s: float) -> float:
        """Progress in [0, 1]: steps over the fitted total, budget time before the fit."""
        if self.calibrated:
            return min(1.0, steps_done / self.total_steps)
        frac = elapsed_s / self.budget_s
        return min(1.0, max(frac, steps_done / self.max_steps) if self.max_steps else frac)

    # ---- checkpoints ----
    def state_dict(self) -> dict[str, Any]:
        """Plain types only (loads with torch.load(weights_only=True) and JSON)."""
        return {"version": STATE_VERSION, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "calibrated": self.calibrated, "step_time_s": self.step_time_s,
                "calib_end_step": self.calib_end_step, "calib_times": [float(t) for t in self._calib_times],
                "anchor": [int(self._anchor[0]), float(self._anchor[1])] if self._anchor is not None else None,
                "recent": [float(t) for t in self._recent], "start_step": self.start_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"schedule state version {state.get('version')!r}, expected {STATE_VERSION}")
        self.total_steps, self.warmup_steps = state["total_steps"], state["warmup_steps"]
        self.calibrated, self.step_time_s = bool(state["calibrated"]), state["step_time_s"]
        self.calib_end_step, self.start_step = state["calib_end_step"], int(state["start_step"])
        self._calib_times = [float(t) for t in state["calib_times"]]
        anchor = state["anchor"]
        self._anchor = (int(anchor[0]), float(anchor[1])) if anchor is not None else None
        self._recent = [float(t) for t in state["recent"]]
        if self.calibrated and self.max_steps is not None and self.total_steps > self.max_steps:
            self.total_steps = self.max_steps  # the cap was lowered for the resumed run
