"""Preflight: estimate the disk, memory and GPU a config needs and refuse before any work when they are missing.

Estimates are deliberately simple sums of measured per-unit sizes (constants below, measured on the smoke
preset with the same code), so the message can show where a number comes from. Disk already taken by
outputs recorded in the catalog counts as done: a resumed run only needs what is still to be written.
Skip with `--set run.skip_preflight=true`.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slam_core.config import SlamConfig
from slam_core.data_mix import FLAC_BYTES_PER_S, SPEECH_S_PER_STORY  # measured figures, kept in one place

log = logging.getLogger(__name__)

GB = 1024 ** 3
# Deduplicated 25 Hz units in zstd Parquet: about 23 units/s at ~1.3 bytes per unit (+ durations).
UNIT_BYTES_PER_S = 50
# AdamW training state per parameter: fp32 weights, gradients and two moments.
TRAIN_BYTES_PER_PARAM = 16
# Known bases (speech LM parameter count after the vocabulary swap to 502 tokens, from `slam model init`).
KNOWN_PARAMS = {"Qwen/Qwen2.5-0.5B": 358_347_904, "Qwen/Qwen2.5-1.5B": 1_310_000_000}
# Process baseline with torch, transformers, silero-vad and the encoder loaded: 1.27 GB max RSS on smoke.
BASE_RAM_BYTES = int(1.3 * GB)


class PreflightError(RuntimeError):
    """A resource the config needs is missing; the message names it, the need, what is available and the
    override."""


@dataclass
class Need:
    resource: str            # disk | memory | gpu | gpu_memory
    needed: float            # bytes (or GPUs)
    available: float | None  # None: could not be measured
    breakdown: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.available is None or self.needed <= self.available


def shard_bytes(cfg: SlamConfig, value: str | None, pattern: str) -> int | None:
    """Bytes of the sharded speech set a `corpus.*_dir` names (relative to the data root unless absolute),
    None when it is not set."""
    if not value:
        return None
    root = Path(value).expanduser()
    root = root if root.is_absolute() else cfg.data_root / root
    return sum(f.stat().st_size for f in root.glob(pattern) if f.is_file()) if root.is_dir() else 0


def speech_hours(cfg: SlamConfig) -> float:
    """Hours of speech the run tokenises: measured from the sharded sets where configured (their FLAC bytes),
    else estimated from the corpus counts (stories spoken into recordings, spoken pairs)."""
    story_bytes = shard_bytes(cfg, cfg.corpus.stinystories_dir, "**/*.parquet")
    pair_bytes = shard_bytes(cfg, cfg.corpus.spokenswag_dir, "preferences-*.parquet")
    stories_s = (story_bytes / FLAC_BYTES_PER_S if story_bytes is not None
                 else (cfg.corpus.n_train_stories + cfg.corpus.n_heldout_stories) * SPEECH_S_PER_STORY)
    eval_pairs = 2 * (cfg.corpus.n_swag_heldout + cfg.corpus.n_heldout_stories)
    train_pairs_s = (pair_bytes / FLAC_BYTES_PER_S if pair_bytes is not None
                     else 2 * cfg.corpus.n_swag_train * 0.5 * SPEECH_S_PER_STORY)
    return (stories_s + eval_pairs * 0.5 * SPEECH_S_PER_STORY + train_pairs_s) / 3600


def written_speech_hours(cfg: SlamConfig) -> float:
    """Hours of FLAC the run writes itself: sTinyStories and SpokenSwag shards are read where they are."""
    hours = speech_hours(cfg)
    for value, pattern in ((cfg.corpus.stinystories_dir, "**/*.parquet"),
                           (cfg.corpus.spokenswag_dir, "preferences-*.parquet")):
        if (read_in_place := shard_bytes(cfg, value, pattern)) is not None:
            hours -= read_in_place / FLAC_BYTES_PER_S / 3600
    return max(hours, 0.0)


def corpus_hours(cfg: SlamConfig) -> float:
    """Hours of the real-speech pre-training sets (LibriSpeech, Libri-Light: the paper's Table 8 sizes)."""
    from slam_core.data_mix import planned_sets

    return sum(s.hours for s in planned_sets(cfg) if s.name in ("librilight", "librispeech"))


def download_bytes(cfg: SlamConfig) -> float:
    """Archives still to fetch, kept beside their extracted audio (about the same size again)."""
    from slam_core.data_mix import pending_downloads

    return 2.0 * sum(d["bytes"] for d in pending_downloads(cfg))


def model_params(cfg: SlamConfig) -> int:
    """Parameter count of the speech LM (known bases, a local config.json, or the tiny stand-in's shape)."""
    if cfg.model.base in KNOWN_PARAMS:
        return KNOWN_PARAMS[cfg.model.base]
    if cfg.model.base == "tiny-qwen2":
        h, n = cfg.model.tiny_hidden_size, cfg.model.tiny_layers
        return (cfg.units.n_units + 2) * h * 2 + n * 12 * h * h
    config_json = Path(cfg.model.base) / "config.json"
    if config_json.is_file():
        import json

        c = json.loads(config_json.read_text())
        h, n, inter = c.get("hidden_size", 0), c.get("num_hidden_layers", 0), c.get("intermediate_size", 0)
        return (cfg.units.n_units + 2) * h * 2 + n * (4 * h * h + 3 * h * inter)
    return 0


def estimate(cfg: SlamConfig) -> dict[str, dict[str, float]]:
    """Bytes of disk and memory (and GPU memory) the config needs, each with its parts."""
    hours = speech_hours(cfg) + corpus_hours(cfg)
    params = model_params(cfg)
    ckpt_bytes = params * (4 + 8)  # fp32 weights + AdamW moments in trainer_state.pt
    disk = {
        "corpus archives + extracted audio": download_bytes(cfg),
        "synthetic speech (FLAC)": written_speech_hours(cfg) * 3600 * FLAC_BYTES_PER_S,
        "units": hours * 3600 * UNIT_BYTES_PER_S,
        "pre-training checkpoints": ckpt_bytes * (cfg.train.keep_checkpoints + 1),
        "DPO checkpoints": ckpt_bytes * 2 if cfg.dpo.enabled else 0.0,
        "initial model": params * 4,
    }
    hidden = cfg.model.tiny_hidden_size if cfg.model.base == "tiny-qwen2" else 896
    layers = cfg.model.tiny_layers if cfg.model.base == "tiny-qwen2" else 24
    # activations of one micro-batch, kept for backward: ~34 values per token, hidden unit and layer (bf16/fp32)
    act_bytes = cfg.train.micro_batch_size * cfg.model.context_len * hidden * layers * 34 * 2
    logits_bytes = cfg.train.micro_batch_size * cfg.model.context_len * (cfg.units.n_units + 2) * 4 * 2
    train_bytes = params * TRAIN_BYTES_PER_PARAM + act_bytes + logits_bytes
    memory = {
        "process baseline": BASE_RAM_BYTES,
        "k-means frame sample": cfg.units.kmeans_sample_frames * 768 * 4 * 2,
        "longest VAD segment batch": cfg.units.batch_size * cfg.vad.max_segment_s * 16_000 * 4 * 4,
    }
    if cfg.run.device == "cpu":
        memory["training (CPU)"] = train_bytes
    out = {"disk": disk, "memory": memory}
    if cfg.run.device == "cuda":
        out["gpu_memory"] = {"training state": params * TRAIN_BYTES_PER_PARAM / max(1, cfg.parallel.n_gpus)
                             if cfg.parallel.fsdp else params * TRAIN_BYTES_PER_PARAM,
                             "activations": act_bytes + logits_bytes}
    return out


# ---- what is available (each probe can be replaced in tests) ----------------------------------------------
def free_disk_bytes(path: Path) -> int:
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def available_memory_bytes() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def gpus() -> list[int]:
    """Free memory in bytes of each visible CUDA device (empty without CUDA)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    return [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]


def recorded_bytes(data_root: Path) -> int:
    """Bytes of outputs already recorded in the catalog (a resumed run does not write them again)."""
    db = Path(data_root) / "catalog.duckdb"
    if not db.exists():
        return 0
    from data_catalog import Catalog

    return sum(int(r["bytes"] or 0) for r in Catalog(db).artifacts())


def check(cfg: SlamConfig) -> list[Need]:
    est = estimate(cfg)
    root = cfg.data_root
    needs = [
        Need("disk", max(0.0, sum(est["disk"].values()) - recorded_bytes(root)), free_disk_bytes(root), est["disk"]),
        Need("memory", sum(est["memory"].values()), available_memory_bytes(), est["memory"]),
    ]
    if cfg.run.device == "cuda":
        free = gpus()
        wanted = max(1, cfg.parallel.n_gpus)
        needs.append(Need("gpu", wanted, len(free), {"GPUs (parallel.n_gpus)": wanted}))
        if free:
            needs.append(Need("gpu_memory", sum(est["gpu_memory"].values()), min(free), est["gpu_memory"]))
    return needs


def _fmt(need: Need, value: float) -> str:
    return f"{value:.0f}" if need.resource == "gpu" else f"{value / GB:.2f} GB"


def preflight(cfg: SlamConfig) -> list[Need]:
    """Raise PreflightError when the config needs more disk, memory or GPU than there is; else return the
    estimates (logged). Does nothing with run.skip_preflight."""
    if cfg.run.skip_preflight:
        log.warning("preflight skipped (run.skip_preflight=true)")
        return []
    needs = check(cfg)
    for need in needs:
        log.info("preflight %s: need %s, available %s", need.resource, _fmt(need, need.needed),
                 "unknown" if need.available is None else _fmt(need, need.available))
    short = [n for n in needs if not n.ok]
    if short:
        lines = []
        for n in short:
            parts = ", ".join(f"{k} {_fmt(n, v)}" for k, v in n.breakdown.items() if v)
            where = f" under {cfg.data_root}" if n.resource == "disk" else ""
            lines.append(f"not enough {n.resource}{where}: need about {_fmt(n, n.needed)} ({parts}), "
                         f"available {_fmt(n, n.available)}")
        hint = {"disk": "free space or point --data-root at a larger disk",
                "memory": "lower units.kmeans_sample_frames / units.batch_size / train.micro_batch_size",
                "gpu": "run on a machine with the GPUs or set parallel.n_gpus / run.device=cpu",
                "gpu_memory": "lower train.micro_batch_size (raise train.grad_accum) or use parallel.fsdp"}
        fixes = "; ".join(dict.fromkeys(hint[n.resource] for n in short))
        raise PreflightError("preflight refused the run before any work:\n  " + "\n  ".join(lines) +
                             f"\nTo fix: {fixes}. To run anyway: --set run.skip_preflight=true")
    return needs


def summary(needs: list[Need]) -> dict[str, Any]:
    return {n.resource: {"needed": n.needed, "available": n.available} for n in needs}
