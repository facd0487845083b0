"""The rehearsal's stages (the flows the paper recipe runs, in its order) and the checks on their outputs.

Called by scripts/rehearsal.py after it has chosen the runtime (Prefect or plain) and built the inputs; flows
are imported here, not at module level, so the plain runtime is installed before any `prefect` import.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

PRESET = "rehearsal"
# eval_results rows the paper metrics must produce for every checkpoint (the SALMon parts are those built).
PAIR_ROWS = ("sblimp", "swuggy_inter", "swuggy_oov", "ssc", "tsc", "salmon/bg_alignment",
             "salmon/speaker_consistency", "salmon")
GENERATIVE_ROWS = ("genppl", "auto_bleu")


def _shards(folder: str | Path, pattern: str) -> list[str]:
    return [str(p) for p in sorted(Path(folder).glob(pattern))]


def run_stages(stage: Callable[..., Any], report: dict[str, Any], overrides: dict[str, Any],
               manifest: dict[str, Any], data_root: Path) -> bool:
    """Run every stage through `stage(name, fn, ...)` (timed, results saved), then the checks; True when all
    checks hold."""
    from data_catalog import Catalog
    from flows.common import check_resources, load_config, save_resolved
    from flows.data_sources import prepare_source
    from flows.evaluate import evaluate
    from flows.prepare_data import prepare_data
    from flows.synthesize import synthesize
    from flows.train_lm import train_lm
    from slam_core.data_mix import VALIDATION_SPLIT
    from slam_core.paths import catalog_path
    from slam_core.rehearsal import checks
    from slam_core.run_summary import read_metrics_csv
    from slam_core.rehearsal.corpora import LIBRISPEECH_PARTS

    mix = [f"librilight/{VALIDATION_SPLIT}", "librilight/train", *(f"librispeech/{p}" for p in LIBRISPEECH_PARTS),
           "stinystories/train"]

    root = str(data_root)
    built = manifest["built"]
    cfg = load_config(PRESET, overrides, root)
    n_units = cfg.units.n_units
    results: list[dict[str, Any]] = report["checks"]

    # Speech the paper preset reads as sharded sets: sTinyStories and SpokenSwag, spoken by Kokoro.
    stories = stage("synth-stinystories", synthesize, kind="stinystories", input=built["tinystories"]["path"],
                    preset=PRESET, overrides=overrides, data_root=root)
    swag = stage("synth-spokenswag", synthesize, kind="spokenswag", input=built["swag"]["path"], preset=PRESET,
                 overrides=overrides, data_root=root)
    story_shards = _shards(Path(stories["out"]) / "train", "*.parquet")
    swag_shards = _shards(Path(swag["out"]) / "train", "preferences-*.parquet")
    # `slam data prepare librispeech` on the local copy: prepare-data reuses these segments (same paths and keys).
    ls = stage("prepare-librispeech", prepare_source, "librispeech", subsets=list(LIBRISPEECH_PARTS),
               local_dir=built["librispeech"]["path"], data_root=root)

    # reproduce = check resources, record the run, prepare-data -> train-lm -> evaluate (flows/reproduce.py);
    # its three flows are called here one by one so that each is timed.
    check_resources(cfg)
    Catalog(catalog_path(data_root)).record_run(cfg.run.name, cfg.resolve())
    save_resolved(cfg, "reproduce")
    prepared = stage("prepare-data", prepare_data, PRESET, overrides, root)
    trained = stage("train-lm", train_lm, PRESET, overrides, root, prepared=prepared)
    checkpoints = [trained["pretrain"]["checkpoint"], trained["dpo"]["checkpoint"]]
    evaluated = stage("evaluate", evaluate, PRESET, overrides, root, checkpoints=checkpoints, prepared=prepared,
                      metrics_csv=str(trained["pretrain"]["run_dir"]) + "/metrics.csv")
    report["training"] = {k: {f: v for f, v in trained[k]["summary"].items()
                              if f in ("steps", "tokens_seen", "elapsed_s", "final_loss", "val_loss",
                                       "reward_margin", "final_reward_margin")}
                          for k in ("pretrain", "dpo")}
    report["results"] = evaluated["results"] + evaluated["other"]

    catalog = Catalog(catalog_path(data_root))
    pre_csv = read_metrics_csv(Path(trained["pretrain"]["run_dir"]) / "metrics.csv")
    dpo_csv = read_metrics_csv(Path(trained["dpo"]["run_dir"]) / "metrics.csv")
    pairs = prepared["pairs"]
    preference_shards = _shards(pairs["preferences"], "*.parquet") if Path(pairs["preferences"]).is_dir() \
        else [pairs["preferences"]]
    val_shards = [p for paths in prepared.get("val_unit_shards", {}).values() for p in paths]
    report["data_mix"] = prepared.get("sets", {})
    results += [
        checks.audio_finite("sTinyStories synthesis", story_shards, ["audio"]),
        checks.audio_finite("SpokenSwag synthesis", swag_shards, ["prompt_audio", "chosen_audio", "rejected_audio"]),
        checks.recorded("synthesis", catalog, story_shards + swag_shards),
        checks.recorded("LibriSpeech segments", catalog, ls["shards"]),
        checks.data_mix(prepared.get("sets", {}), mix),
        checks.units_in_range("pre-training and validation units", prepared["unit_shards"] + val_shards, n_units),
        checks.units_in_range("evaluation pair units", [pairs["tsc_like"], pairs["ssc_like"]], n_units,
                              ("positive_units", "negative_units")),
        checks.units_in_range("DPO pair units", preference_shards, n_units,
                              ("prompt_units", "chosen_units", "rejected_units")),
        checks.recorded("prepare-data", catalog, [*prepared["unit_shards"], *val_shards, pairs["tsc_like"],
                                                  pairs["ssc_like"],
                                                  *preference_shards, prepared["centroids"]]),
        checks.finite_columns("pre-training", pre_csv, ("loss", "grad_norm", "lr", *(
            f"val_loss/{name}" for name in mix if not name.endswith("/train") and "train-" not in name))),
        checks.trend("pre-training", pre_csv, "loss", "down"),
        checks.finite_weights("pre-trained checkpoint", checkpoints[0]),
        checks.finite_columns("DPO", dpo_csv, ("loss", "grad_norm", "reward_margin")),
        checks.trend("DPO", dpo_csv, "reward_margin", "up"),
        checks.finite_weights("DPO checkpoint", checkpoints[1]),
        checks.recorded("train-lm", catalog, [trained["init"], trained["pretrain"]["run_dir"],
                                              trained["dpo"]["run_dir"]]),
        checks.metrics_computed(catalog, cfg.run.name, checkpoints, [*PAIR_ROWS, *GENERATIVE_ROWS]),
        checks.recorded("evaluate", catalog, [evaluated["report"]]),
        checks.nothing_quarantined(catalog),
    ]
    return not checks.failed(results)
