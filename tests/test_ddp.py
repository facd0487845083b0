"""Data-parallel pre-training on CPU: loader slicing, global-batch bookkeeping, torchrun + gloo DDP/FSDP.

The torchrun tests start real 2-process jobs (`slam_core.lm.launch`) on the tiny model, so they are slow.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from slam_core.config import ModelConfig, TrainConfig
from slam_core.lm.data import PackedLoader, sources_from_paths
from slam_core.lm.distributed import per_rank_grad_accum, resolve_world_size
from slam_core.lm.launch import DistributedTrainingError, launch_pretrain, torchrun_command
from slam_core.lm.model import init_speech_lm, resolve_base
from slam_core.lm.train import pretrain
from unit_corpus import motif_rows, write_units_shard

MODEL = ModelConfig(base="tiny-qwen2", context_len=64, dtype="float32", tiny_hidden_size=32, tiny_layers=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _train_cfg(**kw) -> TrainConfig:
    base = dict(budget_s=1e6, max_steps=3, lr=3e-3, min_lr=1e-4, warmup_frac=0.0, micro_batch_size=2, grad_accum=4,
                checkpoint_every_s=1e9, log_every_steps=1, calibration_steps=1, val_fraction=0.1)
    return TrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp-corpus")
    rows = motif_rows(np.random.default_rng(0), 150, "stories", doc_len=(10, 120))
    path = write_units_shard(root, "stories", rows, row_group_size=32)
    init = init_speech_lm(MODEL, resolve_base(MODEL, root), root / "init", seed=0)
    return {"root": root, "shards": [path], "init": Path(init["path"])}


def _step_tokens(corpus, cfg, seed: int, steps: int) -> int:
    """Real tokens of the first optimiser steps, as the loader makes them in one process."""
    loader = PackedLoader(sources_from_paths(corpus["shards"]), MODEL.context_len, cfg.micro_batch_size, seed,
                          val_fraction=cfg.val_fraction, vocab_size=502)
    return sum(loader.next_step(cfg.sequences_per_step).n_tokens for _ in range(steps))


def _weights(ckpt: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(ckpt) / "model.safetensors"))


def test_rank_slices_are_disjoint_and_interleave_to_the_single_process_stream(corpus):
    sources = sources_from_paths(corpus["shards"])
    whole = PackedLoader(sources, 64, 2, seed=3)
    ranks = [PackedLoader(sources, 64, 2, seed=3, rank=r, world_size=2) for r in range(2)]
    stream = [whole.next_batch()["input_ids"] for _ in range(8)]
    mine = [[loader.next_batch()["input_ids"] for _ in range(4)] for loader in ranks]
    for i in range(8):  # micro-batch i of the stream is rank i % 2's (i // 2)-th
        assert torch.equal(mine[i % 2][i // 2], stream[i])
    assert not any(torch.equal(a, b) for a in mine[0] for b in mine[1])
    # the position is global: the same on every rank and equal to the single-process one
    assert ranks[0].state_dict()["n_drawn"] == ranks[1].state_dict()["n_drawn"] == whole.state_dict()["n_drawn"]
    with pytest.raises(ValueError, match="rank must be in"):
        PackedLoader(sources, 64, 2, seed=3, rank=2, world_size=2)


def test_grad_accum_is_global_and_must_divide_the_world_size():
    assert per_rank_grad_accum(16, 1) == 16 and per_rank_grad_accum(16, 2) == 8 and per_rank_grad_accum(16, 8) == 2
    with pytest.raises(ValueError, match="not divisible by the 3 training processes"):
        per_rank_grad_accum(16, 3)
    assert resolve_world_size(0, "cpu") == 1 and resolve_world_size(2, "cpu") == 2
    cmd = torchrun_command(2, Path("spec.json"))
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--standalone"] and "slam_core.lm.launch" in cmd


def test_rank_entry_point_exits_with_its_code_and_flushed_output():
    """The per-rank entry leaves through os._exit (no interpreter finalisation, where gloo's threads could abort
    a finished rank): its exit code and everything it printed must still come through."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "slam_core.lm.launch"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "usage: python -m slam_core.lm.launch SPEC.json" in done.stderr


AGENT = ".venv/lib/python3.11/site-packages/torch/distributed/elastic/multiprocessing/api.py"
# what torchrun printed when rank 1 aborted at shutdown (CI, 2026-11-30), shortened
ABORTED_JOB = [
    f"W1130 05:01:40.100000 23892 {AGENT}:900] Setting OMP_NUM_THREADS environment variable for each process\n",
    "[rank 0] INFO slam_core.lm.train: step 1/2 loss 6.2531 lr 1.00e-04 1543 tok/s\n",
    "[rank 0] INFO slam_core.lm.checkpoint: checkpoint step 1 -> /runs/resumed/checkpoints/step-000001\n",
    "terminate called without an active exception\n",
    f"W1130 05:01:53.350000 23892 {AGENT}:1028] Sending process 23896 closing signal SIGTERM\n",
    f"E1130 05:01:53.415000 23892 {AGENT}:1002] failed (exitcode: -6) local_rank: 1 (pid: 23897) of binary: python\n",
    "Traceback (most recent call last):\n",
    '  File ".venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1032, in <module>\n',
    *[f"    frame {i} of the agent's own traceback\n" for i in range(40)],
    "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: \n",
    "=======================================================\n", "slam_core.lm.launch FAILED\n",
    "-------------------------------------------------------\n", "Failures:\n", "[1]:\n",
    "  rank      : 0 (local_rank: 0)\n", "  exitcode  : -15 (pid: 23896)  (SIGTERM)\n",
    "-------------------------------------------------------\n", "Root Cause (first observed failure):\n", "[0]:\n",
    "  rank      : 1 (local_rank: 1)\n", "  exitcode  : -6 (pid: 23897)  (SIGABRT)\n",
    "  traceback : Signal 6 (SIGABRT) received by PID 23897\n",
    "=======================================================\n",
]


def test_failure_report_keeps_the_root_cause_and_the_ranks_last_words():
    from slam_core.lm.launch import failure_report, root_cause_line

    report = failure_report(ABORTED_JOB)
    assert root_cause_line(report) == "rank 1: Signal 6 (SIGABRT) received by PID 23897"
    assert report.startswith("Root Cause (first observed failure):")
    assert "rank      : 1 (local_rank: 1)" in report and "(SIGABRT)" in report
    assert "terminate called without an active exception" in report  # the rank's line, not pushed out
    assert "checkpoint step 1" in report
    assert "frame" not in report and "OMP_NUM_THREADS" not in report and "-15" not in report  # the agent's noise
    assert failure_report(["one\n", "two\n"]) == "last output:\none\ntwo\n"  # not torchrun's format: the tail


@pytest.mark.slow
def test_a_rank_error_reaches_the_caller_with_its_message(corpus, tmp_path):
    missing = tmp_path / "no-such-shard.parquet"
    with pytest.raises(DistributedTrainingError) as info:
        launch_pretrain(corpus["init"], [missing], MODEL, _train_cfg(max_steps=1), tmp_path / "run", seed=5,
                        device="cpu", nproc=2)
    message = str(info.value)
    headline = message.splitlines()[0]  # one line that says which rank failed and why
    assert headline.startswith("torchrun with 2 processes exited with code 1: rank ") and "BadShardError" in headline
    assert "no-such-shard.parquet: cannot read Parquet metadata" in headline, message
    assert "Root Cause" in message and "last output of the ranks:" in message
    assert not (tmp_path / "run" / "result.json").exists()


@pytest.mark.slow
def test_two_rank_ddp_matches_one_process_and_resumes(corpus, tmp_path):
    """2 gloo ranks sharing each step's 8 examples == 1 process taking all 8, to float tolerance;
    weights identical on both ranks; rank 0 alone writes metrics; kill at step 2 + relaunch == straight."""
    cfg = _train_cfg()
    single = pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "single", seed=5, device="cpu")
    ddp = launch_pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "ddp", seed=5, device="cpu",
                          nproc=2)
    assert ddp["world_size"] == 2 and ddp["steps"] == single["steps"] == 3
    assert ddp["tokens_seen"] == single["tokens_seen"] == _step_tokens(corpus, cfg, seed=5, steps=3)  # same batches
    a, b = ddp["rank_param_checksums"]
    assert a is not None and a == b  # DDP replicas stayed bitwise identical
    ws, wd = _weights(single["final_checkpoint"]), _weights(ddp["final_checkpoint"])
    for name in ws:
        torch.testing.assert_close(wd[name], ws[name], rtol=1e-4, atol=1e-5, msg=name)
    assert abs(ddp["final_loss"] - single["final_loss"]) < 1e-4
    assert ddp["val_loss"] == pytest.approx(single["val_loss"], abs=1e-4)
    rows = list(csv.DictReader((tmp_path / "ddp" / "metrics.csv").open()))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 3]  # written once (rank 0), last row = val loss
    assert any((tmp_path / "ddp" / "tensorboard").iterdir())

    progress = []
    half = launch_pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "resumed", seed=5, device="cpu",
                           nproc=2, stop_after_steps=2, progress=lambda f, m: progress.append(f))
    assert half["steps"] == 2 and progress and progress[-1] == pytest.approx(2 / 3)
    state = json.loads((tmp_path / "resumed" / "checkpoints" / "step-000002" / "state.json").read_text())
    assert state["world_size"] == 2 and state["tokens_seen"] == _step_tokens(corpus, cfg, seed=5, steps=2)
    resumed = launch_pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "resumed", seed=5,
                              device="cpu", nproc=2)
    assert resumed["steps"] == 3
    wr = _weights(resumed["final_checkpoint"])
    assert all(torch.equal(wr[k], wd[k]) for k in wd)  # gloo sums in a fixed order: resume is bitwise


def test_uneven_grad_accum_fails_clearly(corpus, tmp_path):
    with pytest.raises(ValueError, match="not divisible by the 2 training processes"):
        launch_pretrain(corpus["init"], corpus["shards"], MODEL, _train_cfg(grad_accum=3), tmp_path / "bad", seed=5,
                        device="cpu", nproc=2)


@pytest.mark.slow
def test_two_rank_fsdp_matches_one_process(corpus, tmp_path):
    cfg = _train_cfg(max_steps=2)
    single = pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "single", seed=5, device="cpu")
    try:
        fsdp = launch_pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "fsdp", seed=5, device="cpu",
                               nproc=2, fsdp=True)
    except DistributedTrainingError as err:
        if "gloo" in str(err).lower() and "not supported" in str(err).lower():
            pytest.skip(f"FSDP2 collectives are not supported by gloo in torch {torch.__version__}: {err}")
        raise
    assert fsdp["steps"] == 2 and fsdp["rank_param_checksums"] == [None, None]  # sharded: one copy, no replicas
    ws, wf = _weights(single["final_checkpoint"]), _weights(fsdp["final_checkpoint"])
    assert set(wf) == set(ws)
    for name in ws:
        torch.testing.assert_close(wf[name], ws[name], rtol=1e-4, atol=1e-5, msg=name)
    # the full optimiser state is gathered into the checkpoint, and a relaunched FSDP job continues from it
    state = torch.load(Path(fsdp["final_checkpoint"]) / "trainer_state.pt", weights_only=True)
    assert state["optimizer"]["state"]
    launch_pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "resumed", seed=5, device="cpu",
                    nproc=2, fsdp=True, stop_after_steps=1)
    resumed = launch_pretrain(corpus["init"], corpus["shards"], MODEL, cfg, tmp_path / "resumed", seed=5,
                              device="cpu", nproc=2, fsdp=True)
    wr = _weights(resumed["final_checkpoint"])
    for name in wf:
        torch.testing.assert_close(wr[name], wf[name], rtol=1e-5, atol=1e-6, msg=name)
