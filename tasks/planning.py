"""Planning tasks: cheap reads that decide how a stage is split into shards."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from slam_core.config import SynthConfig
from slam_core.synth import dataset as synth_dataset


@task(name="plan-recordings")
def plan_recordings(stories_path: str, split: str, cfg: SynthConfig, seed: int) -> list[dict]:
    """Group stories into long recordings with a seeded voice each (the plan, not the audio; cheap, not cached)."""
    return synth_dataset.plan_recordings(Path(stories_path), split, cfg, seed)
