"""Units on the GPU (`bench.run_all --gpu`, part "units"): HuBERT-base 25 Hz shape, random weights, layer 11.

Within `budget_s`, most important first, each result saved as soon as it exists:
1. the default mode (invariant batching, row-wise kernels) in the presets' default dtype (`units.dtype`,
   float32: its matmuls run Triton tf32x3), batches of 64 over 10 minutes of 1-20 s segments, against
   one-at-a-time extraction (speed and bit equality on a 2-minute subset);
2. the previous invariant implementation (conv stack, positional conv and attention per item) in the same
   dtype and process: the speed-up of the new kernels;
3. the same two and padded batching in fp16 (and padded in the default dtype): whether `padded` is still
   much faster than the invariant mode, and by how much;
4. the share of frames whose units equal stock fp32 extraction (HubertModel one item at a time, TF32 off) on
   the real-speech recordings and on formant speech, for the default dtype and fp16.
`smoke`: the same code on the CPU (float32 only, a small encoder, little audio); the tests run it.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from transformers import HubertModel

from bench.bench_units import (_audio_s, _real_shape_encoder, _real_speech_dir, _small_encoder, _waves,
                               formant_speech)
from bench.common import best_of
from slam_core.units.encoder import load_encoder
from slam_core.units.extract import UnitExtractor

BATCH = 64


def _default_dtype(device: torch.device) -> torch.dtype:
    from slam_core.config_sections import UnitsConfig
    from slam_core.device import pick_dtype

    return pick_dtype(UnitsConfig().dtype, device)


def _name(dtype: torch.dtype) -> str:
    return str(dtype).split(".")[1]


def _extractor(encoder: HubertModel, centroids, layer: int, device, dtype, **kw) -> UnitExtractor:
    """An extractor on its own copy of the encoder (UnitExtractor casts the module it is given in place)."""
    return UnitExtractor(copy.deepcopy(encoder), centroids, layer, device, dtype, batch_size=BATCH, **kw)


def _matmul_note(extractor: UnitExtractor) -> str:
    inv = extractor.invariant
    if inv is None:
        return "cuBLAS (stock modules)"
    note = f"{inv.matmul}, attention {inv.attention}, kernels {inv.kernels}"
    if inv.matmul == "triton" and extractor.dtype == torch.float32:
        from slam_core.units.triton_linear import fp32_precision

        note += f", fp32 as {fp32_precision()}"
    return note


def stock_fp32_frames(encoder: HubertModel, centroids: np.ndarray, layer: int, device: torch.device,
                      waves: list[np.ndarray]) -> list[np.ndarray]:
    """Units of stock fp32 extraction: HubertModel's own modules one item at a time (padded mode, batch 1),
    with TF32 off for matmuls and cuDNN convolutions."""
    flags = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        stock = UnitExtractor(copy.deepcopy(encoder).float(), centroids, layer, device, torch.float32, batch_size=1,
                              batching="padded")
        return [stock.frames([w])[0] for w in waves]
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


def _real_speech() -> tuple[list[np.ndarray], list[dict] | None, str]:
    """The real recordings and their published reference units ([], None, why when they cannot be read)."""
    folder = _real_speech_dir()
    if folder is None:
        return [], None, "no SLAM_REAL_SPEECH_DIR and no shared real-speech directory"
    files = sorted(folder.glob("audio*.flac"))
    if not files:
        return [], None, f"no audio*.flac in {folder}"
    try:
        from slam_core.audio.io import read_audio
    except ImportError as err:
        return [], None, f"cannot read FLAC here ({err})"
    ref_path = folder / "reference_units_mhubert25hz_km500.jsonl"
    refs = None
    if ref_path.is_file():
        by_name = {Path(r["file_name"]).name: r for r in map(json.loads, ref_path.read_text().splitlines()) if r}
        refs = [by_name.get(f.name) for f in files]
    return [read_audio(f) for f in files], refs, f"{len(files)} files from {folder}"


def fp32_agreement(encoder: HubertModel, layer: int, device: torch.device, dtypes: list[torch.dtype],
                   centroids: np.ndarray | None = None, synthetic_s: float = 60.0) -> dict:
    """Per dtype, the share of frames whose default-mode units equal stock fp32 extraction's, on the real
    recordings and on formant speech. Centroids: given (the real k-means), else 500 of the stock fp32 frames
    (a k-means-like geometry). With the published units at hand and the real tokeniser, also that agreement."""
    real, refs, real_note = _real_speech()
    sets = {"real_speech": real, "synthetic_speech": formant_speech(synthetic_s)}
    centroid_note = "given"
    if centroids is None:
        plain = UnitExtractor(copy.deepcopy(encoder).float(), None, layer, device, torch.float32, batch_size=1,
                              batching="padded")
        feats = np.concatenate(plain.features(real + sets["synthetic_speech"]))
        centroids = feats[np.random.default_rng(0).choice(len(feats), min(500, len(feats)), replace=False)].copy()
        centroid_note = f"{len(centroids)} of {len(feats)} stock fp32 frames"
    reference = {k: stock_fp32_frames(encoder, centroids, layer, device, v) for k, v in sets.items() if v}
    out: dict = {"reference": "stock HubertModel fp32, one item at a time, TF32 off", "centroids": centroid_note,
                 "real_speech_source": real_note}
    for dtype in dtypes:
        extractor = _extractor(encoder, centroids, layer, device, dtype)
        row: dict = {"kernels": _matmul_note(extractor)}
        for k, frames in reference.items():
            got = np.concatenate(extractor.frames(sets[k]))
            row[k] = {"frames": int(len(got)), "agreement": float((got == np.concatenate(frames)).mean())}
        if refs and all(refs) and real:
            published = np.concatenate([np.repeat(r["units"], r["duration"]) for r in refs])
            got = np.concatenate(extractor.frames(real))
            row["real_speech_vs_published_units"] = float((got == published).mean()) if len(got) == len(published) else None
        out[_name(dtype)] = row
    return out


def run_gpu(budget_s: float = 22.0, save: Callable[[dict], object] = lambda r: None, smoke: bool = False) -> dict:
    t0 = time.perf_counter()
    left = lambda: budget_s - (time.perf_counter() - t0)  # noqa: E731
    device = torch.device("cpu" if smoke else "cuda")
    default = _default_dtype(device)
    make_encoder, layer = (_small_encoder, 2) if smoke else (_real_shape_encoder, 11)
    encoder = make_encoder()
    # smoke: little enough audio for the GPU check's dry run to fit the part's 22 s on a busy 2-core CPU
    waves, subset = _waves(8.0 if smoke else 600.0), _waves(4.0 if smoke else 120.0, seed=1)
    centroids = np.random.default_rng(1).standard_normal((500, encoder.config.hidden_size)).astype(np.float32)
    r: dict = {"audio_s": _audio_s(waves), "segments": len(waves), "batch_size": BATCH, "dtype": _name(default),
               "mode": "invariant", "kernels": "rows", "equality_checked_on_audio_s": _audio_s(subset)}
    results: dict = {"note": "HuBERT-base 25 Hz shape, random weights, layer 11; x_realtime and equal_to_one_at_a_time "
                             "are the default mode (units.batching=invariant) in the presets' default dtype "
                             "(units.dtype); GPU figures come only from a GPU host", "hubert_base_25hz": r}
    # prefix, dtype, batching, kernels: most important first
    variants = [("", default, "invariant", "rows"), ("previous_invariant_", default, "invariant", "per_item")]
    if not smoke and default != torch.float16:
        variants += [("fp16_", torch.float16, "invariant", "rows"), ("fp16_previous_invariant_", torch.float16,
                                                                   "invariant", "per_item")]
    variants += [("padded_", default, "padded", "rows")]
    if not smoke and default != torch.float16:
        variants += [("fp16_padded_", torch.float16, "padded", "rows")]
    one_at_a_time: dict[str, list[np.ndarray]] = {}
    cost_s = 0.0  # the last variant's time: the next one starts only if about as much is left
    for prefix, dtype, batching, kernels in variants:
        started = time.perf_counter()
        if prefix and left() < (1 if smoke else 3) + 1.5 * cost_s:
            r["skipped_for_time"] = [p for p, *_ in variants[variants.index((prefix, dtype, batching, kernels)):]]
            break
        extractor = _extractor(encoder, centroids, layer, device, dtype, batching=batching, invariant_kernels=kernels)
        seconds = best_of(lambda: extractor.units(waves), repeats=1)
        r[f"{prefix}x_realtime"] = r["audio_s"] / seconds
        r[f"{prefix}matmul"] = _matmul_note(extractor)
        got = extractor.frames(subset)
        if batching == "invariant":
            alone = [extractor.frames([w])[0] for w in subset]
            r[f"{prefix}equal_to_one_at_a_time"] = all(np.array_equal(a, b) for a, b in zip(got, alone))
            if kernels == "rows":
                one_at_a_time[_name(dtype)] = alone
            if prefix == "":
                t_single = best_of(lambda: [extractor.units([w]) for w in subset], repeats=1)
                r["one_at_a_time_x_realtime"] = _audio_s(subset) / t_single
        elif _name(dtype) in one_at_a_time:  # padded: how often its units differ from the invariant mode's
            r[f"{prefix}frame_agreement"] = float((np.concatenate(got) == np.concatenate(one_at_a_time[_name(dtype)])).mean())
        print(f"units {prefix or 'default_'}{_name(dtype)} ({r[f'{prefix}matmul']}): "
              f"{r[f'{prefix}x_realtime']:,.0f}x real time", flush=True)
        save(results)
        cost_s = time.perf_counter() - started
    ratios = {"speed_vs_previous_invariant": ("", "previous_invariant_"),  # new kernels / previous ones
              "fp16_speed_vs_previous_invariant": ("fp16_", "fp16_previous_invariant_"),
              "padded_speed_vs_invariant": ("padded_", ""),  # is padded still much faster?
              "fp16_padded_speed_vs_invariant": ("fp16_padded_", "fp16_")}
    for key, (num, den) in ratios.items():
        if f"{num}x_realtime" in r and f"{den}x_realtime" in r:
            r[key] = r[f"{num}x_realtime"] / r[f"{den}x_realtime"]
    save(results)
    if left() > (12 if smoke else 6):  # smoke: the agreement takes ~10 s on a busy 2-core CPU
        dtypes = [default] if smoke or default == torch.float16 else [default, torch.float16]
        r["fp32_agreement"] = fp32_agreement(make_encoder(), layer, device, dtypes, synthetic_s=10.0 if smoke else 30.0)
        print(f"units vs stock fp32 frame agreement: {r['fp32_agreement']}", flush=True)
        save(results)
    real = _real_tokeniser()
    if real is not None and left() > 15:
        results["mhubert_25hz_real_weights_fp32_agreement"] = fp32_agreement(real[0], 11, device, [default, torch.float16],
                                                                             real[1])
        save(results)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    save(results)
    return results


def _real_tokeniser() -> tuple[HubertModel, np.ndarray] | None:
    """The real mHuBERT-25Hz and k-means when SLAM_MHUBERT_DIR and SLAM_KMEANS_PATH point at local copies."""
    enc_dir, km = os.environ.get("SLAM_MHUBERT_DIR"), os.environ.get("SLAM_KMEANS_PATH")
    if not (enc_dir and km):
        return None
    from slam_core.units.quantizer import load_centroids

    return load_encoder(enc_dir, "cpu", torch.float32), load_centroids(Path(km))
