"""Word-alignment task: one segment shard -> its word alignments beside the units (synthesis timings or Whisper)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from slam_core.align.stage import AlignSettings, align_shard, alignment_fingerprint
from slam_core.paths import catalog_path
from tasks.common import CACHED


@task(name="align-words", retries=1, **CACHED)
def align_words(settings: dict[str, Any], segments_path: str, out_path: str, dataset: str, split: str,
                segments_fingerprint: str, fingerprint: str, data_root: str, device: str = "cpu") -> dict[str, Any]:
    """Word alignments of one segment shard (`fingerprint`: slam_core.align.stage.alignment_fingerprint of the
    settings and `segments_fingerprint`, so Prefect's cache key and the catalog agree)."""
    align = AlignSettings(**settings)
    if alignment_fingerprint(align, segments_fingerprint) != fingerprint:
        raise ValueError("align-words: fingerprint is not alignment_fingerprint(settings, segments_fingerprint)")
    return align_shard(align, segments_path, out_path, dataset=dataset, split=split,
                       segments_fingerprint=segments_fingerprint, catalog_path=catalog_path(Path(data_root)),
                       device=device)
