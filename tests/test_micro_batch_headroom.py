"""The automatic micro-batch leaves memory headroom: the largest size whose probed peak stays under
train.micro_batch_memory_share of the GPU, sizes whose extrapolated peak would pass it are not tried, the choice
is explained in one line; and a run that still runs out of memory lowers the micro-batch and resumes."""

from __future__ import annotations

import logging

import pytest
import torch

from slam_core.config import TrainConfig
from slam_core.lm import oom, tuning

GIB = 2**30


def linear_peaks(base_gib: float, per_item_gib: float, capacity_gib: float | None = None):
    """A fake probe: peak = base + items x per_item (None, out of memory, above capacity); records what it tried."""
    tried: list[int] = []

    def measure(items: int) -> int | None:
        tried.append(items)
        peak = (base_gib + items * per_item_gib) * GIB
        return None if capacity_gib is not None and peak > capacity_gib * GIB else int(peak)

    return measure, tried


def test_largest_size_under_the_share_and_no_probe_past_the_extrapolated_budget():
    divisors = [1, 2, 4, 8, 16, 32, 64, 128]
    # the H200 case: 139 GiB, 85 % = 118 GiB less ~3 GiB of moments; ~1.7 GiB per sequence of 1024 tokens
    measure, tried = linear_peaks(6.0, 1.7, capacity_gib=139)
    chosen, probes = tuning.choose_micro_batch(divisors, 8, 110 * GIB, measure)
    assert chosen == 32  # 64 would need ~114.8 GiB: over the budget, so not tried (no out-of-memory probe)
    assert tried == [8, 16, 32]
    assert probes[-1] == {"items": 64, "predicted_gib": pytest.approx(6 + 64 * 1.7, abs=0.01), "tried": False}
    # at a larger share 64 fits; 128 is extrapolated past it and not tried
    measure, tried = linear_peaks(6.0, 1.7, capacity_gib=139)
    assert tuning.choose_micro_batch(divisors, 8, 0.95 * 139 * GIB, measure)[0] == 64 and tried == [8, 16, 32, 64]


def test_out_of_memory_and_too_large_a_start_go_below_the_start():
    measure, _ = linear_peaks(2.0, 1.0, capacity_gib=20)
    chosen, probes = tuning.choose_micro_batch([1, 2, 4, 8, 16, 32], 32, 100 * GIB, measure)
    assert chosen == 16 and probes[0]["out_of_memory"]
    measure, _ = linear_peaks(2.0, 1.0)
    assert tuning.choose_micro_batch([1, 2, 4, 8], 8, 7 * GIB, measure)[0] == 4  # 8 peaks at 10 GiB > 7


def test_the_choice_is_explained_in_one_line():
    measure, _ = linear_peaks(6.0, 1.7, capacity_gib=139)
    chosen, probes = tuning.choose_micro_batch([8, 16, 32, 64, 128], 8, 110 * GIB, measure)
    line = tuning.explain_choice(chosen, probes, 0.85, 139 * GIB, 8.15 * GIB, 110 * GIB)
    assert line.startswith("85% of 139.0 GiB less 8.2 GiB of AdamW moments = 110.0 GiB")
    assert "32 peaked at 60.4 GiB" in line and "64 would need ~114.8 GiB (extrapolated, not tried)" in line
    assert "\n" not in line


def test_the_share_is_a_train_setting_with_a_documented_default():
    field = TrainConfig.model_fields["micro_batch_memory_share"]
    assert TrainConfig().micro_batch_memory_share == 0.85 == tuning.MEMORY_FRACTION
    assert "headroom" in field.description and "checkpoint" in field.description
    with pytest.raises(ValueError):
        TrainConfig(micro_batch_memory_share=1.2)


def test_cpu_auto_is_the_recipes_micro_batch_and_reports_nothing():
    report: dict = {}
    model = torch.nn.Linear(2, 2)
    got = tuning.fit_micro_batch(model, "auto", 8, 128, 1, 64, "sdpa", torch.device("cpu"), torch.float32, None, None,
                                 memory_share=0.5, report=report)
    assert got == 8 and report == {}


class FakeRun:
    """A training run that runs out of memory at micro-batches above `fits`, after `steps_before_oom` steps, and
    otherwise finishes; records the micro-batches it was started with and the step it resumed from."""

    def __init__(self, fits: int, total_steps: int = 10, steps_before_oom: int = 3) -> None:
        self.fits, self.total, self.before = fits, total_steps, steps_before_oom
        self.calls: list[tuple[int | str, int]] = []
        self.checkpoint = 0

    def __call__(self, cfg: TrainConfig) -> dict:
        auto = min(32, cfg.micro_batch_size * cfg.grad_accum)  # what auto would probe
        micro = cfg.run_micro_batch if isinstance(cfg.run_micro_batch, int) else auto
        self.calls.append((cfg.run_micro_batch, self.checkpoint))
        oom.remember_micro_batch(micro)
        if micro > self.fits:
            self.checkpoint += self.before  # trained (and checkpointed) a few steps, then ran out of memory
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"steps": self.total, "micro_batch_size": micro,
                "sequences_per_step": cfg.micro_batch_size * cfg.grad_accum}


def test_out_of_memory_mid_training_lowers_the_micro_batch_and_resumes(caplog):
    cfg = TrainConfig(micro_batch_size=8, grad_accum=16)  # 128 sequences per step
    run = FakeRun(fits=8)
    with caplog.at_level(logging.WARNING, logger="slam_core.lm.oom"):
        summary = oom.run_lowering_on_oom(run, cfg, world_size=1)
    assert [c[0] for c in run.calls] == ["auto", 16, 8]  # halved each time, divisors of 128
    assert [c[1] for c in run.calls] == [0, 3, 6]  # each restart went on from the last checkpoint
    assert summary["micro_batch_size"] == 8 and summary["sequences_per_step"] == 128  # tokens per step kept
    assert summary["out_of_memory_restarts"] == [{"from": 32, "to": 16}, {"from": 16, "to": 8}]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith("out of memory at micro-batch 32: going on from the last "
                                                   "checkpoint with micro-batch 16")
    assert "tokens per optimiser step unchanged" in lines[0]


def test_out_of_memory_at_micro_batch_one_is_raised():
    run = FakeRun(fits=0)
    with pytest.raises(torch.OutOfMemoryError):
        oom.run_lowering_on_oom(run, TrainConfig(micro_batch_size=1, grad_accum=2), world_size=1)
    assert [c[0] for c in run.calls] == ["auto", 1]


def test_a_failed_multi_process_job_that_ran_out_of_memory_is_recognised():
    assert oom.is_out_of_memory(torch.OutOfMemoryError("x"))
    assert oom.is_out_of_memory(RuntimeError("torchrun job failed: rank 0: torch.OutOfMemoryError: CUDA out of "
                                             "memory. Tried to allocate 1.00 GiB"))
    assert not oom.is_out_of_memory(RuntimeError("rank 1: ValueError: bad shard"))
