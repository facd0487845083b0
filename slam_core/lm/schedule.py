"""Learning-rate schedules and fitting the number of steps to a wall-clock budget.

Pre-training: linear warm-up over `warmup_frac * total` steps, then cosine from `lr` to `min_lr`, reaching
`min_lr` exactly at the last step (index total - 1). The total is not known in advance: step 0 is a warm-up
step (compilation, allocator) and is not timed; the next `calibration_steps` are timed, and the total is
fitted to the remaining budget (`fit_total_steps`); a resumed run re-fits the same way.

After calibration the total is re-fitted every `calibration_steps` steps from the median of the recent step
times, when it moves by more than `refit_tolerance` (a noisy neighbour during calibration, checkpoint
saves, a slower phase). The cosine stays continuous: from the re-fit step on, its progress continues from
where it was and reaches 1 (min_lr) on the new last step. Re-fits wait for the end of the warm-up. The loop
also stops when the next step would overrun the budget, so the budget is never exceeded by more than a step.

DPO: linear warm-up then inverse-sqrt decay (as HF's `get_inverse_sqrt_schedule`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def warmup_steps_for(total_steps: int, warmup_frac: float) -> int:
    return int(round(warmup_frac * total_steps))


def cosine_lr(step: int, total_steps: int, peak_lr: float, min_lr: float, warmup_frac: float) -> float:
    """LR of optimiser step `step` (0-based) in a run of `total_steps`; equals min_lr at step total_steps - 1."""
    warmup = warmup_steps_for(total_steps, warmup_frac)
    if step < warmup:
        return peak_lr * (step + 1) / warmup
    decay_steps = total_steps - 1 - warmup
    if decay_steps <= 0:
        return min_lr
    progress = min(1.0, (step - warmup) / decay_steps)
    return min_lr + (peak_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def inverse_sqrt_lr(step: int, peak_lr: float, warmup_steps: int) -> float:
    """Linear warm-up to peak_lr over warmup_steps, then peak_lr * sqrt(warmup / (step + 1))."""
    timescale = max(1, warmup_steps)
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    return peak_lr / math.sqrt((step - warmup_steps + timescale + 1) / timescale)


def fit_total_steps(budget_s: float, elapsed_s: float, step_time_s: float, steps_done: int) -> int:
    """Steps done so far plus as many steps of `step_time_s` as fit in the rest of the budget (at least one)."""
    if step_time_s <= 0:
        raise ValueError(f"step_time_s must be positive, got {step_time_s}")
    remaining_s = max(0.0, budget_s - elapsed_s)
    return max(steps_done + 1, steps_done + int(math.floor(remaining_s / step_time_s)))


@dataclass
class BudgetSchedule:
    """Cosine schedule whose length is fitted to a wall-clock budget after timed calibration steps.

    Call `lr(step)` before each step and `end_step(step, elapsed_s)` after it; `done(step_count, elapsed_s)`
    says whether to stop. `max_steps` caps the total. `start_step` > 0 means a resumed run: it re-calibrates.
    """

    budget_s: float
    peak_lr: float
    min_lr: float
    warmup_frac: float
    calibration_steps: int
    max_steps: int | None = None
    start_step: int = 0
    total_steps: int | None = None  # provisional until calibrated (or restored from a checkpoint)
    _calib_times: list[float] | None = None  # budget-clock time at the end of each calibration step
    calibrated: bool = False
    step_time_s: float | None = None
    refit_tolerance: float = 0.1
    _anchor: tuple[int, float] | None = None  # (step, cosine progress) of the last re-fit
    _recent: list[float] | None = None  # budget-clock end times of the latest steps, for re-fits

    def __post_init__(self) -> None:
        if self.total_steps is None:
            self.total_steps = self.max_steps or max(self.start_step + 1, 1000)
        self._cap()

    def _cap(self) -> None:
        if self.max_steps is not None:
            self.total_steps = min(self.total_steps, self.max_steps)

    def lr(self, step: int) -> float:
        if self._anchor is None:
            return cosine_lr(step, self.total_steps, self.peak_lr, self.min_lr, self.warmup_frac)
        progress = self._cosine_progress(step)
        return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def _cosine_progress(self, step: int) -> float:
        """Position on the cosine (0 at the end of warm-up, 1 at the last step) under the current total."""
        if self._anchor is None:
            warmup = warmup_steps_for(self.total_steps, self.warmup_frac)
            return min(1.0, max(0.0, (step - warmup) / max(1, self.total_steps - 1 - warmup)))
        anchor_step, anchor_progress = self._anchor
        span = max(1, self.total_steps - 1 - anchor_step)
        return min(1.0, anchor_progress + (1.0 - anchor_progress) * (step - anchor_step) / span)

    def _maybe_refit(self, steps_done: int, elapsed_s: float) -> None:
        window = max(2, self.calibration_steps)
        self._recent = (self._recent or [])[-window:] + [elapsed_s]
        if len(self._recent) <= window or (steps_done - self.start_step) % window:
            return
        if steps_done < warmup_steps_for(self.total_steps, self.warmup_frac):
            return
        step_time_s = max(float(np.median(np.diff(self._recent))), 1e-9)
        total = fit_total_steps(self.budget_s, elapsed_s, step_time_s, steps_done)
        if self.max_steps is not None:
            total = min(total, self.max_steps)
        self.step_time_s = step_time_s
        if abs(total - self.total_steps) <= self.refit_tolerance * self.total_steps or total <= steps_done:
            return
        self._anchor = (steps_done, self._cosine_progress(steps_done))
        self.total_steps = total

    def end_step(self, step: int, elapsed_s: float) -> None:
        """Record that optimiser step `step` finished at `elapsed_s` (budget clock, across resumes)."""
        steps_done = step + 1
        if self.calibrated:
            self._maybe_refit(steps_done, elapsed_s)
            return
        if steps_done <= self.start_step:
            return
        if self._calib_times is None:  # the warm-up step ends: timing starts here
            self._calib_times = [elapsed_s]
        else:
            self._calib_times.append(elapsed_s)
        if len(self._calib_times) > max(1, self.calibration_steps):
            # median step time: robust to a stray slow step (GC, a noisy neighbour, a checkpoint save)
            self.step_time_s = max(float(np.median(np.diff(self._calib_times))), 1e-9)
            self.total_steps = fit_total_steps(self.budget_s, elapsed_s, self.step_time_s, steps_done)
            self._cap()
            self.calibrated = True

    def done(self, steps_done: int, elapsed_s: float) -> bool:
        """Stop when the fitted total is reached, or the next step would overrun the budget."""
        if steps_done >= self.total_steps:
            return True
        next_step_s = self.step_time_s or 0.0
        return elapsed_s + next_step_s > self.budget_s
