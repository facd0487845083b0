"""Unit extraction speed in × real time: invariant (default) and padded batching vs one-at-a-time (same process).

CPU (`run`): the tiny smoke encoder and the real HuBERT-base 25 Hz shape (random weights): the default invariant
mode (row-wise kernels), the previous invariant implementation (conv stack, positional conv and attention per
item), padded batching and one at a time. GPU (`run_gpu`, bench/units_gpu.py): the real shape in the presets'
default dtype and fp16, the same variants, and the share of frames whose units equal stock fp32 extraction.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import HubertConfig, HubertModel

from bench.common import best_of
from slam_core.units.encoder import build_tiny_encoder, load_encoder
from slam_core.units.extract import UnitExtractor

SAMPLE_RATE_HZ = 16_000


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
        n = int(rng.uniform(1.0, 20.0) * SAMPLE_RATE_HZ)
        waves.append((rng.standard_normal(n) * 0.1).astype(np.float32))
        left -= n / SAMPLE_RATE_HZ
    return waves


def _audio_s(waves: list[np.ndarray]) -> float:
    return sum(len(w) for w in waves) / SAMPLE_RATE_HZ


def _compare_modes(encoder: HubertModel, layer: int, waves: list[np.ndarray], device: torch.device,
                   dtype: torch.dtype, batch_size: int, matmuls: tuple[str, ...] = ("auto",)) -> dict:
    """× real time of invariant batching (per matmul backend) and padded batching vs one at a time, and
    whether the units equal one-at-a-time extraction (same encoder, same audio, same process)."""
    audio_s = _audio_s(waves)
    centroids = np.random.default_rng(1).standard_normal((500, encoder.config.hidden_size)).astype(np.float32)
    single = UnitExtractor(encoder, centroids, layer, device, dtype, batch_size=1)
    t_single = best_of(lambda: [single.units([w]) for w in waves], repeats=1)
    ref = single.frames(waves)
    out: dict = {"audio_s": audio_s, "segments": len(waves), "batch_size": batch_size, "dtype": str(dtype).split(".")[1],
                 "one_at_a_time_x_realtime": audio_s / t_single, "one_at_a_time_matmul": single.invariant.matmul}
    previous = UnitExtractor(encoder, centroids, layer, device, dtype, batch_size=batch_size, invariant_kernels="per_item")
    for k, matmul in enumerate(matmuls):
        invariant = UnitExtractor(encoder, centroids, layer, device, dtype, batch_size=batch_size, invariant_matmul=matmul)
        if k == 0:  # the previous invariant implementation, timed alternately with the new one (shared CPUs)
            t_previous = best_of(lambda: previous.units(waves), repeats=2)
        t = best_of(lambda: invariant.units(waves), repeats=2)
        if k == 0:
            t_previous = min(t_previous, best_of(lambda: previous.units(waves), repeats=1))
            out.update({"previous_invariant_x_realtime": audio_s / t_previous, "ratio_vs_previous_invariant": t_previous / t,
                        "previous_invariant_frame_agreement":  # other kernels, so other rounding: near-ties may differ
                            float((np.concatenate(previous.frames(waves)) == np.concatenate(ref)).mean())})
        equal = all(np.array_equal(a, b) for a, b in zip(invariant.frames(waves), ref))
        prefix = "" if k == 0 else f"invariant_{invariant.invariant.matmul}_"
        out.update({f"{prefix}x_realtime": audio_s / t, f"{prefix}equal_to_one_at_a_time": equal,
                    f"{prefix}ratio_vs_one_at_a_time": t_single / t})
        if k == 0:
            out.update({"mode": "invariant", "matmul": invariant.invariant.matmul})
    padded = UnitExtractor(encoder, centroids, layer, device, dtype, batch_size=batch_size, batching="padded")
    t_padded = best_of(lambda: padded.units(waves), repeats=1)
    out.update({"padded_x_realtime": audio_s / t_padded, "padded_ratio_vs_invariant": out["x_realtime"] * t_padded / audio_s,
                "padded_frame_agreement": float((np.concatenate(padded.frames(waves)) == np.concatenate(ref)).mean())})
    return out


def _print(name: str, r: dict) -> None:
    print(f"units[{name}] {r['dtype']}: invariant ({r['matmul']}) {r['x_realtime']:,.0f}x real time "
          f"(equal to one at a time: {r['equal_to_one_at_a_time']}, {r['ratio_vs_one_at_a_time']:.2f}x one at a time, "
          f"{r['ratio_vs_previous_invariant']:.2f}x the previous invariant kernels); "
          f"padded {r['padded_x_realtime']:,.0f}x (frame agreement {r['padded_frame_agreement']:.5f}); "
          f"one at a time {r['one_at_a_time_x_realtime']:,.0f}x")


def run(quick: bool = True) -> dict:
    """CPU (or any device): the tiny encoder and the HuBERT-base shape, invariant vs padded vs one at a time."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        tiny = load_encoder(str(build_tiny_encoder(Path(tmp) / "tiny")), device, dtype)
        shapes = {"tiny": (tiny, 2, 600.0 if quick else 1800.0),
                  "hubert_base_25hz": (_real_shape_encoder().to(device, dtype), 11, 30.0 if quick else 120.0)}
        for name, (encoder, layer, audio_s) in shapes.items():
            results[name] = _compare_modes(encoder, layer, _waves(audio_s), device, dtype, 16)
            _print(name, results[name])
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
    """Recorded speech (the shared real-speech files) and espeak-ng synthetic speech (formant speech where espeak-ng
    cannot be loaded), 16 kHz mono."""
    from slam_core.audio.io import list_audio_files, read_audio, to_mono_16k
    from slam_core.config import SynthConfig
    from slam_core.synth.backends import get_backend
    from slam_core.synth.base import TTSSetupError

    sets = {}
    real = _real_speech_dir()
    if real is not None:
        sets["real_speech"] = [read_audio(p) for p in list_audio_files(real)]
    n = 8 if quick else 40
    try:
        tts = get_backend(SynthConfig(backend="espeak"))
    except (TTSSetupError, OSError):
        sets["synthetic_speech_formant"] = formant_speech(3.5 * n)
        return sets
    voices = ["en-us", "en-gb", "en-us+f3", "en-us+m3"]
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

    from slam_core.units.quantizer import load_centroids

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
        try:
            from slam_core.units.quantizer import fit_kmeans

            centroids = fit_kmeans(feats, 500, 20, seed=0)
            centroid_source = f"faiss k-means 500 on {len(feats)} fp32 frames of the same audio"
        except ImportError:  # no faiss on this host: 500 of the frames themselves, a k-means-like geometry
            centroids = feats[np.random.default_rng(0).choice(len(feats), 500, replace=False)].copy()
            centroid_source = f"500 of {len(feats)} fp32 frames of the same audio (faiss unavailable)"
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


# ---- GPU ------------------------------------------------------------------------------------------


def formant_speech(total_s: float, seed: int = 0) -> list[np.ndarray]:
    """Synthetic speech-like segments (2-8 s): a glottal pulse train with a wandering pitch through three
    vowel formant resonances (applied in the frequency domain), syllables of 80-250 ms with short pauses.
    It needs no TTS, which GPU hosts lack."""
    rng = np.random.default_rng(seed)
    vowels = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480), (640, 1190, 2390),
              (490, 1350, 1690), (660, 1720, 2410), (440, 1020, 2240)]
    waves, left = [], total_s
    while left > 0:
        pieces = []
        for _ in range(int(rng.uniform(2, 8) / 0.2)):
            n = int(rng.uniform(0.08, 0.25) * SAMPLE_RATE_HZ)
            f0 = rng.uniform(90, 220) * np.exp(np.linspace(0, rng.normal(0, 0.15), n))
            pulses = (np.diff(np.floor(np.cumsum(f0) / SAMPLE_RATE_HZ), prepend=0) > 0).astype(np.float64)
            freqs = np.fft.rfftfreq(2 * n, 1 / SAMPLE_RATE_HZ)
            response = np.ones(len(freqs))
            for formant, bandwidth in zip(vowels[rng.integers(len(vowels))], (80, 100, 120)):
                half = bandwidth / 2
                response /= np.abs(1 + 1j * (freqs - formant) / half) * np.abs(1 + 1j * (freqs + formant) / half)
            source = np.fft.irfft(np.fft.rfft(pulses, 2 * n) * response, 2 * n)[:n]
            pieces += [source * np.hanning(n), np.zeros(int(rng.uniform(0, 0.06) * SAMPLE_RATE_HZ))]
        wave = np.concatenate(pieces) + 0.003 * rng.standard_normal(sum(map(len, pieces)))
        waves.append((0.3 * wave / np.abs(wave).max()).astype(np.float32))
        left -= len(wave) / SAMPLE_RATE_HZ
    return waves


def run_gpu(budget_s: float = 22.0, save: Callable[[dict], object] = lambda r: None, smoke: bool = False) -> dict:
    """The GPU part (`bench.run_all --gpu`): see bench/units_gpu.py."""
    from bench.units_gpu import run_gpu as run

    return run(budget_s=budget_s, save=save, smoke=smoke)


def _small_encoder() -> HubertModel:
    """HuBERT-base's layout (group norm in conv layer 0, post-LN) at a CPU-friendly size, for smoke runs."""
    from slam_core.units.encoder import tiny_encoder_config

    cfg = tiny_encoder_config()
    cfg.feat_extract_norm = "group"
    torch.manual_seed(0)
    return HubertModel(cfg).eval()
