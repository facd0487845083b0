"""A run that runs out of GPU memory mid-training goes on at a smaller micro-batch from its last checkpoint.

The automatic micro-batch (`slam_core.lm.tuning`) leaves headroom (train.micro_batch_memory_share), but a long
run can still run out of memory (fragmentation, a validation pass, a checkpoint save). `run_lowering_on_oom`
calls `run(train_cfg)`; when that raises an out-of-memory error (torch.OutOfMemoryError in this process, or a
torchrun job whose failure names one), it frees the GPU, sets train.run_micro_batch to the next smaller divisor
of the per-rank sequences per step (half, where that divides), says so in one line, and calls `run` again.
train.micro_batch_size x grad_accum, the sequences (tokens) per optimiser step, stay the same, and pre-training
resumes from the run's last checkpoint (it resumes under any micro-batch: the loader's position is kept in rows).
The lowered size replaces the probed one in the micro-batch cache, so a later run on this GPU model starts there.
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from slam_core.atomic import write_text_atomic
from slam_core.config import TrainConfig

log = logging.getLogger(__name__)

# The last automatic choice in this process (tuning.fit_micro_batch): the size, its cache key and file.
_LAST: dict[str, Any] = {}


def remember_micro_batch(micro: int, key: str | None = None, cache_path: Path | None = None) -> None:
    _LAST.update({"micro": micro, "key": key, "cache_path": cache_path})


def is_out_of_memory(err: BaseException) -> bool:
    """torch's out-of-memory error, or a training job's failure (torchrun, slam_core.lm.launch) that names one."""
    text = str(err)
    return isinstance(err, torch.OutOfMemoryError) or "OutOfMemoryError" in text or "CUDA out of memory" in text


def next_smaller(micro: int, per_rank: int) -> int | None:
    """Half of `micro` when it divides `per_rank`, else the largest divisor below `micro`; None below 1."""
    divisors = [m for m in range(1, per_rank + 1) if per_rank % m == 0 and m < micro]
    if not divisors:
        return None
    return micro // 2 if micro % 2 == 0 and micro // 2 in divisors else divisors[-1]


def _free_gpu() -> None:
    gc.collect()  # the failed run's frames are gone once its exception is: drop their tensors now
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _persist(lower: int) -> None:
    """The lowered size replaces the probed one in the micro-batch cache (when the choice came from it)."""
    key, path = _LAST.get("key"), _LAST.get("cache_path")
    if key and path is not None and Path(path).exists():
        cache = json.loads(Path(path).read_text())
        write_text_atomic(Path(path), json.dumps({**cache, key: lower}, indent=2, sort_keys=True) + "\n")


def run_lowering_on_oom(run: Callable[[TrainConfig], dict[str, Any]], train_cfg: TrainConfig,
                        world_size: int) -> dict[str, Any]:
    """`run(train_cfg)`, again at a smaller run_micro_batch after each out-of-memory failure (down to 1, then the
    error is raised). The summary gets "out_of_memory_restarts": [{"from": m, "to": m2}, ...] when there were any."""
    cfg, restarts = train_cfg, []
    per_rank = train_cfg.sequences_per_step // world_size
    while True:
        _LAST.clear()
        try:
            summary = run(cfg)
            break
        except Exception as err:
            if not is_out_of_memory(err):
                raise
            used = cfg.run_micro_batch if isinstance(cfg.run_micro_batch, int) else \
                _LAST.get("micro") or train_cfg.micro_batch_size
            lower = next_smaller(used, per_rank)
            if lower is None:
                raise
        _free_gpu()
        log.warning("out of memory at micro-batch %d: going on from the last checkpoint with micro-batch %d "
                    "(%d per step per rank; tokens per optimiser step unchanged: %d sequences)", used, lower,
                    per_rank // lower, train_cfg.sequences_per_step)
        _persist(lower)
        restarts.append({"from": used, "to": lower})
        cfg = cfg.model_copy(update={"run_micro_batch": lower})
    if restarts:
        summary["out_of_memory_restarts"] = restarts
    return summary
