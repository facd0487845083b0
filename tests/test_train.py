"""Schedules fitted to a budget, budgeted pre-training, checkpoints, bitwise resume, learning."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from slam_core.config import ModelConfig, TrainConfig
from slam_core.lm.data import PackedLoader, sources_from_paths
from slam_core.lm.model import init_speech_lm, resolve_base
from slam_core.lm.schedule import BudgetSchedule, cosine_lr, fit_total_steps, inverse_sqrt_lr
from slam_core.lm.train import pretrain
from unit_corpus import motif_rows, write_units_shard

MODEL = ModelConfig(base="tiny-qwen2", context_len=128, dtype="float32", tiny_hidden_size=64, tiny_layers=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_cfg(**kw) -> TrainConfig:
    base = dict(budget_s=1e6, lr=3e-3, min_lr=1e-4, warmup_frac=0.1, micro_batch_size=2, grad_accum=2,
                checkpoint_every_s=1e9, log_every_steps=1, calibration_steps=2, val_fraction=0.1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two datasets of patterned unit sequences (learnable), plus an initial speech LM."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    shards = []
    for ds in ("books", "stories"):  # one generator: the second set's rows follow the first's draws
        rows = motif_rows(rng, 120, ds, doc_len=(20, 200), id_prefix=f"{ds}-")
        shards.append(write_units_shard(root, ds, rows, row_group_size=32))
    init = init_speech_lm(MODEL, resolve_base(MODEL, root), root / "init", seed=0)
    return {"root": root, "shards": shards, "init": Path(init["path"])}


def test_cosine_schedule_shape():
    assert cosine_lr(0, 100, 1.0, 0.1, 0.1) == pytest.approx(0.1)
    assert cosine_lr(9, 100, 1.0, 0.1, 0.1) == pytest.approx(1.0)
    assert cosine_lr(99, 100, 1.0, 0.1, 0.1) == 0.1
    lrs = [cosine_lr(s, 100, 1.0, 0.1, 0.1) for s in range(10, 100)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert fit_total_steps(100.0, 10.0, 2.0, 5) == 50
    assert fit_total_steps(100.0, 100.0, 2.0, 5) == 6
    assert inverse_sqrt_lr(0, 1.0, 4) == 0.25 and inverse_sqrt_lr(3, 1.0, 4) == 1.0
    assert inverse_sqrt_lr(7, 1.0, 4) == pytest.approx(1 / math.sqrt(2))


def test_budget_schedule_ends_at_min_lr_with_fake_clock():
    """Steps of 0.7 s (first one 3 s: compile) in a 60 s budget: lr hits min_lr on the last step that fits."""
    sched = BudgetSchedule(budget_s=60.0, peak_lr=1e-3, min_lr=5e-5, warmup_frac=0.1, calibration_steps=3)
    clock, step, lrs = 0.0, 0, []
    while not sched.done(step, clock):
        lrs.append(sched.lr(step))
        clock += 3.0 if step == 0 else 0.7
        sched.end_step(step, clock)
        step += 1
    assert clock <= 60.0 and clock + 0.7 > 60.0  # the last step that fits the budget was run
    assert step == sched.total_steps == 1 + int((60.0 - 3.0) / 0.7 + 1e-9)
    assert lrs[-1] == 5e-5 and lrs[-2] > 5e-5


def test_pretrain_with_fake_clock_ends_schedule_on_budget(corpus, tmp_path):
    ticks = itertools.count()
    clock = lambda: float(next(ticks)) * 0.5  # noqa: E731 — every clock read advances 0.5 s
    cfg = _train_cfg(budget_s=8.0, val_fraction=0.0, grad_accum=1)
    out = pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "run", seed=0, device="cpu",
                   clock=clock)
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert out["elapsed_s"] <= 8.0 and int(rows[-1]["step"]) == out["steps"] >= 5
    assert float(rows[-1]["lr"]) == cfg.min_lr
    assert out["val_loss"] is None


def _weights(ckpt: str) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(ckpt).state_dict()


def test_resume_is_bitwise_equal(corpus, tmp_path):
    cfg = _train_cfg(max_steps=6)
    straight = pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "a", seed=1, device="cpu")
    half = pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "b", seed=1, device="cpu",
                    stop_after_steps=3)
    killed_save = tmp_path / "b" / "checkpoints" / ".step-000004.abc123"  # a save interrupted by kill -9
    killed_save.mkdir()
    assert half["steps"] == 3 and half["val_loss"] is None
    ckpt = tmp_path / "b" / "checkpoints" / "step-000003"
    assert (tmp_path / "b" / "checkpoints" / "latest").read_text().strip() == "step-000003"
    state = json.loads((ckpt / "state.json").read_text())
    loader = PackedLoader(sources_from_paths(corpus["shards"]), MODEL.context_len, cfg.micro_batch_size, 1,
                          val_fraction=cfg.val_fraction, vocab_size=502)
    first_three = sum(loader.next_step(cfg.sequences_per_step).n_tokens for _ in range(3))  # real tokens, no padding
    assert state["step"] == 3 and state["tokens_seen"] == first_three and state["total_steps"] == 6
    trainer_state = torch.load(ckpt / "trainer_state.pt", weights_only=True)
    assert {"optimizer", "loader", "rng"} <= set(trainer_state)
    resumed = pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "b", seed=1, device="cpu")
    assert resumed["steps"] == straight["steps"] == 6
    assert resumed["tokens_seen"] == straight["tokens_seen"] and not killed_save.exists()
    wa, wb = _weights(straight["final_checkpoint"]), _weights(resumed["final_checkpoint"])
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert resumed["final_loss"] == straight["final_loss"] and resumed["val_loss"] == straight["val_loss"]
    steps_logged = [int(r["step"]) for r in csv.DictReader((tmp_path / "b" / "metrics.csv").open())]
    assert steps_logged == [1, 2, 3, 4, 5, 6, 6]  # the last row is the val loss
    again = pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "b", seed=1, device="cpu")
    assert again["steps"] == 6 and again["final_checkpoint"] == resumed["final_checkpoint"]  # nothing left to do


def test_pretrain_learns_and_checkpoints(corpus, tmp_path):
    cfg = _train_cfg(max_steps=30, lr=1e-2, min_lr=1e-3, micro_batch_size=4, grad_accum=1, checkpoint_every_s=1e-9,
                     log_every_steps=1)
    reports = []
    out = pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "run", seed=0, device="cpu",
                   progress=lambda frac, msg: reports.append(frac))
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    losses = [float(r["loss"]) for r in rows if r["loss"]]
    assert len(losses) == 30 and losses[0] > 5.5 and losses[-1] < losses[0] - 2.0, losses
    assert out["val_loss"] is not None and out["val_loss"] < losses[0] - 2.0
    assert float(rows[0]["tokens_per_s"]) > 0 and rows[0]["mfu"] == ""  # unknown peak on CPU
    assert reports[-1] == 1.0 and out["steps"] == 30
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["latest", "step-000029", "step-000030"]  # saved every step, the newest 2 kept
    model = AutoModelForCausalLM.from_pretrained(out["final_checkpoint"])
    assert model.config.vocab_size == 502


def test_budget_schedule_refits_when_steps_get_faster_and_stays_continuous():
    """Calibration on a busy machine (2 s steps), then 0.5 s steps: the total is re-fitted, the budget is used,
    the cosine has no jump and still ends exactly at min_lr."""
    sched = BudgetSchedule(budget_s=60.0, peak_lr=1e-3, min_lr=5e-5, warmup_frac=0.05, calibration_steps=3)
    clock, step, lrs = 0.0, 0, []
    while not sched.done(step, clock):
        lrs.append(sched.lr(step))
        clock += 2.0 if step < 5 else 0.5
        sched.end_step(step, clock)
        step += 1
    assert clock > 55.0  # a once-fitted total (from the 2 s steps) would have stopped near 10 s of 60
    assert lrs[-1] == 5e-5 and step == sched.total_steps
    warm = int(round(0.05 * sched.total_steps))
    drops = [a - b for a, b in zip(lrs[warm + 1:], lrs[warm + 2:])]
    assert all(d >= -1e-12 for d in drops) and max(drops) < 5e-5  # monotone, no jump at the re-fit


def _run_schedule(sched: BudgetSchedule, step_times: list[float]) -> tuple[list[float], float]:
    clock, step, lrs = 0.0, 0, []
    while not sched.done(step, clock):
        lrs.append(sched.lr(step))
        clock += step_times[step % len(step_times)]
        sched.end_step(step, clock)
        step += 1
    return lrs, clock


def test_steps_schedule_ignores_the_clock_and_keeps_the_budget_as_a_cap():
    """train.schedule_by=steps: the same LR at every step whether steps are fast, slow or erratic (a busy
    machine), where the fitted schedule re-fits under the same erratic clock; the budget still stops a run."""
    def fixed(budget_s: float) -> BudgetSchedule:
        return BudgetSchedule(budget_s=budget_s, peak_lr=5e-3, min_lr=1.5e-4, warmup_frac=0.05,
                              calibration_steps=3, max_steps=460, fixed_total=True)

    idle, _ = _run_schedule(fixed(1800.0), [0.25])
    busy, _ = _run_schedule(fixed(1800.0), [0.25, 9.0, 0.5, 0.25, 3.0])
    assert idle == busy and len(idle) == 460
    assert idle == [cosine_lr(s, 460, 5e-3, 1.5e-4, 0.05) for s in range(460)]
    fitted = BudgetSchedule(budget_s=1800.0, peak_lr=5e-3, min_lr=1.5e-4, warmup_frac=0.05, calibration_steps=3,
                            max_steps=460)
    # what the smoke demo used to do: a busy spell during calibration fits fewer steps and bends the curve
    assert _run_schedule(fitted, [5.0] * 10 + [0.25])[0][:200] != idle[:200]
    capped, clock = _run_schedule(fixed(60.0), [1.0])
    assert clock <= 60.0 and len(capped) < 460 and capped == idle[: len(capped)]
    with pytest.raises(ValueError, match="max_steps"):
        BudgetSchedule(budget_s=60.0, peak_lr=1e-3, min_lr=0.0, warmup_frac=0.1, calibration_steps=3, fixed_total=True)


def test_steps_schedule_needs_max_steps_in_the_config():
    from slam_core.config import ConfigError, apply_overrides
    from slam_core.presets import get_preset

    assert get_preset("smoke").train.schedule_by == "steps"
    with pytest.raises(ConfigError, match="schedule_by=steps needs train.max_steps"):
        apply_overrides(get_preset("smoke"), {"train.max_steps": None})
