"""FLOPs per token, MFU, device peaks, and the metrics log's TensorBoard events (with resume purging)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from slam_core.lm.metrics import (
    MetricsLog, device_peak_flops, flops_per_token_for, mfu, model_flops_per_token, peak_flops_for_name,
)
from slam_core.lm.model import count_parameters


def test_slam_shape_is_2_41_gflop_per_token_and_410k_tokens_per_s_at_full_h100():
    cfg = Qwen2Config(vocab_size=502, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                      num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=True)
    with torch.device("meta"):  # the shape only: no 358M-parameter allocation
        model = Qwen2ForCausalLM(cfg)
    assert count_parameters(model) == 358_347_904
    flops = model_flops_per_token(model, 1024)
    assert flops == 6 * 358_347_904 + 12 * 24 * 14 * 64 * 1024
    assert flops / 1e9 == pytest.approx(2.414, abs=0.001)
    h100 = peak_flops_for_name("NVIDIA H100 80GB HBM3")
    assert h100 == 989.4e12
    assert h100 / flops == pytest.approx(409_800, rel=1e-3)  # tokens/s at 100 % MFU (docs/performance.md)
    assert mfu(204_900, flops, h100) == pytest.approx(0.5, abs=1e-3)


def test_peak_table_and_cpu_mfu_is_none():
    assert peak_flops_for_name("NVIDIA H100 PCIe") == 756.5e12  # specific name wins over the family
    assert peak_flops_for_name("NVIDIA H200") == 989.4e12
    assert peak_flops_for_name("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_flops_for_name("NVIDIA RTX A5000") == 111.1e12
    assert peak_flops_for_name("NVIDIA RTX A6000") == 154.8e12
    assert peak_flops_for_name("Some Future GPU") is None
    assert device_peak_flops(torch.device("cpu"), torch.bfloat16) is None
    assert mfu(1000.0, 1e9, None) is None
    assert flops_per_token_for(10, 2, 3, 4, 5) == 60 + 12 * 2 * 3 * 4 * 5


def _scalars(tb_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_metrics_log_writes_csv_and_tensorboard_and_purges_redone_steps(tmp_path, monkeypatch):
    from tensorboard.summary.writer import event_file_writer

    # The writers' per-process counters become 9 and 10: names that sort the wrong way round ("...10" < "...9").
    monkeypatch.setattr(event_file_writer, "_global_uid", event_file_writer.AtomicCounter(9))
    log = MetricsLog(tmp_path / "metrics.csv", 0, tensorboard_dir=tmp_path / "tb")
    for step in (1, 2, 3, 4):
        log.append({"step": step, "loss": 5.0 - step, "lr": 1e-3, "grad_norm": 0.5, "tokens_per_s": 100.0,
                    "mfu": None, "tokens_seen": step * 10, "elapsed_s": float(step)})
    log.close()
    assert _scalars(tmp_path / "tb", "train/loss") == [(1, 4.0), (2, 3.0), (3, 2.0), (4, 1.0)]
    resumed = MetricsLog(tmp_path / "metrics.csv", 2, tensorboard_dir=tmp_path / "tb")  # crashed after step 2's ckpt
    for step in (3, 4):
        resumed.append({"step": step, "loss": 10.0 + step})
    resumed.close()
    assert [r["step"] for r in csv.DictReader((tmp_path / "metrics.csv").open())] == ["1", "2", "3", "4"]
    assert _scalars(tmp_path / "tb", "train/loss") == [(1, 4.0), (2, 3.0), (3, 13.0), (4, 14.0)]
