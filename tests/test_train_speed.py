"""The speed path changes speed, not the recipe: packed attention trains the same curve as HF's SDPA path, the
micro-batch split keeps the effective batch, metrics leave the training thread in order; on CUDA: one host
sync and one bf16 weight cast per optimiser step, the micro-batch probe, compiled layers."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import csv
import threading
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from slam_core.config import ConfigError, ModelConfig, TrainConfig, apply_overrides
from slam_core.lm import tuning
from slam_core.lm.data import PackedLoader, sources_from_paths
from slam_core.lm.distributed import DistEnv
from slam_core.lm.metrics import BackgroundReporter
from slam_core.lm.model import init_speech_lm, load_speech_lm, resolve_base
from slam_core.lm.step import make_optimizer, train_step
from slam_core.lm.train import pretrain
from slam_core.presets import get_preset
from unit_corpus import motif_rows, write_units_shard

pytestmark = pytest.mark.usefixtures("one_torch_thread")
MODEL = ModelConfig(base="tiny-qwen2", context_len=128, dtype="float32", tiny_hidden_size=64, tiny_layers=2)
CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("speed")
    rows = motif_rows(np.random.default_rng(0), 150, "stories", doc_len=(5, 200))
    shard = write_units_shard(root, "stories", rows, row_group_size=50)
    init = init_speech_lm(MODEL, resolve_base(MODEL, root), root / "init", seed=0)
    return {"shard": shard, "init": Path(init["path"])}


def _losses(run_dir: Path) -> list[float]:
    return [float(r["loss"]) for r in csv.DictReader((run_dir / "metrics.csv").open()) if r["loss"]]


def test_packed_attention_trains_the_same_curve_as_hf_sdpa(corpus, tmp_path):
    """Fixed seed, same batches: the packed kernel (CPU: packed_sdpa) and HF's position_ids-derived SDPA mask
    give the same losses step by step (the 200-step smoke comparison is in bench/results/train-cpu.json)."""
    cfg = TrainConfig(budget_s=1e6, max_steps=8, lr=3e-3, micro_batch_size=2, grad_accum=2, log_every_steps=1,
                      checkpoint_every_s=1e9, val_fraction=0.0)
    out = {}
    for attn in ("sdpa", "auto"):
        out[attn] = pretrain(corpus["init"], [corpus["shard"]], MODEL.model_copy(update={"attn_implementation": attn}),
                             cfg, tmp_path / attn, seed=3, device="cpu", tensorboard=False)
    assert out["auto"]["attn_implementation"] == "packed_sdpa" and out["sdpa"]["attn_implementation"] == "sdpa"
    old, new = _losses(tmp_path / "sdpa"), _losses(tmp_path / "auto")
    assert len(old) == len(new) == 8 and old[-1] < old[0]
    assert max(abs(a - b) for a, b in zip(old, new)) < 1e-4
    assert out["auto"]["micro_batch_size"] == 2 and out["auto"]["compile_s"] == 0.0  # CPU: configured, no compile


def test_run_micro_batch_is_only_the_buffer_size(corpus):
    """The step is 128 examples whatever buffer (run_micro_batch rows) they are packed into; any size works."""
    cfg = TrainConfig(micro_batch_size=8, grad_accum=16)
    assert cfg.run_micro_batch == "auto" and cfg.compile == "auto" and cfg.sequences_per_step == 128
    sources = sources_from_paths([corpus["shard"]])
    steps = {rows: PackedLoader(sources, 128, rows, seed=0).next_step(24) for rows in (2, 3, 24)}

    def examples(step) -> list[tuple[int, ...]]:
        out = []
        for b in step.batches:
            ids, pos = b["input_ids"].reshape(-1).tolist(), b["position_ids"].reshape(-1).tolist()
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            out += [tuple(ids[a:z]) for a, z in zip(starts[:-1], starts[1:]) if ids[a] != 0]
        return sorted(out)

    assert examples(steps[2]) == examples(steps[3]) == examples(steps[24]) and len(examples(steps[2])) == 24
    assert len(steps[24].batches) == 1
    cpu = torch.device("cpu")
    model = load_speech_lm(corpus["init"], "packed_sdpa")
    assert tuning.probe_micro_batch(model, cfg, 128, "packed_sdpa", cpu, torch.float32, DistEnv(), None) == 8
    fixed = TrainConfig(micro_batch_size=8, grad_accum=16, run_micro_batch=32)
    assert tuning.probe_micro_batch(model, fixed, 128, "packed_sdpa", cpu, torch.float32, DistEnv(), None) == 32
    assert not tuning.compile_enabled("auto", cpu) and tuning.compile_enabled(True, cpu)


def test_slam_preset_keeps_table_4_and_sizes_the_run_to_the_gpu():
    cfg = get_preset("slam")
    assert (cfg.train.micro_batch_size, cfg.train.grad_accum, cfg.train.sequences_per_step) == (8, 16, 128)
    assert cfg.train.run_micro_batch == "auto" and cfg.train.compile == "auto" and cfg.model.attn_implementation == "auto"
    assert apply_overrides(cfg, ["train.run_micro_batch=32"]).train.run_micro_batch == 32
    with pytest.raises(ConfigError, match="run_micro_batch"):
        apply_overrides(cfg, ["train.run_micro_batch=0"])


def test_background_reporter_keeps_order_flushes_and_reraises():
    seen, thread_names = [], set()
    reporter = BackgroundReporter()

    def record(x):
        thread_names.add(threading.current_thread().name)
        seen.append(x)

    for i in range(50):
        reporter.submit(record, i)
    reporter.flush()
    assert seen == list(range(50)) and thread_names == {"train-reporter"}
    reporter.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        reporter.flush()
    reporter.close()


# ---------------------------------------------------------------- CUDA ----------------------------------------
def _cuda_setup(corpus, attn: str):
    device = torch.device("cuda")
    model = load_speech_lm(corpus["init"], attn).to(device).train()
    cfg = TrainConfig(micro_batch_size=2, grad_accum=4)
    return device, model, cfg, make_optimizer(model, cfg, device, 1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_step_syncs_with_the_host_once(corpus):
    from slam_core.device import pick_attn_implementation
    from slam_core.lm.data import PrefetchingLoader

    attn = pick_attn_implementation("auto", torch.device("cuda"))
    device, model, cfg, optimizer = _cuda_setup(corpus, attn)
    loader = PrefetchingLoader(PackedLoader(sources_from_paths([corpus["shard"]]), 128, 2, seed=0), 8, pin_memory=True,
                               examples_per_step=4)
    try:
        step = lambda: train_step(model, model, model, optimizer, loader, 4, 0.5, device, torch.bfloat16, attn,  # noqa: E731
                                  DistEnv())
        step()  # warm-up: lazily created optimiser state, allocator
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            step()
        torch.cuda.set_sync_debug_mode("default")
        syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
        assert len(syncs) <= 1, syncs
    finally:
        loader.close()


def _weight_casts(model, batch, outer, inner) -> tuple[int, int]:
    """(linear weights, casts of tensors of their shapes) over three forwards inside `outer`, each in `inner()`."""
    from torch.profiler import ProfilerActivity, profile

    from slam_core.lm.step import packed_loss_sum

    linear = [p for name, p in model.named_parameters() if p.ndim == 2 and "embed" not in name]
    shapes = {tuple(p.shape) for p in linear}
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof, outer:
        for _ in range(3):
            with inner():
                packed_loss_sum(model, batch, "packed_sdpa")
    casts = [e for e in prof.events() if e.name == "aten::_to_copy" and e.input_shapes
             and tuple(e.input_shapes[0]) in shapes]
    return len(linear), len(casts)


def test_autocast_reuses_weight_casts_inside_an_outer_region(corpus):
    """The premise of step.weight_cast_scope, shown with CPU autocast: inner autocast regions inside one outer
    (disabled) region cast each weight once; without the outer region, once per forward."""
    model = load_speech_lm(corpus["init"], "packed_sdpa")
    batch = PackedLoader(sources_from_paths([corpus["shard"]]), 128, 2, seed=0).next_batch()
    inner = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731
    n, scoped = _weight_casts(model, batch, torch.autocast("cpu", dtype=torch.bfloat16, enabled=False), inner)
    _, unscoped = _weight_casts(model, batch, torch.autograd.grad_mode.enable_grad(), inner)
    assert scoped == n and unscoped == 3 * n


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_weights_are_cast_once_for_all_micro_steps(corpus):
    from slam_core.lm.step import autocast_for, weight_cast_scope

    device, model, _, _ = _cuda_setup(corpus, "packed_sdpa")
    batch = {k: v.to(device) for k, v in PackedLoader(sources_from_paths([corpus["shard"]]), 128, 2, seed=0)
             .next_batch().items()}
    n, casts = _weight_casts(model, batch, weight_cast_scope(device, torch.bfloat16),
                             lambda: autocast_for(device, torch.bfloat16))
    assert casts == n


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_probe_picks_a_fitting_divisor_and_caches_it(corpus, tmp_path):
    from slam_core.device import pick_attn_implementation

    attn = pick_attn_implementation("auto", torch.device("cuda"))
    device, model, _, _ = _cuda_setup(corpus, attn)
    cfg = TrainConfig(micro_batch_size=2, grad_accum=32)
    micro = tuning.probe_micro_batch(model, cfg, 128, attn, device, torch.bfloat16, DistEnv(), tmp_path)
    assert micro >= 2 and 64 % micro == 0
    assert (tmp_path / tuning.MICRO_BATCH_CACHE).exists()
    assert tuning.probe_micro_batch(model, cfg, 128, attn, device, torch.bfloat16, DistEnv(), tmp_path) == micro


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_compiled_layers_give_the_eager_loss(corpus):
    from slam_core.device import pick_attn_implementation
    from slam_core.lm.step import autocast_for, packed_loss_sum

    attn = pick_attn_implementation("auto", torch.device("cuda"))
    device, model, _, _ = _cuda_setup(corpus, attn)
    batch = {k: v.to(device) for k, v in PackedLoader(sources_from_paths([corpus["shard"]]), 128, 4, seed=0)
             .next_batch().items()}
    with torch.no_grad(), autocast_for(device, torch.bfloat16):
        eager = float(packed_loss_sum(model, batch, attn)[0])
        tuning.compile_decoder_layers(model)
        compiled = float(packed_loss_sum(model, batch, attn)[0])
    assert abs(compiled - eager) / abs(eager) < 2e-2


def test_gpu_bench_parts_resolve_and_fit_their_total():
    import importlib

    from bench.run_all import GPU_PARTS, GPU_TOTAL_S, GRACE_S

    # every part but the last (train_kernels: what is left) fits with its process start; the GPU check's 540 s
    # hold the bench's total, the installs and the rehearsal (scripts/gpu_check.sh)
    budgets = [budget for _, budget in GPU_PARTS.values()]
    assert sum(b + GRACE_S for b in budgets[:-1]) <= GPU_TOTAL_S <= 240
    for target, _ in GPU_PARTS.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function))
