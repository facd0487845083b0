"""Unit extraction speed in × real time: exact and padded batching vs one-at-a-time (same process).

CPU: the tiny smoke encoder and the real HuBERT-base 25 Hz shape (random weights). GPU (when visible): the real
shape in fp16 on 30 minutes of VAD-like segments (1-20 s).
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
    """VAD-like segments: lengths drawn continuously from 1-20 s (no two share a sample count)."""
    rng = np.random.default_rng(seed)
    waves, left = [], total_s
    while left > 0:
        n = int(rng.uniform(1.0, 20.0) * 16000)
        waves.append((rng.standard_normal(n) * 0.1).astype(np.float32))
        left -= n / 16000
    return waves


def _mean_batch(extractor: UnitExtractor, waves: list[np.ndarray]) -> float:
    plan = extractor.batch_plan([extractor.n_frames(len(w)) for w in waves])
    return len(waves) / max(len(plan), 1)


def run(quick: bool = True) -> dict:
    """× real time of exact (frame-count buckets) and padded batching vs one-at-a-time, same encoder, same audio."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = load_encoder(str(build_tiny_encoder(Path(tmp) / "tiny")), device, dtype)
        shapes = {"tiny": (tiny, 2, 600.0 if quick else 1800.0),
                  "hubert_base_25hz": (_real_shape_encoder().to(device, dtype), 11,
                                       (30.0 if quick else 120.0) if device.type == "cpu" else 1800.0)}
        for name, (encoder, layer, audio_s) in shapes.items():
            waves = _waves(audio_s)
            audio_s = sum(len(w) for w in waves) / 16000
            centroids = np.random.default_rng(1).standard_normal((500, encoder.config.hidden_size)).astype(np.float32)
            batch_size = 64 if device.type == "cuda" else 16
            exact = UnitExtractor(encoder, centroids, layer, device, dtype, batch_size=batch_size)
            padded = UnitExtractor(encoder, centroids, layer, device, dtype, batch_size=batch_size, batching="padded")
            single = UnitExtractor(encoder, centroids, layer, device, dtype, batch_size=1)
            t_exact = best_of(lambda: exact.units(waves), repeats=1)
            t_padded = best_of(lambda: padded.units(waves), repeats=1)
            t_single = best_of(lambda: [single.units([w]) for w in waves], repeats=1)
            ref = np.concatenate(single.frames(waves))
            agreement = float((np.concatenate(padded.frames(waves)) == ref).mean())
            exact_equal = all(np.array_equal(a, b) for a, b in zip(exact.frames(waves), single.frames(waves)))
            results[name] = {
                "audio_s": audio_s, "segments": len(waves), "batch_size": batch_size,
                "exact_x_realtime": audio_s / t_exact, "padded_x_realtime": audio_s / t_padded,
                "baseline_one_at_a_time_x_realtime": audio_s / t_single,
                "exact_ratio": t_single / t_exact, "padded_ratio": t_single / t_padded,
                "exact_mean_batch": _mean_batch(exact, waves), "padded_mean_batch": _mean_batch(padded, waves),
                "exact_units_equal_single": exact_equal, "padded_frame_agreement": agreement,
            }
            r = results[name]
            print(f"units[{name}]: exact {r['exact_x_realtime']:,.0f}x real time (mean batch {r['exact_mean_batch']:.1f}, "
                  f"ratio {r['exact_ratio']:.2f}, equal to single: {exact_equal}); padded {r['padded_x_realtime']:,.0f}x "
                  f"(ratio {r['padded_ratio']:.2f}, frame agreement {agreement:.5f}); one-at-a-time "
                  f"{r['baseline_one_at_a_time_x_realtime']:,.0f}x")
    return results
