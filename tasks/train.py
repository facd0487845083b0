"""Model tasks: TWIST initialisation, budgeted pre-training, DPO.

Training tasks run on the flow's main thread (called directly, not submitted) so Prefect's timeout can
interrupt them, and they resume from their own checkpoints, so a Prefect retry continues where it stopped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefect import task

from data_catalog import produce_or_reuse
from slam_core.config import DpoConfig, ModelConfig, ParallelConfig, TrainConfig
from slam_core.lm import distributed, dpo, launch, model, oom, train
from slam_core.errors import InputError
from slam_core.lm.checkpoint import latest_checkpoint
from slam_core.lm.data import BadShardError
from tasks.common import CACHED, catalog_at, not_bad_input, progress_reporter


@contextlib.contextmanager
def shards_checked(data_root: str) -> Iterator[None]:
    """A units shard that training cannot read (truncated, corrupt, rewritten behind the catalog) becomes one
    user error naming it, and its catalog rows are dropped, so the next run makes it again instead of serving
    it: nothing else is lost (finished shards and checkpoints stay)."""
    try:
        yield
    except BadShardError as err:
        text = " ".join(str(err).split())
        path, _, reason = text.partition(": ")
        dropped = catalog_at(data_root).forget_path(path) if Path(path).suffix == ".parquet" else 0
        raise InputError(f"training met a units shard it cannot read ({reason or text})", path,
                         "rerun the same command: " + ("its catalog row was dropped, so the shard is made again from "
                                                       "its source" if dropped else "the shard is checked again "
                                                       "and made again if it is still bad")) from None


@task(name="init-speech-lm", retries=1, **CACHED)
def init_speech_lm(cfg: ModelConfig, n_units: int, seed: int, out_dir: str, fingerprint: str,
                   data_root: str) -> dict[str, Any]:
    """Swap the text LM's vocabulary for 502 speech tokens (TWIST init) and save it."""
    info: dict[str, Any] = {}

    def produce() -> dict[str, Any]:
        base = model.resolve_base(cfg, Path(data_root))
        info.update(model.init_speech_lm(cfg, base, Path(out_dir), n_units=n_units, seed=seed))
        return {"rows": info["n_params"]}

    rec = produce_or_reuse(catalog_at(data_root), stage="models", dataset="speech-lm", split="init",
                           out_path=out_dir, fingerprint=fingerprint, produce=produce)
    return {**rec, "n_params": rec["rows"]}


@task(name="pretrain", retries=2, retry_delay_seconds=5, retry_condition_fn=not_bad_input, tags=["gpu"], **CACHED)
def pretrain(init_dir: str, shard_paths: list[str], model_cfg: ModelConfig, train_cfg: TrainConfig, run_dir: str,
             seed: int, device: str, fingerprint: str, data_root: str,
             parallel_cfg: ParallelConfig | None = None,
             val_shards: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Pre-train against the wall-clock budget; resumes from the last checkpoint in `run_dir`. The training
    shards are mixed by train_cfg.dataset_weights; `val_shards` (name -> shards) are scored at the end.

    With more than one training process (parallel.n_gpus > 1, or 0 with several visible GPUs) it runs
    torchrun (DDP, or FSDP2 with parallel.fsdp) as a subprocess; a retry relaunches it and it resumes too.
    """
    summary: dict[str, Any] = {}
    parallel_cfg = parallel_cfg or ParallelConfig()
    world_size = distributed.resolve_world_size(parallel_cfg.n_gpus, device)

    def produce() -> dict[str, Any]:
        progress = progress_reporter("pre-training")
        cache_dir = Path(data_root) / "cache"  # probed micro-batch sizes, per GPU model
        held_out = {k: [Path(p) for p in v] for k, v in (val_shards or {}).items()}

        def run(cfg: TrainConfig) -> dict[str, Any]:
            args = (Path(init_dir), [Path(p) for p in shard_paths], model_cfg, cfg, Path(run_dir), seed)
            if world_size > 1:
                return launch.launch_pretrain(*args, device=device, nproc=world_size, fsdp=parallel_cfg.fsdp,
                                              progress=progress, val_shards=held_out, cache_dir=cache_dir)
            return train.pretrain(*args, device=device, progress=progress, val_shards=held_out, cache_dir=cache_dir)

        with shards_checked(data_root):
            # out of memory mid-training: a smaller micro-batch, the same tokens per step, from the last checkpoint
            summary.update(oom.run_lowering_on_oom(run, train_cfg, world_size))
        progress(1.0, f"done: {summary['steps']} steps")  # the schedule may end the run before its estimate
        return {"rows": summary["steps"], "tokens": summary["tokens_seen"], "bad": summary.get("skipped", [])}

    rec = produce_or_reuse(catalog_at(data_root), stage="checkpoints", dataset="pretrain", split="train",
                           out_path=run_dir, fingerprint=fingerprint, produce=produce)
    return {**rec, "checkpoint": str(latest_checkpoint(Path(run_dir))), "run_dir": run_dir, "summary": summary}


@task(name="dpo", retries=2, retry_delay_seconds=5, retry_condition_fn=not_bad_input, tags=["gpu"], **CACHED)
def run_dpo(init_checkpoint: str, preference_path: str, model_cfg: ModelConfig, dpo_cfg: DpoConfig, run_dir: str,
            seed: int, device: str, fingerprint: str, data_root: str) -> dict[str, Any]:
    """Preference-tune on spoken triples with precomputed reference log-probs."""
    summary: dict[str, Any] = {}

    def produce() -> dict[str, Any]:
        progress = progress_reporter("DPO")
        with shards_checked(data_root):
            summary.update(dpo.train_dpo(Path(init_checkpoint), Path(preference_path), model_cfg, dpo_cfg,
                                         Path(run_dir), seed, device=device, progress=progress,
                                         cache_dir=Path(data_root) / "cache"))
        progress(1.0, f"done: {summary['steps']} steps")  # DPO ends on steps or epochs before its time budget
        return {"rows": summary["steps"], "tokens": summary.get("tokens_seen", 0), "bad": summary.get("skipped", [])}

    rec = produce_or_reuse(catalog_at(data_root), stage="checkpoints", dataset="dpo", split="train",
                           out_path=run_dir, fingerprint=fingerprint, produce=produce)
    return {**rec, "checkpoint": str(latest_checkpoint(Path(run_dir))), "run_dir": run_dir, "summary": summary}
