"""Unit extraction speed in × real time: our length-bucketed extractor vs one-at-a-time (same process).

CPU: the tiny smoke encoder and the real HuBERT-base 25 Hz shape (random weights). GPU (when visible): the real
shape in fp16 on ~10 minutes of mixed-length audio.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import HubertConfig, HubertModel

from bench.common import best_of
from slam_core.units.encoder import build_tiny_encoder, load_encoder
from slam_core.units.extract import UnitExtractor


def _real_shape_encoder() -> HubertModel:
    cfg = HubertConfig(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       conv_dim=(512,) * 8, conv_stride=(5, 2, 2, 2, 2, 2, 2, 2), conv_kernel=(10, 3, 3, 3, 3, 2, 2, 2))
    torch.manual_seed(0)
    return HubertModel(cfg).eval()


def _waves(total_s: float, seed: int = 0) -> list[np.ndarray]:
    """Segments of 2–15 s, a few repeated lengths (as VAD segments of similar stories have)."""
    rng = np.random.default_rng(seed)
    waves, left = [], total_s
    while left > 0:
        dur = float(rng.choice([2.0, 4.0, 6.0, 10.0, 15.0]))
        waves.append((rng.standard_normal(int(dur * 16000)) * 0.1).astype(np.float32))
        left -= dur
    return waves


def run(quick: bool = True) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = load_encoder(str(build_tiny_encoder(Path(tmp) / "tiny")), device, dtype)
        shapes = {"tiny": (tiny, 2, 60.0 if quick else 300.0),
                  "hubert_base_25hz": (_real_shape_encoder().to(device, dtype), 11,
                                       (20.0 if quick else 60.0) if device.type == "cpu" else 600.0)}
        for name, (encoder, layer, audio_s) in shapes.items():
            waves = _waves(audio_s)
            centroids = np.random.default_rng(1).standard_normal((500, encoder.config.hidden_size)).astype(np.float32)
            batched = UnitExtractor(encoder, centroids, layer, device, dtype, batch_size=32)
            single = UnitExtractor(encoder, centroids, layer, device, dtype, batch_size=1)
            t_batched = best_of(lambda: batched.units(waves), repeats=2)
            t_single = best_of(lambda: [single.units([w]) for w in waves], repeats=1)
            results[name] = {"audio_s": audio_s, "x_realtime": audio_s / t_batched,
                             "baseline_one_at_a_time_x_realtime": audio_s / t_single, "ratio": t_single / t_batched}
            print(f"units[{name}]: {audio_s / t_batched:,.0f}x real time "
                  f"(one-at-a-time {audio_s / t_single:,.0f}x; ratio {t_single / t_batched:.2f})")
    return results
