"""Budgeted pre-training of the speech LM on packed unit rows, with exact resume.

Loss: next-token cross-entropy summed over all target tokens of an optimiser step and divided by their
count, so gradient accumulation gives exactly the token-weighted mean of one big batch.

Data parallelism lives in `slam_core.lm.distributed` (launched by `slam_core.lm.launch` under torchrun):
with a DistEnv of world size W, each rank packs the same stream and keeps every W-th micro-batch, runs
grad_accum / W micro-steps (gradient all-reduce on the last only), and rank 0 writes checkpoints and
metrics. Loader position, schedule and stop decisions are identical on every rank, so resume works the
same, under any world size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from slam_core.config import ModelConfig, TrainConfig
from slam_core.device import pick_attn_implementation, pick_device, pick_dtype
from slam_core.lm import distributed
from slam_core.lm.checkpoint import latest_checkpoint, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from slam_core.lm.data import IGNORE_INDEX, DataSource, PackedLoader, PrefetchingLoader, sources_from_paths
from slam_core.lm.distributed import DistEnv
from slam_core.lm.metrics import (  # noqa: F401  (re-exported: dpo and tests import them from here)
    METRIC_FIELDS, MetricsLog, device_peak_flops, mfu, model_flops_per_token,
)
from slam_core.lm.model import load_speech_lm
from slam_core.lm.schedule import BudgetSchedule

log = logging.getLogger(__name__)

MAX_VAL_BATCHES = 64


def autocast_for(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast on CUDA; plain fp32 elsewhere."""
    if device.type == "cuda" and dtype != torch.float32:
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def packed_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], flatten: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token CE over target tokens, number of targets) of a packed micro-batch, as 0-d tensors
    (no host sync).

    No attention_mask and no KV cache: HF derives the per-document causal mask from `position_ids`.
    `flatten` turns [B, L] into [1, B*L] (flash_attention_2 only detects packing at batch size 1); row
    starts are segment starts with label -100, so flattening changes nothing else.
    """
    ids, pos, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    shape = ids.shape
    if flatten:
        ids, pos = ids.reshape(1, -1), pos.reshape(1, -1)
    logits = model(input_ids=ids, position_ids=pos, use_cache=False).logits.reshape(*shape, -1)
    targets = labels[:, 1:]
    loss_sum = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                               ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (targets != IGNORE_INDEX).sum()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, lr: float) -> torch.optim.AdamW:
    """AdamW: fused kernels on CUDA, foreach on CPU."""
    on_cuda = device.type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=on_cuda or None, foreach=None if on_cuda else True)


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, loader: PackedLoader, device: torch.device, dtype: torch.dtype,
                  flatten: bool = False, max_batches: int = MAX_VAL_BATCHES) -> float | None:
    """Token-weighted mean CE over (at most max_batches of) a finite loader; None if it has no tokens."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        with autocast_for(device, dtype):
            loss_sum, n = packed_loss_sum(model, {k: v.to(device) for k, v in batch.items()}, flatten)
        total, count = total + float(loss_sum), count + int(n)
    model.train(was_training)
    return total / count if count else None


def pretrain(init_dir: Path, shard_paths: list[Path], model_cfg: ModelConfig, train_cfg: TrainConfig,
             run_dir: Path, seed: int, device: str = "auto",
             progress: Callable[[float, str], None] | None = None, *,
             clock: Callable[[], float] = time.monotonic, stop_after_steps: int | None = None,
             dataset_weights: dict[str, float] | None = None, dist_env: DistEnv | None = None,
             tensorboard: bool = True, val_shards: dict[str, list[Path]] | None = None) -> dict:
    """Pre-train from `init_dir` (or resume from run_dir's latest checkpoint) within train_cfg.budget_s.

    Shards are grouped into one data source per dataset directory (units/<dataset>/<split>/); documents
    are mixed by `dataset_weights` (dataset name -> weight; default train_cfg.dataset_weights, and when that is
    unset each dataset's number of documents). `val_shards` (name -> shards, e.g. "librispeech/dev-clean") are
    held-out sets whose loss is reported one column each (`val_loss/<name>`), besides `val_loss` of
    train_cfg.val_fraction.
    `stop_after_steps` ends this call after that many steps with a checkpoint, as a pre-emption would
    (drills/tests); a later call resumes. `dist_env`: this rank of a torchrun job (default: one process).
    Metrics go to run_dir/metrics.csv and, with `tensorboard`, run_dir/tensorboard/.
    Returns {"final_checkpoint", "steps", "tokens_seen", "elapsed_s", "final_loss", "val_loss", "skipped",
    "param_checksum"}; skipped: (segment_id, reason, detail) of documents with no units.
    """
    env = dist_env or DistEnv()
    run_dir = Path(run_dir)
    accum = distributed.per_rank_grad_accum(train_cfg.grad_accum, env.world_size)
    dev = distributed.setup(env, pick_device(device))
    dtype = pick_dtype(model_cfg.dtype, dev)
    attn = pick_attn_implementation(model_cfg.attn_implementation, dev)
    flatten = attn == "flash_attention_2"
    ckpt = latest_checkpoint(run_dir)
    model = load_speech_lm(ckpt or Path(init_dir), attn).to(dev)
    model.train()
    flops_tok = model_flops_per_token(model, model_cfg.context_len)  # before sharding: full parameter count
    wrapped = distributed.wrap_model(model, env, dev)
    forward_model = torch.compile(wrapped) if train_cfg.compile else wrapped
    optimizer = make_optimizer(model, train_cfg, dev, train_cfg.lr)  # after wrapping: FSDP2 params are DTensors
    sources = sources_from_paths(shard_paths, dataset_weights if dataset_weights is not None
                                 else train_cfg.dataset_weights)
    val_sets = {name: [Path(p) for p in paths] for name, paths in sorted((val_shards or {}).items())}
    loader = PackedLoader(sources, model_cfg.context_len, train_cfg.micro_batch_size, seed, "train",
                          train_cfg.val_fraction, vocab_size=model.config.vocab_size, rank=env.rank,
                          world_size=env.world_size)
    step, tokens_seen, elapsed0, sched_state, loss = _restore(ckpt, model, optimizer, loader, seed, env)
    if dev.type == "cuda":  # pack on a CPU thread while the GPU computes
        loader = PrefetchingLoader(loader, depth=2 * accum, pin_memory=True)
    sched = budget_schedule(train_cfg, step, sched_state)
    metrics = (MetricsLog(run_dir / "metrics.csv", step, METRIC_FIELDS + [f"val_loss/{n}" for n in val_sets],
                          tensorboard_dir=run_dir / "tensorboard" if tensorboard else None)
               if env.is_main else None)
    peak = device_peak_flops(dev, dtype)
    tokens_per_step = train_cfg.grad_accum * train_cfg.micro_batch_size * model_cfg.context_len  # global batch
    t_start = clock() - elapsed0
    elapsed = elapsed0
    last_ckpt_s, last_log = elapsed0, (step, elapsed0)
    saved_step, steps_this_call = (step if ckpt is not None else -1), 0

    def save() -> Path:
        nonlocal saved_step
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
            loss, grad_norm = _train_step(forward_model, wrapped, model, optimizer, loader, accum, train_cfg.grad_clip,
                                          dev, dtype, flatten, env)
            step, steps_this_call, tokens_seen = step + 1, steps_this_call + 1, tokens_seen + tokens_per_step
            # every rank uses the slowest rank's clock, so schedule/checkpoint/stop decisions agree
            elapsed = distributed.max_across([clock() - t_start], env, dev)[0]
            sched.end_step(step - 1, elapsed)
            if metrics is not None and (step % train_cfg.log_every_steps == 0 or sched.done(step, elapsed)):
                tok_s = (step - last_log[0]) * tokens_per_step / max(elapsed - last_log[1], 1e-9)
                util = mfu(tok_s, flops_tok, peak)
                metrics.append({"step": step, "loss": round(loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                                "tokens_per_s": round(tok_s, 1), "mfu": round(util, 4) if util is not None else None,
                                "tokens_seen": tokens_seen, "elapsed_s": round(elapsed, 3)})
                last_log = (step, elapsed)
                log.info("step %d/%s loss %.4f lr %.2e %.0f tok/s", step, sched.expected_total_steps or "?", loss, lr,
                         tok_s)
            if progress is not None and env.is_main:
                progress(sched.fraction_done(step, elapsed),
                         f"step {step}/{sched.expected_total_steps or '?'} loss {loss:.4f}")
            if elapsed - last_ckpt_s >= train_cfg.checkpoint_every_s:
                save()
                last_ckpt_s = elapsed
        final = save() if saved_step != step else latest_checkpoint(run_dir)
    finally:
        if isinstance(loader, PrefetchingLoader):
            loader.close()
    finished = stop_after_steps is None or steps_this_call < stop_after_steps
    val_loss = _final_val_loss(model, sources, model_cfg, train_cfg, seed, dev, dtype, flatten) if finished else None
    set_losses = ({name: _held_out_loss(model, paths, model_cfg, train_cfg, seed, dev, dtype, flatten)
                   for name, paths in val_sets.items()} if finished else {})
    if metrics is not None:
        if val_loss is not None or any(v is not None for v in set_losses.values()):
            metrics.append({"step": step, "val_loss": None if val_loss is None else round(val_loss, 6),
                            **{f"val_loss/{n}": round(v, 6) for n, v in set_losses.items() if v is not None},
                            "tokens_seen": tokens_seen, "elapsed_s": round(elapsed, 3)})
        metrics.close()
    return {"final_checkpoint": str(final), "steps": step, "tokens_seen": tokens_seen, "elapsed_s": elapsed,
            "final_loss": loss, "val_loss": val_loss, "val_losses": set_losses, "skipped": loader.skipped_items(),
            "param_checksum": distributed.param_checksum(model)}


def budget_schedule(train_cfg: TrainConfig, step: int = 0, state: dict | None = None) -> BudgetSchedule:
    """The pre-training LR schedule of `train_cfg`, restored from a checkpoint's schedule state when given (a
    checkpoint without one, from before schedules were saved, calibrates afresh from `step`)."""
    sched = BudgetSchedule(train_cfg.budget_s, train_cfg.lr, train_cfg.min_lr, train_cfg.warmup_frac,
                           train_cfg.calibration_steps, train_cfg.max_steps, start_step=step,
                           warmup_min_steps=train_cfg.warmup_min_steps, untimed_steps=train_cfg.untimed_steps)
    if state and "version" in state:
        sched.load_state_dict(state)
    return sched


def _restore(ckpt: Path | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer, loader: PackedLoader,
             seed: int, env: DistEnv) -> tuple[int, int, float, dict | None, float | None]:
    """Load optimiser/loader/RNG state of a checkpoint (or seed a fresh run).

    Returns (step, tokens_seen, elapsed_s, schedule state, loss). Every rank restores the same (rank 0's) RNG
    state; the loop draws no random numbers (dropout is off), so this only matters for bitwise resume.
    """
    if ckpt is None:
        torch.manual_seed(seed)
        return 0, 0, 0.0, None, None
    state, info = load_trainer_state(ckpt)
    distributed.load_optimizer_state(model, optimizer, state["optimizer"], env)
    loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
    log.info("resuming from %s (step %d, %.1f s of budget used)", ckpt, info["step"], info["elapsed_s"])
    return info["step"], info["tokens_seen"], info["elapsed_s"], state.get("schedule"), info.get("loss")


def _train_step(forward_model: torch.nn.Module, wrapped: torch.nn.Module, model: torch.nn.Module,
                optimizer: torch.optim.Optimizer, loader: PackedLoader | PrefetchingLoader, accum: int,
                grad_clip: float, device: torch.device, dtype: torch.dtype, flatten: bool, env: DistEnv
                ) -> tuple[float, float]:
    """One optimiser step over `accum` micro-batches per rank; returns (mean token loss, grad norm).

    Each rank scales its summed loss by world_size / (targets over all ranks): DDP/FSDP average gradients
    over ranks, so the result is the token-weighted mean over the whole global batch.
    """
    batches = [loader.next_batch() for _ in range(accum)]
    n_local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    n_targets = max(int(distributed.sum_across([float(n_local)], env, device)[0]), 1)
    total = torch.zeros((), device=device)
    for i, batch in enumerate(batches):
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with distributed.grad_sync(wrapped, env, sync=i == accum - 1):  # all-reduce on the last micro-step only
            with autocast_for(device, dtype):
                loss_sum, _ = packed_loss_sum(forward_model, batch, flatten)
            (loss_sum / n_targets * env.world_size).backward()
        total += loss_sum.detach()  # no host sync per micro-batch
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss_total = distributed.sum_across([float(total)], env, device)[0]
    return loss_total / n_targets, distributed.as_local_float(grad_norm)


def _final_val_loss(model: torch.nn.Module, sources: list, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    seed: int, device: torch.device, dtype: torch.dtype, flatten: bool) -> float | None:
    """Every rank scores the whole (small, capped) validation set: the same forwards on every rank keep FSDP's
    collectives in step, and the result needs no reduction."""
    if train_cfg.val_fraction <= 0:
        return None
    val_loader = PackedLoader(sources, model_cfg.context_len, train_cfg.micro_batch_size, seed, "val",
                              train_cfg.val_fraction, vocab_size=model.config.vocab_size)
    return evaluate_loss(model, val_loader, device, dtype, flatten)


def _held_out_loss(model: torch.nn.Module, shards: list[Path], model_cfg: ModelConfig, train_cfg: TrainConfig,
                   seed: int, device: torch.device, dtype: torch.dtype, flatten: bool) -> float | None:
    """Loss on a whole held-out set (every document of its shards: val_fraction 1), capped like the val split."""
    loader = PackedLoader([DataSource("held-out", shards)], model_cfg.context_len, train_cfg.micro_batch_size, seed,
                          "val", 1.0, vocab_size=model.config.vocab_size)
    return evaluate_loss(model, loader, device, dtype, flatten)
