"""Golden reference: slam's unit extraction vs the published mHuBERT-25Hz + km500 tokeniser.

With the real weights available locally (SLAM_MHUBERT_DIR = a copy of slprl/mhubert-base-25hz,
SLAM_KMEANS_PATH = centroids converted with convert_kmeans_pickle), the units and durations of the
two real recordings must equal SlamKit's exactly. Without them only the frame counts are checked,
on the tiny encoder that has the real 25 Hz strides.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from slam_core.audio.io import read_audio  # noqa: E402
from slam_core.config import UnitsConfig  # noqa: E402
from slam_core.units import (  # noqa: E402
    TINY_ENCODER_LAYER, UnitExtractor, build_tiny_encoder, fit_kmeans, load_centroids, load_encoder,
)
from shared_data import REAL_SPEECH  # noqa: E402

REFERENCE = REAL_SPEECH / "reference_units_mhubert25hz_km500.jsonl"


def _reference() -> dict[str, dict]:
    rows = [json.loads(line) for line in REFERENCE.read_text().splitlines() if line.strip()]
    return {Path(r["file_name"]).name: r for r in rows}


@pytest.fixture
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add OpenMP spinning on a busy CPU
    yield
    torch.set_num_threads(before)


def test_tiny_encoder_frame_counts_on_real_speech(tmp_path, one_torch_thread):
    import numpy as np

    encoder = load_encoder(str(build_tiny_encoder(tmp_path / "tiny")))
    reference = _reference()
    waves = {name: read_audio(REAL_SPEECH / name) for name in sorted(reference)}
    feats = UnitExtractor(encoder, None, TINY_ENCODER_LAYER).features(list(waves.values()))
    centroids = fit_kmeans(np.concatenate(feats), n_units=32, iters=5, seed=0)
    extractor = UnitExtractor(encoder, centroids, TINY_ENCODER_LAYER)
    for (name, wave), (_, durations) in zip(waves.items(), extractor.units(list(waves.values()))):
        assert int(durations.sum()) == sum(reference[name]["duration"]) == len(wave) // 640
    assert sorted(int(d.sum()) for _, d in extractor.units(list(waves.values()))) == [352, 398]


@pytest.mark.skipif(
    not (os.environ.get("SLAM_MHUBERT_DIR") and os.environ.get("SLAM_KMEANS_PATH")),
    reason="set SLAM_MHUBERT_DIR (local slprl/mhubert-base-25hz) and SLAM_KMEANS_PATH (converted km500 centroids)",
)
def test_real_tokeniser_reproduces_slamkit_units():
    cfg = UnitsConfig()
    encoder = load_encoder(os.environ["SLAM_MHUBERT_DIR"], "cpu", torch.float32)
    extractor = UnitExtractor(encoder, load_centroids(Path(os.environ["SLAM_KMEANS_PATH"])), cfg.layer)
    reference = _reference()
    names = sorted(reference)
    for name, (units, durations) in zip(names, extractor.units([read_audio(REAL_SPEECH / n) for n in names])):
        assert units.tolist() == reference[name]["units"], name
        assert durations.tolist() == reference[name]["duration"], name
