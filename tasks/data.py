"""Data-preparation tasks: corpus text, synthetic speech, VAD segments (one task per shard)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from data_catalog import produce_or_reuse
from slam_core.audio import vad
from slam_core.config import CorpusConfig, SynthConfig, VadConfig
from slam_core.corpora import builtin, text_hub
from slam_core.synth import dataset as synth_dataset
from tasks.common import CACHED, catalog_at


@task(name="prepare-corpus", retries=1, **CACHED)
def prepare_corpus(cfg: CorpusConfig, seed: int, out_dir: str, fingerprint: str, data_root: str) -> dict[str, Any]:
    """Write the text corpus (stories + preference triples: built-in, or TinyStories + SWAG) and record it."""
    out = Path(out_dir)
    result: dict[str, Any] = {}

    def produce() -> dict[str, Any]:
        if cfg.source == "tinystories":
            result.update(text_hub.prepare_text_corpus(cfg, seed, out, Path(data_root) / "raw" / "hub-text"))
        else:
            result.update(builtin.prepare_builtin_corpus(cfg, seed, out))
        # text rows refused with their line (a SWAG CSV row that is not UTF-8), quarantined with the artifact
        bad = [(q["path"], q["reason"], q["detail"]) for q in result.get("quarantined", [])]
        return {"rows": result["n_stories"] + result["n_triples"], "bad": bad}

    dataset = "tinystories" if cfg.source == "tinystories" else "builtin"
    rec = produce_or_reuse(catalog_at(data_root), stage="raw", dataset=dataset, split="all",
                           out_path=out / "stories.parquet", fingerprint=fingerprint, produce=produce)
    return {**rec, "stories": str(out / "stories.parquet"), "triples": str(out / "triples.parquet")}


@task(name="synthesize-recordings", retries=2, retry_delay_seconds=2, tags=["tts"], **CACHED)
def synthesize_recordings(plans: list[dict], cfg: SynthConfig, out_dir: str, shard_index: int, split: str,
                          fingerprint: str, data_root: str) -> dict[str, Any]:
    """Speak one shard of long recordings (several stories each) to FLAC + a recordings manifest."""
    out = Path(out_dir)
    return produce_or_reuse(
        catalog_at(data_root), stage="synth", dataset="stories", split=split,
        out_path=out / f"recordings-{shard_index:05d}.parquet", fingerprint=fingerprint,
        produce=lambda: synth_dataset.synthesize_recording_shard(plans, cfg, out, shard_index))


@task(name="synthesize-pairs", retries=2, retry_delay_seconds=2, tags=["tts"], **CACHED)
def synthesize_pairs(kind: str, source_path: str, cfg: SynthConfig, seed: int, out_path: str,
                     fingerprint: str, data_root: str) -> dict[str, Any]:
    """Speak evaluation pairs (`tsc_like`, `ssc_like`) or DPO preference triples (`preferences`)."""
    makers = {
        "tsc_like": (synth_dataset.synthesize_story_pairs, "heldout"),
        "ssc_like": (synth_dataset.synthesize_triple_pairs, "heldout"),
        "preferences": (synth_dataset.synthesize_preferences, "train"),
    }
    make, split = makers[kind]
    return produce_or_reuse(
        catalog_at(data_root), stage="synth", dataset=kind, split=split, out_path=out_path, fingerprint=fingerprint,
        produce=lambda: make(Path(source_path), cfg, seed, Path(out_path), split=split))


@task(name="segment-recordings", retries=1, **CACHED)
def segment_recordings(recordings_path: str, cfg: VadConfig, out_path: str, dataset: str, split: str,
                       fingerprint: str, data_root: str) -> dict[str, Any]:
    """Cut one shard of long recordings into speech segments with silero-vad."""
    return produce_or_reuse(
        catalog_at(data_root), stage="segments", dataset=dataset, split=split, out_path=out_path,
        fingerprint=fingerprint,
        produce=lambda: vad.segment_recordings(Path(recordings_path), cfg, Path(out_path), dataset, split))
