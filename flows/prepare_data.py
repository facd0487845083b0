"""prepare-data: text corpus -> synthetic speech -> VAD segments -> units, plus spoken pairs for DPO and eval.

Run: `python -m flows.prepare_data --preset smoke` or `prefect deployment run 'prepare-data/preprocess'`.
Every step is a cached task keyed by its fingerprint; a rerun after a crash redoes only unfinished shards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import (
    check_resources, device_name, fp, gather_with_progress, load_config, rerun_with_configured_runner, save_resolved,
)
from slam_core.device import set_cpu_threads
from slam_core.paths import stage_dir
from tasks import data, units
from tasks.common import progress_reporter
from tasks.planning import plan_recordings

PAIR_SETS = ("tsc_like", "ssc_like", "preferences")


@flow(name="prepare-data", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def prepare_data(preset: str = "smoke", overrides: dict[str, Any] | None = None,
                 data_root: str | None = None) -> dict[str, Any]:
    """Build every dataset the smoke/paper run needs; returns the unit shard and pair paths."""
    cfg = load_config(preset, overrides, data_root)
    if (on_runner := rerun_with_configured_runner(prepare_data, cfg.parallel)) is not None:
        return on_runner(preset, overrides, data_root)  # parallel.task_runner=dask: shards go to the cluster
    check_resources(cfg)
    save_resolved(cfg, "prepare-data")
    root, seed, dev = str(cfg.data_root), cfg.run.seed, device_name(cfg)
    if dev == "cpu":
        set_cpu_threads(cfg.parallel.max_workers)  # shard tasks run side by side: split the cores between them

    # 1. Text: seeded stories and preference triples (TinyStories/SWAG stand-ins).
    corpus_fp = fp("corpus", cfg, ("corpus",))
    corpus = data.prepare_corpus(cfg.corpus, seed, str(stage_dir(cfg.data_root, "raw", "builtin")), corpus_fp, root)

    # 2. Speech: stories spoken into long recordings, one task per shard of recordings.
    synth_dir = stage_dir(cfg.data_root, "synth", "stories", "train")
    plans = plan_recordings(corpus["stories"], "train", cfg.synth, seed)
    shards = [plans[i:i + cfg.vad.shard_recordings] for i in range(0, len(plans), cfg.vad.shard_recordings)]
    synth_fps = [fp("synth", cfg, ("synth",), corpus_fp, shard=i) for i in range(len(shards))]
    recordings = [data.synthesize_recordings.submit(s, cfg.synth, str(synth_dir), i, "train", synth_fps[i], root)
                  for i, s in enumerate(shards)]

    # 3. Spoken pairs: tSC-like and sSC-like eval pairs, DPO preference triples.
    pair_dir = stage_dir(cfg.data_root, "synth", "pairs")
    pair_fps = {k: fp("synth-pairs", cfg, ("synth",), corpus_fp, kind=k) for k in PAIR_SETS}
    sources = {"tsc_like": corpus["stories"], "ssc_like": corpus["triples"], "preferences": corpus["triples"]}
    spoken_pairs = {k: data.synthesize_pairs.submit(k, sources[k], cfg.synth, seed, str(pair_dir / f"{k}.parquet"),
                                                    pair_fps[k], root) for k in PAIR_SETS}

    # 4. Segmentation: silero-vad cuts each recording shard into story-length segments.
    seg_dir = stage_dir(cfg.data_root, "segments", "stories", "train")
    seg_fps = [fp("segments", cfg, ("vad",), synth_fps[i]) for i in range(len(shards))]
    synth_progress = progress_reporter("speech synthesis shards")
    segments = []
    for i, recording in enumerate(recordings, 1):  # segment each shard as soon as it is spoken
        recordings_path = recording.result()["path"]
        synth_progress(i / len(recordings), f"{i}/{len(recordings)} shards")
        out_path = str(seg_dir / f"segments-{i - 1:05d}.parquet")
        segments.append(data.segment_recordings.submit(recordings_path, cfg.vad, out_path, "stories", "train",
                                                       seg_fps[i - 1], root))
    segment_paths = [s["path"] for s in gather_with_progress(segments, "VAD segmentation shards")]

    # 5. Quantiser: k-means on encoder features of a seeded frame sample (or the published centroids).
    km_fp = fp("kmeans", cfg, ("units",), *seg_fps)
    km_path = str(stage_dir(cfg.data_root, "units", "kmeans") / f"centroids-{km_fp}.npy")
    centroids = units.fit_kmeans(segment_paths, cfg.units, seed, dev, km_path, km_fp, root)["path"]

    # 6. Units: one task per segment shard, and one per spoken pair set.
    unit_dir = stage_dir(cfg.data_root, "units", "stories", "train")
    unit_futures = [units.extract_units.submit(p, centroids, cfg.units, dev, str(unit_dir / f"units-{i:05d}.parquet"),
                                               "stories", "train", fp("units", cfg, ("units",), seg_fps[i], km_fp),
                                               root) for i, p in enumerate(segment_paths)]
    pair_unit_dir = stage_dir(cfg.data_root, "pairs")
    pair_units = {k: units.extract_pair_units.submit(
        f.result()["path"], centroids, cfg.units, dev, str(pair_unit_dir / f"{k}.parquet"), k,
        "train" if k == "preferences" else "heldout", fp("pair-units", cfg, ("units",), pair_fps[k], km_fp), root)
        for k, f in spoken_pairs.items()}

    unit_results = gather_with_progress(unit_futures, "unit extraction shards")
    return {
        "unit_shards": [u["path"] for u in unit_results],
        "unit_fingerprints": [u["fingerprint"] for u in unit_results],
        "pairs": {k: f.result()["path"] for k, f in pair_units.items()},
        "centroids": centroids,
        "pair_fingerprints": {k: f.result()["fingerprint"] for k, f in pair_units.items()},
        "tokens": sum(u["tokens"] for u in unit_results),
        "audio_hours": sum(u["audio_seconds"] for u in unit_results) / 3600,
    }


if __name__ == "__main__":
    from flows.common import run_from_command_line

    run_from_command_line(prepare_data, __doc__)
