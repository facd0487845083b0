"""The Prefect pre-training task: a retry after a crash resumes from the checkpoint instead of restarting."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prefect import flow

import tasks.train as train_tasks
from slam_core.config import ModelConfig, ParallelConfig, TrainConfig
from slam_core.lm import train as train_lib
from slam_core.lm.model import init_speech_lm, resolve_base
from slam_core.schemas import UNITS

MODEL = ModelConfig(base="tiny-qwen2", context_len=64, dtype="float32", tiny_hidden_size=32, tiny_layers=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_prefect_retry_of_pretrain_resumes_from_the_checkpoint(prefect_harness, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    rows = [{"segment_id": f"s-{i}", "dataset": "stories", "split": "train", "units": (u := rng.integers(0, 40, 60).tolist()),
             "durations": [1] * len(u), "n_frames": len(u), "audio_seconds": 2.4} for i in range(40)]
    shard = tmp_path / "units" / "stories" / "train" / "units-00000.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=UNITS), shard)
    init = init_speech_lm(MODEL, resolve_base(MODEL, tmp_path), tmp_path / "init", seed=0)
    cfg = TrainConfig(budget_s=1e6, max_steps=5, micro_batch_size=2, grad_accum=2, checkpoint_every_s=1e9,
                      log_every_steps=1, calibration_steps=1, val_fraction=0.0)

    real_pretrain, real_step = train_lib.pretrain, train_lib._train_step
    attempts, steps_run = [], []

    def preempted_once(*args, **kwargs):  # the first attempt dies after 2 steps (a checkpoint, then a crash)
        attempts.append(1)
        if len(attempts) == 1:
            real_pretrain(*args, stop_after_steps=2, **kwargs)
            raise RuntimeError("pre-empted")
        return real_pretrain(*args, **kwargs)

    def counted_step(*args, **kwargs):
        steps_run.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_lib, "pretrain", preempted_once)
    monkeypatch.setattr(train_lib, "_train_step", counted_step)
    run_dir = tmp_path / "run"

    @flow
    def one_task():
        return train_tasks.pretrain.with_options(retry_delay_seconds=0)(
            str(init["path"]), [str(shard)], MODEL, cfg, str(run_dir), 0, "cpu", "fp-retry", str(tmp_path),
            ParallelConfig(n_gpus=1))

    out = one_task()
    assert len(attempts) == 2 and out["summary"]["steps"] == 5
    assert len(steps_run) == 5  # 2 before the crash + 3 after: resumed, not restarted
    assert Path(out["checkpoint"]).name == "step-000005"
    assert [int(r["step"]) for r in csv.DictReader((run_dir / "metrics.csv").open())] == [1, 2, 3, 4, 5]
