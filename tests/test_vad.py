"""VAD segmentation: espeak recordings with known gaps, real speech, long-segment splitting, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from slam_core.audio.vad import segment_audio_files, segment_recordings
from slam_core.config import SynthConfig, VadConfig
from slam_core.schemas import SEGMENTS
from slam_core.synth import get_backend
from slam_core.synth.dataset import RECORDING_EDGE_SILENCE_S, synthesize_recording_shard
from shared_data import REAL_SPEECH

STORIES = [
    ["One morning, Nemo the fish went to the coral reef with a shell.", "Nemo polished the shell.",
     "At the old harbor, Nemo saw big waves.", "In the end, Nemo kept the shell safe at the coral reef."],
    ["Once upon a time, Daisy the cow found a bucket of milk near the red barn.", "Daisy felt proud.",
     "Soon a friend came to the hay loft with a pitchfork.", "Finally, Daisy took the bucket of milk home."],
    ["On a sunny day, Captain Nova brought a telescope to the moon base.", "Nova scanned the telescope.",
     "Finally, Nova took the telescope home to the moon base."],
]


@pytest.fixture(scope="module")
def espeak_recording(tmp_path_factory):
    """One long espeak recording of three stories and the true (start_s, end_s) of each story's audio."""
    synth_cfg = SynthConfig(voices=["en-us"], gap_between_stories_s=1.6)
    plan = {"recording_id": "rec-a", "split": "train", "voice": "en-us", "story_ids": ["s0", "s1", "s2"],
            "stories": STORIES}
    out = synthesize_recording_shard([plan], synth_cfg, tmp_path_factory.mktemp("synth"), shard_index=0)
    backend = get_backend(synth_cfg)
    spans, t = [], RECORDING_EDGE_SILENCE_S
    for sentences in STORIES:  # the same deterministic synthesis, measured story by story
        wave = backend.synthesize(" ".join(sentences), "en-us")
        length_s = len(wave) / backend.sample_rate_hz
        voiced = np.flatnonzero(np.abs(wave) > 0.01) / backend.sample_rate_hz
        spans.append((t + voiced[0], t + voiced[-1]))
        t += length_s + synth_cfg.gap_between_stories_s
    return out["path"], spans


def test_one_segment_per_story_with_boundaries_in_the_gaps(tmp_path, espeak_recording):
    recordings_path, true_spans = espeak_recording
    cfg = VadConfig()
    out = segment_recordings(Path(recordings_path), cfg, tmp_path / "seg.parquet", "stories", "train")
    table = pq.read_table(out["path"])
    assert table.schema.equals(SEGMENTS) and out["bad"] == []
    rows = table.to_pylist()
    assert len(rows) == len(STORIES), [(r["start_s"], r["end_s"]) for r in rows]
    assert [r["segment_id"] for r in rows] == ["rec-a-0000", "rec-a-0001", "rec-a-0002"]
    tolerance_s = cfg.speech_pad_s + 0.15
    for k, (row, (start_s, end_s)) in enumerate(zip(rows, true_spans)):
        assert abs(row["start_s"] - start_s) < tolerance_s and abs(row["end_s"] - end_s) < tolerance_s
        if k > 0:  # the boundary lies inside the silent gap between two stories
            assert true_spans[k - 1][1] < rows[k - 1]["end_s"] <= row["start_s"] < start_s
        assert row["speaker"] == "espeak-en-us" and row["text"] is None and row["dataset"] == "stories"
    assert out["audio_seconds"] == pytest.approx(sf.info(rows[0]["source_path"]).duration, abs=1e-3)
    again = segment_recordings(Path(recordings_path), cfg, tmp_path / "seg2.parquet", "stories", "train")
    assert Path(out["path"]).read_bytes() == Path(again["path"]).read_bytes()


def test_real_speech_is_segmented_inside_the_files(tmp_path):
    paths = sorted(REAL_SPEECH.glob("*.flac"))
    assert len(paths) == 2
    out = segment_audio_files(paths, VadConfig(), tmp_path / "real.parquet", "user", "train")
    rows = pq.read_table(out["path"]).to_pylist()
    assert out["bad"] == [] and out["audio_seconds"] == pytest.approx(14.1 + 15.9, abs=0.1)
    for path in paths:
        mine = [r for r in rows if r["source_path"] == str(path)]
        duration_s = sf.info(str(path)).duration
        assert mine and all(0 <= r["start_s"] < r["end_s"] <= duration_s + 1e-3 for r in mine)
        assert sum(r["end_s"] - r["start_s"] for r in mine) > 0.7 * duration_s  # read speech, few pauses
        assert {r["speaker"] for r in mine} == {"real-speech"}
        assert mine[0]["segment_id"] == f"real-speech-{path.stem}-0000"


def test_long_speech_is_split_at_max_segment_s(tmp_path):
    cfg = VadConfig(max_segment_s=4.0, min_speech_s=0.5)
    out = segment_audio_files([REAL_SPEECH / "audio2.flac"], cfg, tmp_path / "split.parquet", "user", "train")
    rows = pq.read_table(out["path"]).to_pylist()
    assert len(rows) >= 4
    assert all(r["end_s"] - r["start_s"] <= 4.0 + 1e-6 for r in rows)
    assert all(a["end_s"] <= b["start_s"] + 1e-6 for a, b in zip(rows, rows[1:]))  # ordered, no overlap


def test_bad_files_are_reported_with_a_reason_not_fatal(tmp_path):
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    (bad_dir / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(5000))
    sf.write(bad_dir / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    nan_wave = np.full(16000, 0.1, dtype=np.float32)
    nan_wave[100:200] = np.nan
    sf.write(bad_dir / "nan.wav", nan_wave, 16000, subtype="FLOAT")
    sf.write(bad_dir / "silence.wav", np.zeros(3 * 16000, dtype=np.float32), 16000)
    paths = [REAL_SPEECH / "audio1.flac"] + sorted(bad_dir.iterdir())
    out = segment_audio_files(paths, VadConfig(), tmp_path / "mixed.parquet", "user", "train")
    reasons = {Path(path).name: reason for path, reason, _detail in out["bad"]}
    assert reasons == {"corrupt.flac": "unreadable", "empty.wav": "empty", "nan.wav": "non_finite",
                       "silence.wav": "no_speech"}
    rows = pq.read_table(out["path"]).to_pylist()
    assert rows and {r["source_path"] for r in rows} == {str(REAL_SPEECH / "audio1.flac")}


def test_same_stem_files_get_distinct_ids():
    from slam_core.audio.vad import recording_sources

    paths = [Path("/a/x/s.wav"), Path("/a/x/s.flac"), Path("/b/x/t.wav"), Path("/c/x/t.wav"), Path("/a/x/u.wav")]
    ids = [i for i, _, _ in recording_sources(paths)]
    assert len(set(ids)) == len(ids)
    assert ids[0] == "x-s-wav" and ids[1] == "x-s-flac" and ids[4] == "x-u"  # unique ids stay as they were
