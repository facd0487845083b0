"""Segmentation speed in × real time per core: silero-vad on real read speech with inserted silences.

Baseline in the same process: the same audio through silero's `get_speech_timestamps` with its default
settings on one thread, which is what a script without our segmentation config would run.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from silero_vad import get_speech_timestamps

from bench.common import best_of
from slam_core.audio.io import read_audio
from slam_core.audio.vad import load_vad_model, speech_spans_s
from slam_core.config import VadConfig

REAL_SPEECH = Path(os.environ.get("SLAM_SHARED_DIR", Path(__file__).resolve().parents[2] / "shared")) / "data" / "real-speech"


def _long_recording(minutes: float) -> np.ndarray:
    """Real speech (shared/data/real-speech) repeated with 1–2 s silences up to `minutes` of audio."""
    clips = [read_audio(p) for p in sorted(REAL_SPEECH.glob("*.flac"))]
    rng = np.random.default_rng(0)
    parts, total = [], 0
    while total < minutes * 60 * 16000:
        clip = clips[len(parts) % len(clips)]
        gap = np.zeros(int(rng.uniform(1.0, 2.0) * 16000), dtype=np.float32)
        parts += [clip, gap]
        total += len(clip) + len(gap)
    return np.concatenate(parts)


def run(quick: bool = True) -> dict:
    if not REAL_SPEECH.is_dir():
        raise FileNotFoundError(f"{REAL_SPEECH}: the shared real-speech samples are needed for this benchmark")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # × real time *per core*
    try:
        wave = _long_recording(2.0 if quick else 10.0)
        audio_s = len(wave) / 16000
        model = load_vad_model()
        cfg = VadConfig()
        ours = best_of(lambda: speech_spans_s(wave, cfg, model), repeats=1)
        base = best_of(lambda: get_speech_timestamps(torch.from_numpy(wave), model, sampling_rate=16000), repeats=1)
    finally:
        torch.set_num_threads(threads)
    print(f"vad: {audio_s / ours:,.0f}x real time per core (silero defaults {audio_s / base:,.0f}x; "
          f"ratio {base / ours:.2f})")
    return {"audio_s": audio_s, "x_realtime_per_core": audio_s / ours,
            "baseline_x_realtime_per_core": audio_s / base, "ratio": base / ours}
