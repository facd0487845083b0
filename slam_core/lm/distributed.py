"""Data parallelism for pre-training, kept out of the model and the loop (torchtitan style).

One process per GPU under `torchrun` (launched by `slam_core.lm.launch`). The loop asks this module to:
- pick the per-rank device and start the process group (NCCL on CUDA, gloo on CPU);
- wrap the model: DDP (replicated weights, gradients all-reduced) or, with `fsdp=True`, FSDP2
  `fully_shard` on every decoder layer and the root (parameters, gradients and optimiser state sharded);
- skip the gradient all-reduce on all but the last micro-step of an optimiser step (`grad_sync`);
- agree on scalars (target-token count, loss sum, elapsed time) so that every rank makes the same
  schedule, checkpoint and stop decisions;
- gather full model/optimiser state for rank 0's checkpoint (collective under FSDP).

Global batch: `train.grad_accum` counts micro-batches per optimiser step over ALL ranks, so the effective
batch (micro_batch_size x grad_accum x context_len, 128 x 1024 tokens for Slam) does not depend on the
number of GPUs; each rank runs grad_accum / world_size micro-steps (it must divide evenly).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job; the default is a plain single process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    fsdp: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_from_torchrun(fsdp: bool = False) -> DistEnv:
    """The DistEnv described by torchrun's environment variables (a single process without them)."""
    return DistEnv(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                   int(os.environ.get("LOCAL_RANK", 0)), fsdp)


def resolve_world_size(n_gpus: int, device: str) -> int:
    """Training processes for ParallelConfig.n_gpus: 0 = every visible GPU (1 on CPU); on CPU, n_gpus > 1
    runs that many gloo processes (tests, drills)."""
    visible = torch.cuda.device_count() if device in ("auto", "cuda") else 0
    if n_gpus == 0:
        return max(1, visible)
    if visible and n_gpus > visible:
        raise ValueError(f"parallel.n_gpus={n_gpus} but only {visible} CUDA device(s) are visible")
    return n_gpus


def per_rank_grad_accum(grad_accum: int, world_size: int) -> int:
    """Micro-steps per rank; the global batch stays micro_batch_size x grad_accum x context_len."""
    if grad_accum % world_size:
        raise ValueError(f"train.grad_accum={grad_accum} (micro-batches per optimiser step, summed over all ranks) "
                         f"is not divisible by the {world_size} training processes; choose a multiple of "
                         f"{world_size} so the effective batch stays the same")
    return grad_accum // world_size


def setup(env: DistEnv, device: torch.device) -> torch.device:
    """Start the process group (if distributed and not yet started); returns this rank's device."""
    if device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
        torch.cuda.set_device(device)
    if env.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=env.rank,
                                world_size=env.world_size)
    return device


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap_model(model: torch.nn.Module, env: DistEnv, device: torch.device) -> torch.nn.Module:
    """DDP or FSDP2 around `model` (FSDP2 shards in place: `model` itself becomes the sharded module)."""
    if not env.enabled:
        return model
    if env.fsdp:
        from torch.distributed.fsdp import fully_shard

        block_names = set(getattr(model, "_no_split_modules", None) or [])
        blocks = [m for m in model.modules() if type(m).__name__ in block_names]
        if not blocks:
            raise ValueError(f"FSDP: found no transformer blocks ({sorted(block_names)}) in {type(model).__name__}")
        for block in blocks:
            fully_shard(block)
        fully_shard(model)  # the root holds the (tied) embedding/head and the final norm
        return model
    from torch.nn.parallel import DistributedDataParallel

    # broadcast_buffers off: the only buffers are RoPE tables, identical on every rank.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


@contextmanager
def grad_sync(wrapped: torch.nn.Module, env: DistEnv, sync: bool):
    """Reduce gradients across ranks only when `sync` (the last micro-step of an optimiser step)."""
    if not env.enabled:
        yield
    elif env.fsdp:
        wrapped.set_requires_gradient_sync(sync)
        yield
    elif sync:
        yield
    else:
        with wrapped.no_sync():
            yield


def _reduce(values: list[float], env: DistEnv, device: torch.device, op: Any) -> list[float]:
    if not env.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=op)
    return t.tolist()


def sum_across(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    return _reduce(values, env, device, dist.ReduceOp.SUM)


def max_across(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    return _reduce(values, env, device, dist.ReduceOp.MAX)


def sum_tensor_across(value: torch.Tensor, env: DistEnv) -> torch.Tensor:
    """Sum of a device tensor over ranks, left on the device (no host sync)."""
    if env.enabled:
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def min_int_across(value: int, env: DistEnv, device: torch.device) -> int:
    """The smallest of every rank's `value` (ranks must agree on sizes that shape collectives)."""
    return -int(max_across([-float(value)], env, device)[0])


def barrier(env: DistEnv) -> None:
    if env.enabled:
        dist.barrier()


def as_local_float(value: torch.Tensor) -> float:
    """A (possibly DTensor) scalar as a Python float."""
    return float(value.full_tensor() if hasattr(value, "full_tensor") else value)


def full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, env: DistEnv
               ) -> tuple[dict[str, torch.Tensor] | None, dict[str, Any]]:
    """(full model state dict or None to use the model's own, optimiser state) for rank 0's checkpoint.

    Under FSDP both are gathered (a collective: every rank must call it) into FQN-keyed CPU tensors on
    rank 0; otherwise the model is whole on every rank and the optimiser's own state_dict is used.
    """
    if not (env.enabled and env.fsdp):
        return None, optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=options), get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any],
                         env: DistEnv) -> None:
    """Inverse of `full_state` for the optimiser (every rank loads the full state and keeps its shard)."""
    if not (env.enabled and env.fsdp):
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))


def param_checksum(model: torch.nn.Module) -> float | None:
    """Sum of all parameter values in float64 (identical across DDP ranks); None for sharded parameters."""
    params = list(model.parameters())
    if any(hasattr(p, "full_tensor") for p in params):
        return None
    return float(sum(p.detach().double().sum() for p in params))


class FullStateSaver:
    """Lets `save_checkpoint` write an HF directory from a gathered state dict (FSDP) via save_pretrained."""

    def __init__(self, model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
        # a tied head is one parameter under two names: keep the first, as save_pretrained does for whole models
        first_name: dict[int, str] = {}
        duplicates = set()
        for name, param in model.named_parameters(remove_duplicate=False):
            if id(param) in first_name:
                duplicates.add(name)
            else:
                first_name[id(param)] = name
        self._model = model
        self._state_dict = {k: v for k, v in state_dict.items() if k not in duplicates}

    def save_pretrained(self, path: Any) -> None:
        self._model.save_pretrained(path, state_dict=self._state_dict)

