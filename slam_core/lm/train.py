"""Budgeted pre-training of the speech LM on packed unit rows, with exact resume.

The loop is single-process and parallelism-free (a DDP/FSDP launcher can wrap the model and loader later).
Loss: next-token cross-entropy summed over all target tokens of an optimiser step and divided by their
count, so gradient accumulation gives exactly the token-weighted mean of one big batch.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from slam_core.atomic import write_text_atomic
from slam_core.config import ModelConfig, TrainConfig
from slam_core.device import pick_attn_implementation, pick_device, pick_dtype
from slam_core.lm.checkpoint import latest_checkpoint, load_trainer_state, rng_state, save_checkpoint, set_rng_state
from slam_core.lm.data import IGNORE_INDEX, PackedLoader, PrefetchingLoader, sources_from_paths
from slam_core.lm.model import count_parameters, load_speech_lm
from slam_core.lm.schedule import BudgetSchedule

log = logging.getLogger(__name__)

METRIC_FIELDS = ["step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "tokens_seen", "elapsed_s", "val_loss"]
MAX_VAL_BATCHES = 64
# Dense bf16 peaks (FLOP/s) by substring of the CUDA device name; unknown devices get MFU = null.
_BF16_PEAK_FLOPS = {"H200": 989.4e12, "H100 PCIe": 756.5e12, "H100": 989.4e12, "A100": 312e12, "A5000": 111e12,
                    "L40S": 362e12, "A6000": 155e12, "4090": 165e12}


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


def flops_per_token(model: torch.nn.Module, context_len: int) -> float:
    """6N + attention (12 * layers * hidden * T, non-causal count, as in perf-anchors §1.1)."""
    cfg = model.config
    n_layers = getattr(cfg, "num_hidden_layers", 0)
    hidden = getattr(cfg, "hidden_size", 0)
    return 6.0 * count_parameters(model) + 12.0 * n_layers * hidden * context_len


def device_peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Dense peak for the training dtype, or None when unknown (CPU, fp32, unlisted GPU)."""
    if device.type != "cuda" or dtype != torch.bfloat16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in _BF16_PEAK_FLOPS.items() if key in name), None)


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, lr: float) -> torch.optim.AdamW:
    """AdamW: fused kernels on CUDA, foreach on CPU."""
    on_cuda = device.type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay,
                             fused=on_cuda or None, foreach=None if on_cuda else True)


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


class MetricsLog:
    """A metrics CSV; on resume, rows after the restored step are dropped (they will be redone)."""

    def __init__(self, path: Path, resume_step: int, fields: list[str] = METRIC_FIELDS) -> None:
        self.path, self.fields = path, fields
        if path.exists():
            rows = [r for r in csv.DictReader(path.open()) if int(r["step"]) <= resume_step]
            buf = io.StringIO()
            writer = csv.DictWriter(buf, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            write_text_atomic(path, buf.getvalue())
        else:
            write_text_atomic(path, ",".join(fields) + "\n")

    def append(self, row: dict[str, Any]) -> None:
        with self.path.open("a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerow({k: row.get(k) for k in self.fields})


def pretrain(init_dir: Path, shard_paths: list[Path], model_cfg: ModelConfig, train_cfg: TrainConfig,
             run_dir: Path, seed: int, device: str = "auto",
             progress: Callable[[float, str], None] | None = None, *,
             clock: Callable[[], float] = time.monotonic, stop_after_steps: int | None = None,
             dataset_weights: dict[str, float] | None = None) -> dict:
    """Pre-train from `init_dir` (or resume from run_dir's latest checkpoint) within train_cfg.budget_s.

    Shards are grouped into one data source per dataset directory (units/<dataset>/<split>/); documents
    are mixed by `dataset_weights` (dataset name -> weight, default 1 each).
    `stop_after_steps` ends this call after that many steps with a checkpoint, as a pre-emption would
    (drills/tests); a later call resumes. Returns {"final_checkpoint", "steps", "tokens_seen", "elapsed_s",
    "final_loss", "val_loss", "skipped"}; skipped: (segment_id, reason, detail) of documents with no units.
    """
    run_dir = Path(run_dir)
    dev = pick_device(device)
    dtype = pick_dtype(model_cfg.dtype, dev)
    attn = pick_attn_implementation(model_cfg.attn_implementation, dev)
    flatten = attn == "flash_attention_2"
    ckpt = latest_checkpoint(run_dir)
    model = load_speech_lm(ckpt or Path(init_dir), attn).to(dev)
    model.train()
    forward_model = torch.compile(model) if train_cfg.compile else model
    optimizer = make_optimizer(model, train_cfg, dev, train_cfg.lr)
    sources = sources_from_paths(shard_paths, dataset_weights)
    loader = PackedLoader(sources, model_cfg.context_len, train_cfg.micro_batch_size, seed, "train",
                          train_cfg.val_fraction, vocab_size=model.config.vocab_size)
    step, tokens_seen, elapsed0, total0, loss = _restore(ckpt, optimizer, loader, seed)
    if dev.type == "cuda":  # pack on a CPU thread while the GPU computes
        loader = PrefetchingLoader(loader, depth=2 * train_cfg.grad_accum, pin_memory=True)
    sched = BudgetSchedule(train_cfg.budget_s, train_cfg.lr, train_cfg.min_lr, train_cfg.warmup_frac,
                           train_cfg.calibration_steps, train_cfg.max_steps, start_step=step, total_steps=total0)
    metrics = MetricsLog(run_dir / "metrics.csv", step)
    flops_tok, peak = flops_per_token(model, model_cfg.context_len), device_peak_flops(dev, dtype)
    tokens_per_step = train_cfg.grad_accum * train_cfg.micro_batch_size * model_cfg.context_len
    t_start = clock() - elapsed0
    elapsed = elapsed0
    last_ckpt_s, last_log = elapsed0, (step, elapsed0)
    saved_step, steps_this_call = (step if ckpt is not None else -1), 0

    def save() -> Path:
        nonlocal saved_step
        trainer_state = {"optimizer": optimizer.state_dict(), "loader": loader.state_dict(), "rng": rng_state(),
                         "schedule": {"step": step, "total_steps": sched.total_steps}}
        info = {"tokens_seen": tokens_seen, "elapsed_s": elapsed, "total_steps": sched.total_steps, "loss": loss}
        saved_step = step
        return save_checkpoint(run_dir, step, model, trainer_state, info, train_cfg.keep_checkpoints)

    try:
        while not sched.done(step, elapsed):
            if stop_after_steps is not None and steps_this_call >= stop_after_steps:
                break
            lr = sched.lr(step)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, grad_norm = _train_step(forward_model, model, optimizer, loader, train_cfg, dev, dtype, flatten)
            step, steps_this_call, tokens_seen = step + 1, steps_this_call + 1, tokens_seen + tokens_per_step
            elapsed = clock() - t_start
            sched.end_step(step - 1, elapsed)
            if step % train_cfg.log_every_steps == 0 or step == sched.total_steps:
                tok_s = (step - last_log[0]) * tokens_per_step / max(elapsed - last_log[1], 1e-9)
                mfu = round(tok_s * flops_tok / peak, 4) if peak else None
                metrics.append({"step": step, "loss": round(loss, 6), "lr": lr, "grad_norm": round(grad_norm, 6),
                                "tokens_per_s": round(tok_s, 1), "mfu": mfu, "tokens_seen": tokens_seen,
                                "elapsed_s": round(elapsed, 3)})
                last_log = (step, elapsed)
                log.info("step %d/%d loss %.4f lr %.2e %.0f tok/s", step, sched.total_steps, loss, lr, tok_s)
            if progress is not None:
                progress(min(1.0, step / sched.total_steps), f"step {step}/{sched.total_steps} loss {loss:.4f}")
            if elapsed - last_ckpt_s >= train_cfg.checkpoint_every_s:
                save()
                last_ckpt_s = elapsed
        final = save() if saved_step != step else latest_checkpoint(run_dir)
    finally:
        if isinstance(loader, PrefetchingLoader):
            loader.close()
    finished = stop_after_steps is None or steps_this_call < stop_after_steps
    val_loss = _final_val_loss(model, sources, model_cfg, train_cfg, seed, dev, dtype, flatten) if finished else None
    if val_loss is not None:
        metrics.append({"step": step, "val_loss": round(val_loss, 6), "tokens_seen": tokens_seen,
                        "elapsed_s": round(elapsed, 3)})
    return {"final_checkpoint": str(final), "steps": step, "tokens_seen": tokens_seen, "elapsed_s": elapsed,
            "final_loss": loss, "val_loss": val_loss, "skipped": loader.skipped_items()}


def _restore(ckpt: Path | None, optimizer: torch.optim.Optimizer, loader: PackedLoader, seed: int
             ) -> tuple[int, int, float, int | None, float | None]:
    """Load optimiser/loader/RNG state of a checkpoint (or seed a fresh run).

    Returns (step, tokens_seen, elapsed_s, total_steps, loss).
    """
    if ckpt is None:
        torch.manual_seed(seed)
        return 0, 0, 0.0, None, None
    state, info = load_trainer_state(ckpt)
    optimizer.load_state_dict(state["optimizer"])
    loader.load_state_dict(state["loader"])
    set_rng_state(state["rng"])
    log.info("resuming from %s (step %d, %.1f s of budget used)", ckpt, info["step"], info["elapsed_s"])
    return info["step"], info["tokens_seen"], info["elapsed_s"], info["total_steps"], info.get("loss")


def _train_step(forward_model: torch.nn.Module, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                loader: PackedLoader | PrefetchingLoader, cfg: TrainConfig, device: torch.device, dtype: torch.dtype,
                flatten: bool) -> tuple[float, float]:
    """One optimiser step over cfg.grad_accum micro-batches; returns (mean token loss, grad norm)."""
    batches = [loader.next_batch() for _ in range(cfg.grad_accum)]
    n_targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    total = torch.zeros((), device=device)
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with autocast_for(device, dtype):
            loss_sum, _ = packed_loss_sum(forward_model, batch, flatten)
        (loss_sum / max(n_targets, 1)).backward()
        total += loss_sum.detach()  # no host sync per micro-batch
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(total) / max(n_targets, 1), float(grad_norm)


def _final_val_loss(model: torch.nn.Module, sources: list, model_cfg: ModelConfig, train_cfg: TrainConfig,
                    seed: int, device: torch.device, dtype: torch.dtype, flatten: bool) -> float | None:
    if train_cfg.val_fraction <= 0:
        return None
    val_loader = PackedLoader(sources, model_cfg.context_len, train_cfg.micro_batch_size, seed, "val",
                              train_cfg.val_fraction, vocab_size=model.config.vocab_size)
    return evaluate_loss(model, val_loader, device, dtype, flatten)
