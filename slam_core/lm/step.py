"""One pre-training optimiser step and the packed-row loss, shared by the trainer, the benches and DPO.

Hot-path rules (each is a measured cost on a GPU, see docs/ and bench/bench_train.py):
- no host sync inside the step except one at its end (loss and gradient norm read back together);
- micro-batches arrive pinned with their segment boundaries (`cu_seqlens`) from the loader's thread;
- bf16 weights are cast once per optimiser step, not once per micro-step: all micro-steps run inside one
  outer autocast region (disabled, so backward runs outside autocast as it should), which keeps autocast's
  weight-cast cache alive across the inner per-forward regions (the cache is dropped when the outermost
  region exits; the cast's backward saves no tensors, so reusing it across backward passes is exact).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from slam_core.config import TrainConfig
from slam_core.lm import distributed
from slam_core.lm.attention import FLAT_OK, VARLEN_KERNELS, is_packed, packed_kwargs
from slam_core.lm.data import IGNORE_INDEX, StepBatch
from slam_core.lm.distributed import DistEnv


def autocast_for(device: torch.device, dtype: torch.dtype):
    """bf16/fp16 autocast on CUDA; plain fp32 elsewhere."""
    if device.type == "cuda" and dtype != torch.float32:
        return torch.autocast("cuda", dtype=dtype)
    return nullcontext()


def weight_cast_scope(device: torch.device, dtype: torch.dtype):
    """An outer (disabled) autocast region: inner autocast regions reuse their weight casts until it exits."""
    if device.type == "cuda" and dtype != torch.float32:
        return torch.autocast("cuda", dtype=dtype, enabled=False)
    return nullcontext()


def packed_loss_sum(model: torch.nn.Module, batch: dict[str, torch.Tensor], attn_implementation: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token CE over target tokens, number of targets) of a packed micro-batch, as 0-d tensors
    (no host sync).

    A micro-batch is one token buffer shown as [B, L] rows (`slam_core.lm.data`); an example may run across a
    row boundary, so targets are taken over the flattened buffer. No attention_mask and no KV cache. The
    varlen kernels (`packed_fa2`, `packed_varlen`) get the segment boundaries over the flattened tokens as
    keyword arguments and keep the [B, L] shape (static for compilation); `packed_flex` and HF's
    "flash_attention_2" get the buffer flattened to [1, B*L] (a block-sparse mask; HF detects packed documents
    from `position_ids` at batch size 1); the row-masking paths (`packed_sdpa`, HF "sdpa"/"eager") get buffers
    whose examples never cross a row (`needs_whole_rows`) and keep [B, L].
    """
    ids, pos, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    context_len = ids.shape[1]
    kwargs = {}
    if attn_implementation in FLAT_OK and attn_implementation not in VARLEN_KERNELS:
        ids, pos = ids.reshape(1, -1), pos.reshape(1, -1)
    if is_packed(attn_implementation):
        kwargs = packed_kwargs(attn_implementation, {**batch, "position_ids": pos}, context_len)
    logits = model(input_ids=ids, position_ids=pos, use_cache=False, **kwargs).logits
    logits = logits.reshape(-1, logits.shape[-1])
    targets = labels.reshape(-1)[1:]
    loss_sum = F.cross_entropy(logits[:-1].float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return loss_sum, (targets != IGNORE_INDEX).sum()


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: torch.device, lr: float) -> torch.optim.AdamW:
    """AdamW: fused kernels on CUDA, foreach on CPU."""
    on_cuda = device.type == "cuda"
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=tuple(cfg.betas), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, fused=on_cuda or None, foreach=None if on_cuda else True)


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def train_step(forward_model: torch.nn.Module, wrapped: torch.nn.Module, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer, loader, examples_per_step: int, grad_clip: float,
               device: torch.device, dtype: torch.dtype, attn_implementation: str, env: DistEnv
               ) -> tuple[float, float, StepBatch]:
    """One optimiser step over `examples_per_step` examples (this rank's buffers of them); returns (mean token
    loss, grad norm, the step's batch figures).

    The loss is normalised as HF's Trainer does with gradient accumulation (`num_items_in_batch`): summed over
    every target token of the step, divided by their count over all ranks. Each rank scales its summed loss by
    world_size / (all targets), since DDP/FSDP average gradients over ranks. Every rank packs the whole step, so
    the count is known without a collective or a device sync.
    """
    step = loader.next_step(examples_per_step)
    n_targets = max(step.n_targets, 1)
    total = torch.zeros((), device=device, dtype=torch.float64)
    last = len(step.batches) - 1
    with weight_cast_scope(device, dtype):
        for i, batch in enumerate(step.batches):
            batch = to_device(batch, device)
            with distributed.grad_sync(wrapped, env, sync=i == last):  # all-reduce on the last micro-step only
                with autocast_for(device, dtype):
                    loss_sum, _ = packed_loss_sum(forward_model, batch, attn_implementation)
                (loss_sum / n_targets * env.world_size).backward()
            total += loss_sum.detach()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    total = distributed.sum_tensor_across(total, env)
    grad_norm = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
    loss_total, norm = torch.stack([total, grad_norm.to(torch.float64)]).tolist()  # the step's one host sync
    return loss_total / n_targets, norm, step


@torch.no_grad()
def evaluate_loss(model: torch.nn.Module, loader, device: torch.device, dtype: torch.dtype,
                  attn_implementation: str, max_batches: int = 64) -> float | None:
    """Token-weighted mean CE over (at most max_batches of) a finite loader; None if it has no tokens."""
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=device, dtype=torch.float64)
    count = 0
    for i, batch in enumerate(loader):
        if i >= max_batches:
            break
        count += int((batch["labels"].reshape(-1)[1:] != IGNORE_INDEX).sum())
        with autocast_for(device, dtype):
            loss_sum, _ = packed_loss_sum(model, to_device(batch, device), attn_implementation)
        total += loss_sum
    model.train(was_training)
    return float(total) / count if count else None
