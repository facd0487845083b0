"""Resumable checkpoints: `run_dir/checkpoints/step-{N:06d}/` + a `latest` pointer file.

Each checkpoint directory is written atomically and holds:
- an HF `save_pretrained` model (loads with plain `AutoModelForCausalLM.from_pretrained`);
- `trainer_state.pt`: optimiser state, RNG states, loader position (tensors and plain types only, so it
  loads with `torch.load(weights_only=True)`);
- `state.json`: step, tokens_seen, elapsed_s, total_steps, loss (human-readable progress).
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from slam_core.atomic import atomic_dir, write_text_atomic

log = logging.getLogger(__name__)

LATEST_FILE = "latest"
TRAINER_STATE_FILE = "trainer_state.pt"
STATE_JSON = "state.json"


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step-{step:06d}"


def rng_state() -> dict[str, Any]:
    """torch (CPU + CUDA) and numpy/python RNG states as tensors and plain types."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "python": _plain(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _plain(value: Any) -> Any:
    return list(_plain(v) for v in value) if isinstance(value, tuple) else value


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, trainer_state: dict[str, Any],
                    info: dict[str, Any], keep_last: int = 2) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep only the newest `keep_last`.

    Returns the checkpoint directory.
    """
    final = checkpoint_dir(run_dir, step)
    with atomic_dir(final) as tmp:
        model.save_pretrained(tmp)
        torch.save(trainer_state, tmp / TRAINER_STATE_FILE)
        (tmp / STATE_JSON).write_text(json.dumps({"step": step, **info}, indent=2, sort_keys=True))
    write_text_atomic(Path(run_dir) / "checkpoints" / LATEST_FILE, final.name + "\n")
    _prune(final.parent, keep_last)
    log.info("checkpoint step %d -> %s", step, final)
    return final


def _prune(ckpt_root: Path, keep_last: int) -> None:
    """Delete all but the newest `keep_last` step-N directories (only after `latest` moved on), and temp dirs
    left by a save that was killed (one trainer per run_dir, so after our own save every temp dir is stale)."""
    steps = sorted(p for p in ckpt_root.glob("step-*") if p.is_dir())
    for old in steps[:-keep_last] + [p for p in ckpt_root.glob(".step-*") if p.is_dir()]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint named by `latest`, or None when the run has not saved one yet."""
    pointer = Path(run_dir) / "checkpoints" / LATEST_FILE
    if not pointer.exists():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / TRAINER_STATE_FILE).exists():
        raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def load_trainer_state(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(trainer_state, state.json contents) of a checkpoint directory."""
    trainer_state = torch.load(Path(ckpt) / TRAINER_STATE_FILE, weights_only=True, map_location="cpu")
    info = json.loads((Path(ckpt) / STATE_JSON).read_text())
    return trainer_state, info


def restore_or_seed(ckpt: Path | None, seed: int) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Start of every trainer (pre-training and DPO alike): a fresh run seeds torch and returns None; a resumed
    one restores the checkpoint's RNG states and returns its (trainer_state, state.json contents), whose
    optimiser/data-position parts the caller loads into its own objects."""
    if ckpt is None:
        torch.manual_seed(seed)
        return None
    state, info = load_trainer_state(ckpt)
    set_rng_state(state["rng"])
    log.info("resuming from %s (step %d, %.1f s of budget used)", ckpt, info["step"], info["elapsed_s"])
    return state, info
