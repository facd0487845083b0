"""Planning tasks: cheap reads that decide how a stage is split into shards."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from slam_core.config import SynthConfig
from slam_core.synth import dataset as synth_dataset
from tasks.common import CACHED


@task(name="plan-recordings", **CACHED)
def plan_recordings(stories_path: str, split: str, cfg: SynthConfig, seed: int, fingerprint: str,
                    data_root: str) -> list[dict]:
    """Group stories into long recordings with a seeded voice each (the plan, not the audio)."""
    return synth_dataset.plan_recordings(Path(stories_path), split, cfg, seed)
