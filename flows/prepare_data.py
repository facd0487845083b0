"""prepare-data: text corpus -> synthetic speech -> VAD segments -> units, plus spoken pairs for DPO and eval.

Run: `python -m flows.prepare_data --preset smoke` or `prefect deployment run 'prepare-data/preprocess'`.
Every step is a cached task keyed by its fingerprint; a rerun after a crash redoes only unfinished shards.

The paper's mix (corpus.pretrain_sets, Table 4): Libri-Light, LibriSpeech and sTinyStories each become unit
shards under units/<set>/<split>/ (`flows.pretrain_sets`), the training ones mixed by train.dataset_weights, the
held-out ones (LibriSpeech dev-clean/dev-other, 1 % of Libri-Light) scored one by one. sTinyStories audio shards
(`corpus.stinystories_dir`) are segments read in place (one utterance each, no VAD); with `corpus.spokenswag_dir`
every `preferences-*.parquet` there becomes one shard of DPO pair units, all in one directory the DPO loader reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import (
    check_resources, count_shards, device_name, fp, gather_with_progress, load_config, rerun_with_configured_runner,
    save_resolved, shard_was_reused,
)
from flows.data_sources import CODE_SCOPE as SOURCE_CODE_SCOPE
from flows.entry import user_facing
from flows.pretrain_sets import SegmentGroup, corpus_groups
from slam_core.config import SlamConfig
from slam_core.corpora.hub import list_parquet_files
from slam_core.corpora.sources import get_source
from slam_core.data_mix import configured_path
from slam_core.device import set_cpu_threads
from slam_core.fingerprint import code_version, fingerprint
from slam_core.paths import stage_dir
from tasks import corpora, data, units
from tasks.common import progress_reporter
from tasks.planning import plan_recordings

PAIR_SETS = ("tsc_like", "ssc_like", "preferences")


def configured_dir(cfg: SlamConfig, value: str) -> Path:
    """A `corpus.*_dir` path: absolute as given, else relative to the data root."""
    return configured_path(cfg, value)


def uses_stinystories(cfg: SlamConfig) -> bool:
    """sTinyStories shards feed pre-training: named in corpus.pretrain_sets, or (no sets named) with
    corpus.stinystories_dir set."""
    sets = cfg.corpus.pretrain_sets
    return "stinystories" in sets if sets else bool(cfg.corpus.stinystories_dir)


def stinystories_shards(cfg: SlamConfig) -> list[Path]:
    """Every audio Parquet below `corpus.stinystories_dir`, sorted; a clear error when there is none."""
    root = configured_dir(cfg, cfg.corpus.stinystories_dir or "")
    files = list_parquet_files(root) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"corpus.stinystories_dir: no sTinyStories shards (*.parquet) under {root}. Make them with `slam synth "
            f"stinystories --input TINYSTORIES_DIR --preset {cfg.run.name}`, fetch the published set with `slam data "
            f"prepare stinystories` and set corpus.stinystories_dir=raw/stinystories/hub, or set it to your copy")
    stems = [f.stem for f in files]
    if len(set(stems)) != len(stems):  # outputs are named by stem: two shards must not share one output
        raise ValueError(f"corpus.stinystories_dir: {root} holds several shards with the same file name")
    return files


def spokenswag_shards(cfg: SlamConfig) -> list[Path]:
    """Every `preferences-*.parquet` in `corpus.spokenswag_dir`, sorted; a clear error when there is none."""
    root = configured_dir(cfg, cfg.corpus.spokenswag_dir or "")
    files = sorted(root.glob("preferences-*.parquet")) if root.is_dir() else []
    if not files:
        raise FileNotFoundError(
            f"corpus.spokenswag_dir: no preferences-*.parquet shards in {root}. Make them with `slam synth spokenswag "
            f"--input SWAG_DIR --preset {cfg.run.name}` (or --input a published SpokenSwag copy, fetched by `slam "
            f"data prepare spokenswag`), or set corpus.spokenswag_dir to a directory that holds them")
    return files


def submit_stinystories_segments(files: list[Path], root: str) -> list[tuple[Any, str]]:
    """(future, fingerprint) per sTinyStories shard: its utterances listed as SEGMENTS that point into the shard
    (read in place, not re-encoded). Paths and keys are those of `slam data prepare stinystories`, so segments it
    made are reused."""
    src = get_source("stinystories")
    seg_dir = stage_dir(Path(root), "segments", src.name, "train")
    out = []
    for f in files:
        shard_fp = fingerprint("segments", {"source": src.name, "file": f.name, "size": f.stat().st_size},
                               code=code_version(SOURCE_CODE_SCOPE))
        out.append((corpora.hub_audio_shard.submit(src.name, str(f), str(seg_dir / f"{f.stem}.parquet"), "train",
                                                   dict(src.extra), shard_fp, root), shard_fp))
    return out


def submit_preference_units(cfg: SlamConfig, files: list[Path], centroids: str, km_fp: str, dev: str,
                            root: str) -> tuple[str, str, list[Any]]:
    """(directory, fingerprint of the set, futures): one pair-unit task per SpokenSwag shard, each cached and
    recorded. The directory is named by the set's fingerprint, so it holds exactly these shards' units and the
    DPO loader can read it whole (sorted, as the shards)."""
    shard_fps = [fp("pair-units", cfg, ("units",), km_fp, file=f.name, bytes=f.stat().st_size) for f in files]
    set_fp = fp("pair-units", cfg, ("units",), *shard_fps, set="spokenswag")
    out_dir = stage_dir(cfg.data_root, "pairs", f"spokenswag-{set_fp}")
    futures = [units.extract_pair_units.submit(str(f), centroids, cfg.units, dev, str(out_dir / f"{f.stem}.parquet"),
                                               "spokenswag", "train", shard_fp, root)
               for f, shard_fp in zip(files, shard_fps)]
    return str(out_dir), set_fp, futures


@flow(name="prepare-data", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
@user_facing
def prepare_data(preset: str = "smoke", overrides: dict[str, Any] | None = None,
                 data_root: str | None = None) -> dict[str, Any]:
    """Build every dataset the smoke/paper run needs; returns the unit shard and pair paths."""
    cfg = load_config(preset, overrides, data_root)
    if (on_runner := rerun_with_configured_runner(prepare_data, cfg.parallel)) is not None:
        return on_runner(preset, overrides, data_root)  # parallel.task_runner=dask: shards go to the cluster
    story_files = stinystories_shards(cfg) if uses_stinystories(cfg) else None  # missing input: fail first
    preference_files = spokenswag_shards(cfg) if cfg.corpus.spokenswag_dir else None
    check_resources(cfg, inputs=("corpus", "units"))
    save_resolved(cfg, "prepare-data")
    root, seed, dev = str(cfg.data_root), cfg.run.seed, device_name(cfg)
    tally: dict[str, dict[str, int]] = {}  # per stage: shards reused from an earlier run, shards redone
    if dev == "cpu":
        set_cpu_threads(cfg.parallel.max_workers)  # shard tasks run side by side: split the cores between them

    # 1. Text: seeded stories and preference triples (TinyStories/SWAG stand-ins).
    corpus_fp = fp("corpus", cfg, ("corpus",))
    corpus = data.prepare_corpus(cfg.corpus, seed, str(stage_dir(cfg.data_root, "raw", "builtin")), corpus_fp, root)

    # 2. Speech: the sets of corpus.pretrain_sets and/or sTinyStories shards as segment groups, else the stories
    # spoken into long recordings; one task per archive and per shard.
    groups = corpus_groups(cfg, root)
    if story_files is not None:
        groups.append(SegmentGroup("stinystories", "train", "train", submit_stinystories_segments(story_files, root)))
    if not groups:
        synth_dir = stage_dir(cfg.data_root, "synth", "stories", "train")
        plans = plan_recordings(corpus["stories"], "train", cfg.synth, seed)
        shards = [plans[i:i + cfg.vad.shard_recordings] for i in range(0, len(plans), cfg.vad.shard_recordings)]
        synth_fps = [fp("synth", cfg, ("synth",), corpus_fp, shard=i) for i in range(len(shards))]
        recordings = [data.synthesize_recordings.submit(s, cfg.synth, str(synth_dir), i, "train", synth_fps[i], root)
                      for i, s in enumerate(shards)]

    # 3. Spoken pairs: tSC-like and sSC-like eval pairs, DPO preference triples (unless SpokenSwag shards).
    pair_sets = PAIR_SETS if preference_files is None else PAIR_SETS[:2]
    pair_dir = stage_dir(cfg.data_root, "synth", "pairs")
    pair_fps = {k: fp("synth-pairs", cfg, ("synth",), corpus_fp, kind=k) for k in pair_sets}
    sources = {"tsc_like": corpus["stories"], "ssc_like": corpus["triples"], "preferences": corpus["triples"]}
    spoken_pairs = {k: data.synthesize_pairs.submit(k, sources[k], cfg.synth, seed, str(pair_dir / f"{k}.parquet"),
                                                    pair_fps[k], root) for k in pair_sets}

    # 4. Segments: the sets' shards as they are, or silero-vad cuts recordings into story-length segments.
    for group in groups:
        group.paths = [s["path"] for s in gather_with_progress([f for f, _ in group.shards],
                                                                f"{group.name} segment shards", tally)]
    if not groups:
        seg_dir = stage_dir(cfg.data_root, "segments", "stories", "train")
        seg_fps = [fp("segments", cfg, ("vad",), synth_fps[i]) for i in range(len(shards))]
        synth_progress = progress_reporter("speech synthesis shards")
        segments, synth_reused = [], 0
        for i, recording in enumerate(recordings, 1):  # segment each shard as soon as it is spoken
            recordings_path = recording.result()["path"]
            synth_reused += shard_was_reused(recording, recording.result())
            synth_progress(i / len(recordings), f"{i}/{len(recordings)} shards")
            out_path = str(seg_dir / f"segments-{i - 1:05d}.parquet")
            segments.append(data.segment_recordings.submit(recordings_path, cfg.vad, out_path, "stories", "train",
                                                           seg_fps[i - 1], root))
        count_shards("speech synthesis shards", synth_reused, len(recordings) - synth_reused, tally)
        paths = [s["path"] for s in gather_with_progress(segments, "VAD segmentation shards", tally)]
        groups = [SegmentGroup("stories", "train", "train", [(None, k) for k in seg_fps], paths)]
    train_groups = [g for g in groups if g.role == "train"]

    # 5. Quantiser: k-means on encoder features of a seeded frame sample of the training sets (or the published
    # centroids).
    km_fp = fp("kmeans", cfg, ("units",), *[k for g in train_groups for k in g.fingerprints])
    km_path = str(stage_dir(cfg.data_root, "units", "kmeans") / f"centroids-{km_fp}.npy")
    centroids = units.fit_kmeans([p for g in train_groups for p in g.paths], cfg.units, seed, dev, km_path, km_fp,
                                 root)["path"]

    # 6. Units: one task per segment shard (units/<dataset>/<split>/), one per spoken pair set, one per SpokenSwag
    # shard.
    unit_futures = {g.name: [units.extract_units.submit(
        p, centroids, cfg.units, dev, str(stage_dir(cfg.data_root, "units", g.dataset, g.split) / f"units-{i:05d}.parquet"),
        g.dataset, g.split, fp("units", cfg, ("units",), k, km_fp), root)
        for i, (p, k) in enumerate(zip(g.paths, g.fingerprints))] for g in groups}
    pair_unit_dir = stage_dir(cfg.data_root, "pairs")
    pair_units = {k: units.extract_pair_units.submit(
        f.result()["path"], centroids, cfg.units, dev, str(pair_unit_dir / f"{k}.parquet"), k,
        "train" if k == "preferences" else "heldout", fp("pair-units", cfg, ("units",), pair_fps[k], km_fp), root)
        for k, f in spoken_pairs.items()}
    if preference_files is not None:  # DPO reads the directory of per-shard pair units
        preference_dir, preference_fp, preference_futures = submit_preference_units(
            cfg, preference_files, centroids, km_fp, dev, root)

    unit_results = {g.name: gather_with_progress(unit_futures[g.name], f"{g.name} unit shards", tally)
                    for g in groups}
    train_units = [u for g in train_groups for u in unit_results[g.name]]
    val_groups = [g for g in groups if g.role == "validation"]
    pairs = {k: f.result()["path"] for k, f in pair_units.items()}
    pair_fingerprints = {k: f.result()["fingerprint"] for k, f in pair_units.items()}
    if preference_files is not None:
        gather_with_progress(preference_futures, "SpokenSwag pair-unit shards", tally)
        pairs["preferences"], pair_fingerprints["preferences"] = preference_dir, preference_fp
    out = {
        "unit_shards": [u["path"] for u in train_units],
        "unit_fingerprints": [u["fingerprint"] for u in train_units],
        "pairs": pairs,
        "centroids": centroids,
        "pair_fingerprints": pair_fingerprints,
        "tokens": sum(u["tokens"] for u in train_units),
        "segments": sum(u["rows"] for u in train_units),
        "shards": tally,
        "audio_hours": sum(u["audio_seconds"] for u in train_units) / 3600,
        # per set: its segment and unit shards in step (the interleaved path aligns the segments beside the units)
        "set_shards": {g.name: {"role": g.role, "segments": list(g.paths), "segment_fingerprints": g.fingerprints,
                                "units": [u["path"] for u in unit_results[g.name]],
                                "unit_fingerprints": [u["fingerprint"] for u in unit_results[g.name]]}
                       for g in groups},
    }
    if len(groups) > 1 or val_groups:  # the paper's mix: what each set holds, and the held-out sets
        out["val_unit_shards"] = {g.name: [u["path"] for u in unit_results[g.name]] for g in val_groups}
        out["val_unit_fingerprints"] = [u["fingerprint"] for g in val_groups for u in unit_results[g.name]]
        out["sets"] = {g.name: {"role": g.role, "shards": len(g.paths),
                                "tokens": sum(u["tokens"] for u in unit_results[g.name]),
                                "hours": sum(u["audio_seconds"] for u in unit_results[g.name]) / 3600}
                       for g in groups}
    return out


if __name__ == "__main__":
    from flows.common import run_from_command_line

    run_from_command_line(prepare_data, __doc__)
