"""train-lm: TWIST init -> budgeted pre-training on unit shards -> DPO on spoken preference triples.

Run: `python -m flows.train_lm --preset smoke` (after prepare-data) or as part of `reproduce`.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.common import device_name, fp, load_config, save_resolved
from flows.entry import user_facing
from flows.prepare_data import prepare_data
from slam_core.device import set_cpu_threads
from slam_core.paths import stage_dir
from tasks import train


@flow(name="train-lm", log_prints=True)
@user_facing
def train_lm(preset: str = "smoke", overrides: dict[str, Any] | None = None, data_root: str | None = None,
             prepared: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pre-train (and DPO-tune) the speech LM; returns the checkpoints and training summaries."""
    cfg = load_config(preset, overrides, data_root)
    save_resolved(cfg, "train-lm")
    root, seed, dev = str(cfg.data_root), cfg.run.seed, device_name(cfg)
    prepared = prepared or prepare_data(preset, overrides, root)  # cached when already prepared
    if dev == "cpu":
        set_cpu_threads(1)  # one model at a time from here on: use every core

    # 1. TWIST: the text LM with its vocabulary swapped for 502 speech tokens.
    init_fp = fp("init", cfg, ("model",), n_units=cfg.units.n_units)
    init_dir = str(stage_dir(cfg.data_root, "models") / f"speech-lm-init-{init_fp}")
    init = train.init_speech_lm(cfg.model, cfg.units.n_units, seed, init_dir, init_fp, root)
    print(f"speech LM initialised from {cfg.model.base}: {init['n_params']:,} parameters")

    # 2. Pre-training, the schedule fitted to the wall-clock budget (called directly: main thread).
    # The training sets are mixed by train.dataset_weights; each held-out set is scored on its own.
    val_shards = prepared.get("val_unit_shards", {})
    pre_fp = fp("pretrain", cfg, ("model", "train"), init_fp, *prepared["unit_fingerprints"],
                *prepared.get("val_unit_fingerprints", []))
    run_dir = str(stage_dir(cfg.data_root, "checkpoints", cfg.run.name) / f"pretrain-{pre_fp}")
    pre = train.pretrain(init_dir, prepared["unit_shards"], cfg.model, cfg.train, run_dir, seed, dev, pre_fp, root,
                         cfg.parallel, val_shards or None)
    result = {"init": init_dir, "pretrain": pre, "final_checkpoint": pre["checkpoint"], "final_fingerprint": pre_fp}

    # 3. DPO on the spoken preference triples, reference log-probs precomputed.
    if cfg.dpo.enabled:
        dpo_fp = fp("dpo", cfg, ("model", "dpo"), pre_fp, prepared["pair_fingerprints"]["preferences"])
        dpo_dir = str(stage_dir(cfg.data_root, "checkpoints", cfg.run.name) / f"dpo-{dpo_fp}")
        dpo = train.run_dpo(pre["checkpoint"], prepared["pairs"]["preferences"], cfg.model, cfg.dpo, dpo_dir, seed,
                            dev, dpo_fp, root)
        result |= {"dpo": dpo, "final_checkpoint": dpo["checkpoint"], "final_fingerprint": dpo_fp}
    return result


if __name__ == "__main__":
    from flows.common import run_from_command_line

    run_from_command_line(train_lm, __doc__)
