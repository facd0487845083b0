"""A corrupt, an empty and a NaN recording in a shard: each quarantined with its reason, the rest segmented."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from data_catalog import Catalog
from slam_core.config import SynthConfig, VadConfig
from slam_core.synth.dataset import synthesize_recording_shard
from tasks import data

STORY = ["One morning, Nemo the fish went to the coral reef with a shell.", "Nemo polished the shell.",
         "In the end, Nemo kept the shell safe at the coral reef."]


def test_bad_recordings_are_quarantined_and_the_shard_goes_on(tmp_path):
    plans = [{"recording_id": f"rec-{i}", "split": "train", "voice": "en-us", "story_ids": [f"s{i}"],
              "stories": [STORY]} for i in range(4)]
    shard = synthesize_recording_shard(plans, SynthConfig(voices=["en-us"]), tmp_path / "synth", shard_index=0)
    audio = {r["recording_id"]: Path(r["path"]) for r in pq.read_table(shard["path"]).to_pylist()}
    audio["rec-1"].write_bytes(audio["rec-1"].read_bytes()[:200])          # truncated FLAC
    audio["rec-2"].write_bytes(b"")                                          # zero-length file
    # NaN samples: FLAC cannot hold them, so a float WAV under the .flac name (libsndfile reads the header)
    sf.write(audio["rec-3"], np.full(16000, np.nan, dtype=np.float32), 16000, format="WAV", subtype="FLOAT")

    root = tmp_path / "root"
    out = data.segment_recordings.fn(shard["path"], VadConfig(), str(tmp_path / "seg.parquet"), "stories", "train",
                                     "fp-seg", str(root))
    segments = pq.read_table(out["path"]).to_pylist()
    assert {s["segment_id"].rsplit("-", 1)[0] for s in segments} == {"rec-0"}  # the good file is kept
    quarantined = {Path(q["path"]).stem: q["reason"] for q in Catalog(root / "catalog.duckdb").quarantined()}
    assert set(quarantined) == {"rec-1", "rec-2", "rec-3"}
    assert quarantined["rec-2"] == "empty" and quarantined["rec-1"] in {"unreadable", "truncated_or_corrupt"}
    assert quarantined["rec-3"] == "non_finite"
    assert Catalog(root / "catalog.duckdb").find_artifact(out["path"], "fp-seg") is not None
