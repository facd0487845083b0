"""Speed settings that leave the recipe unchanged: regional compile, fused kernels, micro-batch size.

- Compile: each decoder layer is compiled on its own (`dynamic=False`; the layers share one compiled graph),
  which compiles in a fraction of the whole model's time (PyTorch "regional compilation" recipe). Shapes stay
  static: micro-batches are [B, L] and `cu_seqlens` comes in a few padded lengths.
- Fused kernels: liger-kernel's RMSNorm, SwiGLU and RoPE (Triton, CUDA), optional.
- Micro-batch: the largest that fits, probed with a forward + backward of synthetic packed rows before any
  compilation (eager uses more activation memory than compiled code, so the probe is conservative) and
  cached per GPU model; the number of micro-batches per step follows, so every optimiser step still sees
  the same sequences.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from slam_core.atomic import write_text_atomic
from slam_core.config import TrainConfig
from slam_core.lm.attention import cu_seqlens_from_positions
from slam_core.lm.distributed import DistEnv, min_int_across
from slam_core.lm.step import autocast_for, packed_loss_sum, weight_cast_scope

log = logging.getLogger(__name__)

MICRO_BATCH_CACHE = "micro_batch_probe.json"
MEMORY_FRACTION = 0.85  # of the GPU's memory the probed step may use (the rest: allocator slack, compile)


def compile_enabled(setting: bool | str, device: torch.device) -> bool:
    return device.type == "cuda" if setting == "auto" else bool(setting)


def decoder_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated transformer blocks (HF names their class in `_no_split_modules`)."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    blocks = [m for m in model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"found no transformer blocks ({sorted(names)}) in {type(model).__name__}")
    return blocks


def compile_decoder_layers(model: torch.nn.Module, dynamic: bool | None = False) -> int:
    """Regional compile (in place); returns the number of compiled blocks. dynamic=False for pre-training's
    fixed [B, L] rows; True (symbolic sizes, one compile) for DPO's varying widths."""
    blocks = decoder_blocks(model)
    for block in blocks:
        block.compile(dynamic=dynamic)
    return len(blocks)


def apply_liger(model: torch.nn.Module) -> None:
    """liger-kernel's fused RMSNorm, SwiGLU and RoPE on a live Qwen2 model (no fused cross-entropy)."""
    try:
        from liger_kernel.transformers import apply_liger_kernel_to_qwen2
    except ImportError:
        raise RuntimeError("train.liger_kernels=true but liger-kernel is not importable: pip install 'slam[liger]' "
                           "(or set train.liger_kernels=false)") from None
    if model.config.model_type != "qwen2":
        raise RuntimeError(f"train.liger_kernels supports Qwen2 bases only, not {model.config.model_type}")
    apply_liger_kernel_to_qwen2(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                fused_linear_cross_entropy=False, model=model)


def synthetic_batch(rows: int, context_len: int, vocab_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Packed rows of one document each (shapes are what matters), from a private generator (the global RNG
    stays untouched, so probing does not change a run's checkpointed RNG state)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(2, vocab_size, (rows, context_len), generator=gen)
    pos = torch.arange(context_len).expand(rows, -1).contiguous()
    labels = ids.clone()
    labels[:, 0] = -100
    batch = {"input_ids": ids, "labels": labels, "position_ids": pos, "cu_seqlens": cu_seqlens_from_positions(pos)}
    return {k: v.to(device) for k, v in batch.items()}


def forward_backward(model: torch.nn.Module, batch: dict[str, torch.Tensor], attn_implementation: str,
                     device: torch.device, dtype: torch.dtype) -> None:
    """One training micro-step without an optimiser step; gradients are dropped afterwards."""
    with weight_cast_scope(device, dtype), autocast_for(device, dtype):
        loss_sum, n = packed_loss_sum(model, batch, attn_implementation)
    (loss_sum / n.clamp(min=1)).backward()
    model.zero_grad(set_to_none=True)


def warm_up(model: torch.nn.Module, micro_batch: int, context_len: int, attn_implementation: str,
            device: torch.device, dtype: torch.dtype) -> float:
    """Compile forward and backward now (one synthetic micro-step); returns the seconds it took."""
    t0 = time.perf_counter()
    forward_backward(model, synthetic_batch(micro_batch, context_len, model.config.vocab_size, device),
                     attn_implementation, device, dtype)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _cache_key(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, width: int, rows_per_item: int,
               attn_implementation: str, per_rank: int) -> str:
    cfg = model.config
    shape = (cfg.model_type, cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.num_attention_heads,
             cfg.vocab_size)
    return (f"{torch.cuda.get_device_name(device)}|torch {torch.__version__}|{'x'.join(map(str, shape))}|"
            f"{rows_per_item}x{width}|{str(dtype).removeprefix('torch.')}|{attn_implementation}|per-rank {per_rank}")


def _probe_peak_bytes(model: torch.nn.Module, rows: int, width: int, attn_implementation: str,
                      device: torch.device, dtype: torch.dtype) -> int:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    forward_backward(model, synthetic_batch(rows, width, model.config.vocab_size, device), attn_implementation,
                     device, dtype)
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device)


def probe_micro_batch(model: torch.nn.Module, train_cfg: TrainConfig, context_len: int, attn_implementation: str,
                      device: torch.device, dtype: torch.dtype, env: DistEnv, cache_dir: Path | None) -> int:
    """The pre-training micro-batch to run: train.run_micro_batch, or for auto on CUDA the largest divisor of the
    per-rank sequences per step that fits (`fit_micro_batch`); on CPU auto is the recipe's micro_batch_size."""
    return fit_micro_batch(model, train_cfg.run_micro_batch, train_cfg.micro_batch_size,
                           train_cfg.sequences_per_step // env.world_size, 1, context_len, attn_implementation, device,
                           dtype, env, cache_dir)


def fit_micro_batch(model: torch.nn.Module, setting: int | str, configured: int, per_rank_items: int,
                    rows_per_item: int, width: int, attn_implementation: str, device: torch.device,
                    dtype: torch.dtype, env: DistEnv, cache_dir: Path | None) -> int:
    """Items (sequences, or DPO pairs of `rows_per_item` = 2 rows) per forward pass: `setting` when it is a
    number; for auto on CUDA the largest divisor of `per_rank_items` whose probed forward + backward on rows of
    `width` tokens fits MEMORY_FRACTION of the GPU next to the AdamW moments (cached per GPU model under
    `cache_dir`); `configured` elsewhere."""
    if isinstance(setting, int):
        return setting
    if device.type != "cuda":
        return configured
    key = _cache_key(model, device, dtype, width, rows_per_item, attn_implementation, per_rank_items)
    cache_path = Path(cache_dir) / MICRO_BATCH_CACHE if cache_dir is not None else None
    cache = json.loads(cache_path.read_text()) if cache_path is not None and cache_path.exists() else {}
    if key in cache:
        chosen = int(cache[key])
    else:
        chosen = _probe(model, per_rank_items, configured, rows_per_item, width, attn_implementation, device, dtype)
        if cache_path is not None and env.is_main:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache_path, json.dumps({**cache, key: chosen}, indent=2, sort_keys=True) + "\n")
    chosen = min_int_across(chosen, env, device)  # every rank must split the step the same way
    log.info("micro-batch %d (auto; %s)", chosen, "cached" if key in cache else "probed")
    return chosen


def _probe(model: torch.nn.Module, per_rank: int, start: int, rows_per_item: int, width: int,
           attn_implementation: str, device: torch.device, dtype: torch.dtype) -> int:
    total = torch.cuda.get_device_properties(device).total_memory
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters())  # AdamW state, not yet allocated
    budget = MEMORY_FRACTION * total - moments
    divisors = [m for m in range(1, per_rank + 1) if per_rank % m == 0]
    start = max([m for m in divisors if m <= start] or [1])
    chosen = None
    for items in [m for m in divisors if m >= start]:
        try:
            peak = _probe_peak_bytes(model, items * rows_per_item, width, attn_implementation, device, dtype)
        except torch.OutOfMemoryError:
            peak = None
        model.zero_grad(set_to_none=True)
        log.info("micro-batch probe: %d x %d tokens -> %s", items * rows_per_item, width,
                 "out of memory" if peak is None else f"{peak / 2**30:.1f} GiB peak")
        if peak is None or peak > budget:
            break
        chosen = items
    torch.cuda.empty_cache()
    if chosen is None:  # not even the configured micro-batch fits: go below it
        smaller = [m for m in divisors if m < start]
        chosen = smaller[-1] if smaller else 1
        log.warning("micro-batch %d does not fit; using %d", start, chosen)
    return chosen
