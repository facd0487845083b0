"""Unit extraction speed in × real time: exact and padded batching vs one-at-a-time (same process).

CPU: the tiny smoke encoder and the real HuBERT-base 25 Hz shape (random weights). GPU (when visible): the real
shape in fp16 on 30 minutes of VAD-like segments (1-20 s).
"""

from __future__ import annotations

import os
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
    results["dtype_agreement"] = dtype_agreement(quick)
    return results


# ---- HuBERT dtype: do bf16/fp16 units agree with fp32 ones? ---------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AGREEMENT_TARGET = 0.999  # a reduced-precision dtype becomes the default only if >= 99.9 % of frames keep their unit
SYNTH_SENTENCES = ["The little fox ran across the field to find her friends.",
                   "Once upon a time there was a girl who loved to read books about the sea.",
                   "He opened the door slowly and looked at the garden in the rain.",
                   "They counted seven boats, three red ones and four white ones, before lunch."]


def _real_speech_dir() -> Path | None:
    for cand in (os.environ.get("SLAM_REAL_SPEECH_DIR"), Path(__file__).resolve().parents[2] / "shared/data/real-speech",
                 "/work/shared/data/real-speech"):
        if cand and Path(cand).is_dir():
            return Path(cand)
    return None


def _speech_sets(quick: bool) -> dict[str, list[np.ndarray]]:
    """Recorded speech (the shared real-speech files) and espeak-ng synthetic speech, 16 kHz mono."""
    from slam_core.audio.io import list_audio_files, read_audio, to_mono_16k
    from slam_core.config import SynthConfig
    from slam_core.synth.backends import get_backend

    sets = {}
    real = _real_speech_dir()
    if real is not None:
        sets["real_speech"] = [read_audio(p) for p in list_audio_files(real)]
    tts = get_backend(SynthConfig(backend="espeak"))
    voices = ["en-us", "en-gb", "en-us+f3", "en-us+m3"]
    n = 8 if quick else 40
    sets["synthetic_speech"] = [to_mono_16k(tts.synthesize(SYNTH_SENTENCES[i % len(SYNTH_SENTENCES)],
                                                           voices[i % len(voices)]), tts.sample_rate_hz)
                                for i in range(n)]
    return sets


def dtype_agreement(quick: bool = True, device: str | None = None) -> dict:
    """fp32 vs bf16 vs fp16 HuBERT on a GPU: the share of 25 Hz frames whose unit equals the fp32 unit, per speech
    set, and each dtype's speed; `recommended_default` is the fastest dtype at >= AGREEMENT_TARGET on every set.

    Encoder: the real mHuBERT-25Hz when SLAM_MHUBERT_DIR names a local copy, else the HuBERT-base 25 Hz shape with
    random weights (a proxy: the agreement of real features may differ). Centroids: SLAM_KMEANS_PATH (the
    published km500, converted), else 500 centroids fitted with faiss on the fp32 frames of the same audio, so the
    argmin sees a realistic cluster geometry rather than random points. Skipped without CUDA (`device="cpu"`
    runs it anyway, to check the code path).
    """
    if device is None and not torch.cuda.is_available():
        return {"skipped": "no CUDA device: bf16/fp16 only differ from fp32 on a GPU (CPU always runs fp32)"}
    import copy

    from slam_core.units.quantizer import fit_kmeans, load_centroids

    device = torch.device(device or "cuda")
    if os.environ.get("SLAM_MHUBERT_DIR"):
        base, encoder_name = load_encoder(os.environ["SLAM_MHUBERT_DIR"], "cpu", torch.float32), "mhubert-base-25hz"
    else:
        base, encoder_name = _real_shape_encoder(), "hubert-base 25 Hz shape, random weights (proxy)"
    sets = _speech_sets(quick)
    fp32 = UnitExtractor(copy.deepcopy(base), None, 11, device, torch.float32, batch_size=16)
    if os.environ.get("SLAM_KMEANS_PATH"):
        centroids, centroid_source = load_centroids(Path(os.environ["SLAM_KMEANS_PATH"])), "SLAM_KMEANS_PATH"
    else:
        feats = np.concatenate([f for waves in sets.values() for f in fp32.features(waves)])
        centroids = fit_kmeans(feats, 500, 20, seed=0)
        centroid_source = f"faiss k-means 500 on {len(feats)} fp32 frames of the same audio"
    out = {"target": AGREEMENT_TARGET, "encoder": encoder_name, "centroids": centroid_source, "layer": 11,
           "sets": {name: {"files": len(w), "audio_s": round(sum(len(x) for x in w) / 16000, 2)}
                    for name, w in sets.items()},
           "dtypes": {}}
    reference: dict[str, np.ndarray] = {}
    for name, dtype in DTYPES.items():
        extractor = UnitExtractor(copy.deepcopy(base), centroids, 11, device, dtype, batch_size=16)
        row = {"agreement": {}, "x_realtime": {}}
        for set_name, waves in sets.items():
            frames = np.concatenate(extractor.frames(waves))
            reference.setdefault(set_name, frames)  # float32 runs first
            row["agreement"][set_name] = float((frames == reference[set_name]).mean())
            seconds = best_of(lambda: extractor.units(waves), repeats=2)
            row["x_realtime"][set_name] = out["sets"][set_name]["audio_s"] / seconds
        out["dtypes"][name] = row
        print(f"units dtype {name}: agreement with fp32 {row['agreement']}, x real time "
              f"{ {k: round(v) for k, v in row['x_realtime'].items()} }")
    agreeing = [d for d, r in out["dtypes"].items() if min(r["agreement"].values()) >= AGREEMENT_TARGET]
    out["recommended_default"] = max(agreeing, key=lambda d: sum(out["dtypes"][d]["x_realtime"].values()))
    return out
