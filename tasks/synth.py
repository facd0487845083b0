"""Synthesis tasks: one per shard of sTinyStories utterances or SpokenSwag pairs, recorded in the catalog."""

from __future__ import annotations

from typing import Any

from prefect import task

from data_catalog import produce_or_reuse
from slam_core.synth.jobs import SHARD_FUNCTIONS
from slam_core.synth.shards import run_shard
from tasks.common import CACHED, catalog_at


@task(name="synthesize-shard", retries=2, retry_delay_seconds=2, tags=["tts"], **CACHED)
def synthesize_shard(kind: str, args: tuple, workers: int, out_path: str, dataset: str, split: str,
                     fingerprint: str, data_root: str) -> dict[str, Any]:
    """Speak (or convert) one shard in the shared worker pool; skipped when the catalog already holds it."""
    return produce_or_reuse(catalog_at(data_root), stage="synth", dataset=dataset, split=split, out_path=out_path,
                            fingerprint=fingerprint, produce=lambda: run_shard(SHARD_FUNCTIONS[kind], args, workers))
