"""Speed settings that leave the recipe unchanged: regional compile, fused kernels, micro-batch size.

- Compile: each decoder layer is compiled on its own (`dynamic=False`; the layers share one compiled graph),
  which compiles in a fraction of the whole model's time (PyTorch "regional compilation" recipe). Shapes stay
  static: micro-batches are [B, L] and `cu_seqlens` comes in a few padded lengths.
- Fused kernels: liger-kernel's RMSNorm, SwiGLU and RoPE (Triton, CUDA), optional.
- Micro-batch: the largest whose probed peak (a forward + backward of synthetic packed rows before any
  compilation; eager uses more activation memory than compiled code, so the probe is conservative) plus the
  AdamW moments stays under train.micro_batch_memory_share (default 85 %) of the GPU, leaving headroom for
  what a long run does beside the step (checkpoint saves, validation passes, allocator fragmentation); sizes
  whose extrapolated peak would pass it are not tried. Cached per GPU model; the number of micro-batches per
  step follows, so every optimiser step still sees the same sequences.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

import torch

from slam_core.atomic import write_text_atomic
from slam_core.config import TrainConfig
from slam_core.lm.attention import cu_seqlens_from_positions
from slam_core.lm import oom
from slam_core.lm.distributed import DistEnv, min_int_across
from slam_core.lm.step import autocast_for, packed_loss_sum, weight_cast_scope

log = logging.getLogger(__name__)

MICRO_BATCH_CACHE = "micro_batch_probe.json"
MEMORY_FRACTION = 0.85  # default share of the GPU's memory (TrainConfig.micro_batch_memory_share)


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
    except ImportError as err:
        raise RuntimeError(f"train.liger_kernels=true but liger-kernel is not importable ({err}): pip install "
                           "'slam[liger]' (or set train.liger_kernels=false)") from None
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
                      device: torch.device, dtype: torch.dtype, env: DistEnv, cache_dir: Path | None,
                      report: dict | None = None) -> int:
    """The pre-training micro-batch to run: train.run_micro_batch, or for auto on CUDA the largest divisor of the
    per-rank sequences per step whose probed peak stays under train.micro_batch_memory_share of the GPU
    (`fit_micro_batch`); on CPU auto is the recipe's micro_batch_size."""
    return fit_micro_batch(model, train_cfg.run_micro_batch, train_cfg.micro_batch_size,
                           train_cfg.sequences_per_step // env.world_size, 1, context_len, attn_implementation, device,
                           dtype, env, cache_dir, memory_share=train_cfg.micro_batch_memory_share, report=report)


def fit_micro_batch(model: torch.nn.Module, setting: int | str, configured: int, per_rank_items: int,
                    rows_per_item: int, width: int, attn_implementation: str, device: torch.device,
                    dtype: torch.dtype, env: DistEnv, cache_dir: Path | None, memory_share: float = MEMORY_FRACTION,
                    report: dict | None = None) -> int:
    """Items (sequences, or DPO pairs of `rows_per_item` = 2 rows) per forward pass: `setting` when it is a
    number; for auto on CUDA the largest divisor of `per_rank_items` whose probed forward + backward on rows of
    `width` tokens, plus the AdamW moments, stays under `memory_share` of the GPU's memory (cached per GPU model
    and share under `cache_dir`); `configured` elsewhere. The choice and its reason are logged in one line and,
    when `report` is given, put in it (the bench records them)."""
    if isinstance(setting, int):
        return setting
    if device.type != "cuda":
        return configured
    key = _cache_key(model, device, dtype, width, rows_per_item, attn_implementation, per_rank_items) + \
        f"|share {memory_share:g}"
    cache_path = Path(cache_dir) / MICRO_BATCH_CACHE if cache_dir is not None else None
    cache = json.loads(cache_path.read_text()) if cache_path is not None and cache_path.exists() else {}
    if key in cache:
        chosen, why = int(cache[key]), f"cached in {cache_path} (probed earlier on this GPU model and shape)"
        details: dict = {"memory_share": memory_share, "cached": True}
    else:
        chosen, details = _probe(model, per_rank_items, configured, rows_per_item, width, attn_implementation, device,
                                 dtype, memory_share)
        why = details["why"]
        if cache_path is not None and env.is_main:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(cache_path, json.dumps({**cache, key: chosen}, indent=2, sort_keys=True) + "\n")
    agreed = min_int_across(chosen, env, device)  # every rank must split the step the same way
    if agreed != chosen:
        why += f"; lowered to {agreed}, the smallest any rank chose"
    log.info("micro-batch %d (auto; %d per step per rank, rows of %d tokens): %s", agreed, per_rank_items, width, why)
    if report is not None:
        report.update({**details, "chosen": agreed, "why": why})
    oom.remember_micro_batch(agreed, key, cache_path)  # an out-of-memory restart lowers it (slam_core.lm.oom)
    return agreed


def choose_micro_batch(divisors: list[int], start: int, budget_bytes: float,
                       measure: Callable[[int], int | None]) -> tuple[int, list[dict]]:
    """The largest of `divisors` (from `start` up) whose `measure(items)` (peak bytes, None: out of memory) stays
    under `budget_bytes`. A size whose peak, extrapolated from the sizes measured so far (linear in the items;
    proportional after one), would pass the budget is not tried: trying it would fill the GPU for nothing. Below
    `start` only when `start` itself does not fit. Returns the choice and each size's outcome."""
    start = max([m for m in divisors if m <= start] or [divisors[0]])
    probes: list[dict] = []
    measured: list[tuple[int, int]] = []
    chosen = None
    for items in [m for m in divisors if m >= start]:
        if measured:
            (x0, y0), (x1, y1) = (measured[-2] if len(measured) > 1 else (0, 0)), measured[-1]
            predicted = y1 + (y1 - y0) / (x1 - x0) * (items - x1)
            if predicted > budget_bytes:
                probes.append({"items": items, "predicted_gib": round(predicted / 2**30, 2), "tried": False})
                break
        peak = measure(items)
        probes.append({"items": items, "peak_gib": None if peak is None else round(peak / 2**30, 2),
                       "out_of_memory": peak is None, "tried": True})
        if peak is None or peak > budget_bytes:
            break
        measured.append((items, peak))
        chosen = items
    if chosen is None:  # not even `start` fits: go below it
        smaller = [m for m in divisors if m < start]
        chosen = smaller[-1] if smaller else divisors[0]
    return chosen, probes


def _probe(model: torch.nn.Module, per_rank: int, start: int, rows_per_item: int, width: int,
           attn_implementation: str, device: torch.device, dtype: torch.dtype,
           memory_share: float = MEMORY_FRACTION) -> tuple[int, dict]:
    total = torch.cuda.get_device_properties(device).total_memory
    moments = 2 * sum(p.numel() * p.element_size() for p in model.parameters())  # AdamW state, not yet allocated
    budget = memory_share * total - moments

    def measure(items: int) -> int | None:
        try:
            peak = _probe_peak_bytes(model, items * rows_per_item, width, attn_implementation, device, dtype)
        except torch.OutOfMemoryError:
            peak = None
        model.zero_grad(set_to_none=True)
        log.info("micro-batch probe: %d x %d tokens -> %s", items * rows_per_item, width,
                 "out of memory" if peak is None else f"{peak / 2**30:.1f} GiB peak")
        return peak

    divisors = [m for m in range(1, per_rank + 1) if per_rank % m == 0]
    chosen, probes = choose_micro_batch(divisors, start, budget, measure)
    torch.cuda.empty_cache()
    return chosen, {"memory_share": memory_share, "device_gib": round(total / 2**30, 2),
                    "adamw_moments_gib": round(moments / 2**30, 2), "budget_gib": round(budget / 2**30, 2),
                    "probes": probes, "why": explain_choice(chosen, probes, memory_share, total, moments, budget)}


def explain_choice(chosen: int, probes: list[dict], share: float, total: float, moments: float,
                   budget: float) -> str:
    """One line: why `chosen` (its probed peak against the budget) and why not the next size."""
    gib = lambda b: f"{b / 2**30:.1f} GiB"  # noqa: E731
    rule = (f"{share:.0%} of {gib(total)} less {gib(moments)} of AdamW moments = {gib(budget)} for a probed "
            f"forward + backward")
    mine = next((p for p in probes if p["items"] == chosen and p.get("peak_gib") is not None), None)
    over = next((p for p in probes if p["items"] > chosen), None)
    parts = [f"{chosen} peaked at {mine['peak_gib']:.1f} GiB" if mine else f"{chosen}: no larger size fits"]
    if over is not None:
        parts.append(f"{over['items']} " + ("ran out of memory" if over.get("out_of_memory") else
                                            f"peaked at {over['peak_gib']:.1f} GiB" if over["tried"] else
                                            f"would need ~{over['predicted_gib']:.1f} GiB (extrapolated, not tried)"))
    else:
        parts.append("the largest divisor of the step")
    return f"{rule}: " + "; ".join(parts)
