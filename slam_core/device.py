"""The one place that picks device, dtype and attention backend."""

from __future__ import annotations

import importlib.util
import os
import logging

import torch

log = logging.getLogger(__name__)


def pick_device(requested: str = "auto") -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but no CUDA device is visible (set run.device=cpu or auto)")
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(requested)


def pick_dtype(requested: str, device: torch.device) -> torch.dtype:
    """Reduced precision only on CUDA; CPU always computes in float32."""
    if device.type != "cuda" or requested in ("float32", "auto_cpu"):
        return torch.float32
    if requested == "auto":
        return torch.float16
    return {"bfloat16": torch.bfloat16, "float16": torch.float16}[requested]


def flash_attn_available() -> bool:
    return torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None


def pick_attn_implementation(requested: str, device: torch.device) -> str:
    """auto: the fastest packed kernel that can train on `device` (slam_core.lm.attention); an explicit name is
    checked against what this machine has."""
    from slam_core.lm.attention import available_kernels, is_packed

    usable = available_kernels(device)
    if requested == "auto":
        return usable[0]
    if is_packed(requested) and requested not in usable:
        raise RuntimeError(f"model.attn_implementation={requested} cannot train on {device.type} here (usable: "
                           f"{', '.join(usable)}); packed_fa2 needs flash-attn (pip install 'slam[gpu]'), packed_varlen "
                           f"and packed_flex need CUDA")
    if requested == "flash_attention_2" and not flash_attn_available():
        raise RuntimeError("attn_implementation=flash_attention_2 but flash-attn is not importable: pip install 'slam[gpu]'")
    return requested


def use_cpu_threads(threads: int | None) -> int:
    """`threads` torch threads for one model running alone (None: every core)."""
    n = (os.cpu_count() or 1) if threads is None else threads
    torch.set_num_threads(n)
    return n


def set_cpu_threads(parallel_tasks: int) -> int:
    """Share the CPU cores among concurrently running tasks (oversubscribed BLAS threads slow tiny models 10x)."""
    n = max(1, (os.cpu_count() or 1) // max(1, parallel_tasks))
    torch.set_num_threads(n)
    return n
