"""Budgeted pre-training of the speech LM on packed unit rows, with exact resume.

Loss: next-token cross-entropy summed over all target tokens of an optimiser step and divided by their
count, so gradient accumulation gives exactly the token-weighted mean of one big batch.

Data parallelism lives in `slam_core.lm.distributed` (launched by `slam_core.lm.launch` under torchrun):
with a DistEnv of world size W, each rank packs the same stream and keeps every W-th micro-batch, runs
its share of the step's micro-batches (gradient all-reduce on the last only), and rank 0 writes checkpoints
and metrics. Loader position, schedule and stop decisions are identical on every rank, so resume works the
same, under any world size. A step always holds micro_batch_size x grad_accum *examples* (SlamKit's per-device
batch x accumulation: chunks of at most context_len tokens, `slam_core.lm.data`); the micro-batch actually run
(train.run_micro_batch rows of context_len tokens, `slam_core.lm.tuning`) is only the size of the token buffers
they are packed into, and the loader's position is kept in examples, so a run may resume with another
micro-batch (another GPU) on the same data and the same steps.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from slam_core.config import ModelConfig, TrainConfig
from slam_core.device import pick_attn_implementation, pick_device, pick_dtype
from slam_core.lm import distributed, tuning
from slam_core.lm.checkpoint import latest_checkpoint, restore_or_seed, rng_state, save_checkpoint
from slam_core.lm.attention import needs_whole_rows
from slam_core.lm.data import DataSource, PackedLoader, PrefetchingLoader, sources_from_paths
from slam_core.lm.distributed import DistEnv
from slam_core.lm.metrics import (
    METRIC_FIELDS, BackgroundReporter, MetricsLog, device_peak_flops, mfu, model_flops_per_token,
)
from slam_core.lm.model import load_speech_lm
from slam_core.lm.schedule import BudgetSchedule
from slam_core.lm.step import evaluate_loss, make_optimizer
from slam_core.lm.step import train_step as _train_step  # module-level name: tests count steps through it

log = logging.getLogger(__name__)

MAX_VAL_BATCHES = 64


def pretrain(init_dir: Path, shard_paths: list[Path], model_cfg: ModelConfig, train_cfg: TrainConfig,
             run_dir: Path, seed: int, device: str = "auto",
             progress: Callable[[float, str], None] | None = None, *,
             clock: Callable[[], float] = time.monotonic, stop_after_steps: int | None = None,
             dataset_weights: dict[str, float] | None = None, dist_env: DistEnv | None = None,
             tensorboard: bool = True, val_shards: dict[str, list[Path]] | None = None,
             cache_dir: Path | None = None) -> dict:
    """Pre-train from `init_dir` (or resume from run_dir's latest checkpoint) within train_cfg.budget_s.

    Shards are grouped into one data source per dataset directory (units/<dataset>/<split>/); documents
    are mixed by `dataset_weights` (dataset name -> weight; default train_cfg.dataset_weights, and when that is
    unset each dataset's number of documents). `val_shards` (name -> shards, e.g. "librispeech/dev-clean") are
    held-out sets whose loss is reported one column each (`val_loss/<name>`), besides `val_loss` of
    train_cfg.val_fraction.
    `stop_after_steps` ends this call after that many steps with a checkpoint, as a pre-emption would
    (drills/tests); a later call resumes. `dist_env`: this rank of a torchrun job (default: one process).
    `cache_dir` keeps the probed micro-batch per GPU model (train.run_micro_batch=auto) and the shards' token
    stores (`slam_core.lm.examples`, built once before the budget clock starts).
    Metrics go to run_dir/metrics.csv and, with `tensorboard`, run_dir/tensorboard/; they and `progress` are
    handed to a background thread.
    Returns {"final_checkpoint", "steps", "tokens_seen", "elapsed_s", "final_loss", "val_loss", "val_losses" (per
    held-out set), "mix" (dataset -> probability), "skipped", "param_checksum", "compile_s", "micro_batch_size",
    "examples_per_step", "micro_batches_per_step" (mean per rank), "buffer_fill" (real tokens / buffer tokens),
    "attn_implementation"}; skipped: (segment_id, reason, detail) of documents left out (no units, or not fitting
    the vocabulary).
    """
    env = dist_env or DistEnv()
    run_dir = Path(run_dir)
    dev = distributed.setup(env, pick_device(device))
    dtype = pick_dtype(model_cfg.dtype, dev)
    attn = pick_attn_implementation(model_cfg.attn_implementation, dev)
    ckpt = latest_checkpoint(run_dir)
    model = load_speech_lm(ckpt or Path(init_dir), attn).to(dev)
    model.train()
    flops_tok = model_flops_per_token(model, model_cfg.context_len)  # before sharding: full parameter count
    restored = restore_or_seed(ckpt, seed)
    state, info = restored if restored is not None else ({}, {})
    sources = sources_from_paths(shard_paths, dataset_weights if dataset_weights is not None
                                 else train_cfg.dataset_weights)
    store_dir = Path(cache_dir) / "examples" if cache_dir is not None else None
    build_start = time.monotonic()
    # token stores are data preparation (SlamKit tokenises and chunks before its trainer's clock starts)
    loader = PackedLoader(sources, model_cfg.context_len, train_cfg.micro_batch_size, seed, "train",
                          train_cfg.val_fraction, vocab_size=model.config.vocab_size, rank=env.rank,
                          world_size=env.world_size, store_dir=store_dir, whole_rows=needs_whole_rows(attn))
    log.info("training examples %s (chunks of <= %d tokens) ready in %.1f s", loader.n_examples(),
             model_cfg.context_len, time.monotonic() - build_start)
    elapsed0 = info.get("elapsed_s", 0.0)
    t_start = clock() - elapsed0  # probing and compiling below count against the budget
    micro, compile_s = _speed_setup(model, model_cfg, train_cfg, attn, dev, dtype, env, cache_dir)
    wrapped = distributed.wrap_model(model, env, dev)
    optimizer = make_optimizer(model, train_cfg, dev, train_cfg.lr)  # after wrapping: FSDP2 params are DTensors
    val_sets = {name: [Path(p) for p in paths] for name, paths in sorted((val_shards or {}).items())}
    mix = loader.mix  # probability of each set's next example
    log.info("pre-training mix %s; held-out sets %s", mix, list(val_sets) or "none")
    loader.micro_batch_size = micro  # the token buffers' rows: a speed setting, not part of the data position
    step, tokens_seen, loss = 0, 0, None
    if restored is not None:  # every rank restores the same (rank 0's) state
        distributed.load_optimizer_state(model, optimizer, state["optimizer"], env)
        loader.load_state_dict(state["loader"])
        step, tokens_seen, loss = info["step"], info["tokens_seen"], info.get("loss")
    examples_per_step = train_cfg.sequences_per_step
    if dev.type == "cuda":  # pack on a CPU thread while the GPU computes
        loader = PrefetchingLoader(loader, depth=2, pin_memory=True, examples_per_step=examples_per_step)
    # created after probing and compilation, so its calibration times training steps only
    sched = budget_schedule(train_cfg, step, state.get("schedule"))
    metrics = (MetricsLog(run_dir / "metrics.csv", step, METRIC_FIELDS + [f"val_loss/{n}" for n in val_sets],
                          tensorboard_dir=run_dir / "tensorboard" if tensorboard else None)
               if env.is_main else None)
    reporter = BackgroundReporter()
    peak = device_peak_flops(dev, dtype)
    elapsed = elapsed0
    window_tokens, tokens_this_call, n_buffers, buffer_tokens, n_steps_packed = 0, 0, 0, 0, 0
    last_ckpt_s, last_log = elapsed0, (step, elapsed0)
    saved_step, steps_this_call = (step if ckpt is not None else -1), 0

    def save() -> Path:
        nonlocal saved_step
        reporter.flush()  # every logged step is on disk before the checkpoint that a resume starts from
        model_state, optim_state = distributed.full_state(model, optimizer, env)  # collective under FSDP
        saved_step = step
        if env.is_main:
            trainer_state = {"optimizer": optim_state, "loader": loader.state_dict(), "rng": rng_state(),
                             "schedule": sched.state_dict()}
            info = {"tokens_seen": tokens_seen, "elapsed_s": elapsed, "total_steps": sched.expected_total_steps,
                    "loss": loss, "world_size": env.world_size, "schedule": sched.state_dict()}
            saver = distributed.FullStateSaver(model, model_state) if model_state is not None else model
            save_checkpoint(run_dir, step, saver, trainer_state, info, train_cfg.keep_checkpoints)
        distributed.barrier(env)  # no rank runs ahead of (or reads) a half-written checkpoint
        return latest_checkpoint(run_dir)

    try:
        while not sched.done(step, elapsed):
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                break
            lr = sched.lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, grad_norm, packed = _train_step(wrapped, wrapped, model, optimizer, loader, examples_per_step,
                                                  train_cfg.grad_clip, dev, dtype, attn, env)
            step, steps_this_call, tokens_seen = step + 1, steps_this_call + 1, tokens_seen + packed.n_tokens
            window_tokens, tokens_this_call = window_tokens + packed.n_tokens, tokens_this_call + packed.n_tokens
            n_steps_packed, n_buffers = n_steps_packed + 1, n_buffers + len(packed.batches)
            buffer_tokens += packed.n_buffers * micro * model_cfg.context_len
            # every rank uses the slowest rank's clock, so schedule/checkpoint/stop decisions agree
            elapsed = distributed.max_across([clock() - t_start], env, dev)[0]
            sched.end_step(step - 1, elapsed)
            if metrics is not None and (step % train_cfg.log_every_steps == 0 or sched.done(step, elapsed)):
                tok_s = window_tokens / max(elapsed - last_log[1], 1e-9)  # real tokens, padding not counted
                window_tokens = 0
                util = mfu(tok_s, flops_tok, peak)
                reporter.submit(metrics.append, {
                    "step": step, "loss": round(loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                    "tokens_per_s": round(tok_s, 1), "mfu": round(util, 4) if util is not None else None,
                    "tokens_seen": tokens_seen, "elapsed_s": round(elapsed, 3)})
                last_log = (step, elapsed)
                log.info("step %d/%s loss %.4f lr %.2e %.0f tok/s", step, sched.expected_total_steps or "?", loss, lr,
                         tok_s)
            if progress is not None and env.is_main:
                reporter.submit(progress, sched.fraction_done(step, elapsed),
                                f"step {step}/{sched.expected_total_steps or '?'} loss {loss:.4f}")
            if elapsed - last_ckpt_s >= train_cfg.checkpoint_every_s:
                save()
                last_ckpt_s = elapsed
        final = save() if saved_step != step else latest_checkpoint(run_dir)
    finally:
        reporter.close()
        if isinstance(loader, PrefetchingLoader):
            loader.close()
    finished = stop_after_steps is None or steps_this_call < stop_after_steps
    val_loss = _final_val_loss(model, sources, model_cfg, train_cfg, micro, seed, dev, dtype, attn,
                               store_dir) if finished else None
    set_losses = ({name: _held_out_loss(model, paths, model_cfg, micro, seed, dev, dtype, attn, store_dir)
                   for name, paths in val_sets.items()} if finished else {})
    if metrics is not None:
        if val_loss is not None or any(v is not None for v in set_losses.values()):
            metrics.append({"step": step, "val_loss": None if val_loss is None else round(val_loss, 6),
                            **{f"val_loss/{n}": round(v, 6) for n, v in set_losses.items() if v is not None},
                            "tokens_seen": tokens_seen, "elapsed_s": round(elapsed, 3)})
        metrics.close()
    return {"final_checkpoint": str(final), "steps": step, "tokens_seen": tokens_seen, "elapsed_s": elapsed,
            "final_loss": loss, "val_loss": val_loss, "val_losses": set_losses, "mix": mix,
            "skipped": loader.skipped_items(),
            "param_checksum": distributed.param_checksum(model), "compile_s": compile_s, "micro_batch_size": micro,
            "examples_per_step": examples_per_step,
            "micro_batches_per_step": round(n_buffers / n_steps_packed, 3) if n_steps_packed else None,
            "buffer_fill": round(tokens_this_call / buffer_tokens, 4) if buffer_tokens else None,
            "attn_implementation": attn}


def budget_schedule(train_cfg: TrainConfig, step: int = 0, state: dict | None = None) -> BudgetSchedule:
    """The pre-training LR schedule of `train_cfg`, restored from a checkpoint's schedule state when given (a
    checkpoint without one, from before schedules were saved, calibrates afresh from `step`)."""
    sched = BudgetSchedule(train_cfg.budget_s, train_cfg.lr, train_cfg.min_lr, train_cfg.warmup_frac,
                           train_cfg.calibration_steps, train_cfg.max_steps, start_step=step,
                           warmup_min_steps=train_cfg.warmup_min_steps, untimed_steps=train_cfg.untimed_steps,
                           fixed_total=train_cfg.schedule_by == "steps")
    if state and "version" in state:
        sched.load_state_dict(state)
    return sched


def _speed_setup(model: torch.nn.Module, model_cfg: ModelConfig, train_cfg: TrainConfig, attn: str,
                 device: torch.device, dtype: torch.dtype, env: DistEnv, cache_dir: Path | None
                 ) -> tuple[int, float]:
    """Fused kernels, micro-batch size (rows of context_len per token buffer, probed eagerly), then regional
    compile, compiled now by one synthetic micro-step so that its time is known, charged to the budget and kept
    out of the schedule's calibration. Returns (micro-batch, compile seconds)."""
    if train_cfg.liger_kernels:
        tuning.apply_liger(model)
    micro = tuning.probe_micro_batch(model, train_cfg, model_cfg.context_len, attn, device, dtype, env, cache_dir)
    compile_s = 0.0
    if tuning.compile_enabled(train_cfg.compile, device):
        n_blocks = tuning.compile_decoder_layers(model)
        if not (env.enabled and env.fsdp):  # FSDP2 swaps parameters after sharding: there the first step compiles
            compile_s = tuning.warm_up(model, micro, model_cfg.context_len, attn, device, dtype)
        log.info("compiled %d decoder layers in %.1f s (counted in the budget)", n_blocks, compile_s)
    return micro, compile_s


def _final_val_loss(model: torch.nn.Module, sources: list, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    micro: int, seed: int, device: torch.device, dtype: torch.dtype, attn: str,
                    store_dir: Path | None) -> float | None:
    """Every rank scores the whole (small, capped) validation set: the same forwards on every rank keep FSDP's
    collectives in step, and the result needs no reduction."""
    if train_cfg.val_fraction <= 0:
        return None
    val_loader = PackedLoader(sources, model_cfg.context_len, micro, seed, "val", train_cfg.val_fraction,
                              vocab_size=model.config.vocab_size, store_dir=store_dir, whole_rows=needs_whole_rows(attn))
    return _eager_loss(model, val_loader, device, dtype, attn)


def _held_out_loss(model: torch.nn.Module, shards: list[Path], model_cfg: ModelConfig, micro: int, seed: int,
                   device: torch.device, dtype: torch.dtype, attn: str, store_dir: Path | None) -> float | None:
    """Loss on a whole held-out set (every document of its shards: val_fraction 1), capped like the val split."""
    loader = PackedLoader([DataSource("held-out", shards)], model_cfg.context_len, micro, seed, "val", 1.0,
                          vocab_size=model.config.vocab_size, store_dir=store_dir, whole_rows=needs_whole_rows(attn))
    return _eager_loss(model, loader, device, dtype, attn)


def _eager_loss(model: torch.nn.Module, loader: PackedLoader, device: torch.device, dtype: torch.dtype,
                attn: str) -> float | None:
    """Scoring runs eager: a pass's last, shorter batch would otherwise recompile the layers at the run's end."""
    with torch.compiler.set_stance("force_eager"):
        return evaluate_loss(model, loader, device, dtype, attn, MAX_VAL_BATCHES)
