"""Synthesis speed as × real time (audio seconds made per wall second; real-time factor = 1 / that).

- espeak-ng: one process, then `workers` processes through the shard runner (aggregate).
- Kokoro-82M: the real architecture (hexgrad/Kokoro-82M config.json shapes, 82M parameters) with random
  weights, since the weights cannot be downloaded here; one sentence per forward (the baseline), then
  length-sorted masked batches. Random duration predictions would make every phoneme ~0.6 s long, so
  `speed` is calibrated to real Kokoro's ~80 ms per phoneme: audio length, and with it the decoder work per
  second of audio, then match the real model.
- On a GPU: `bench/synth_gpu.py` (`python -m bench.run_all --gpu --only synth`): float32 vs reduced-precision
  autocast, batch sizes, several worker processes on the one GPU (aggregate), without G2P or catalog imports.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import torch

from bench.synth_gpu import KOKORO_REAL_CONFIG, REAL_SECONDS_PER_PHONEME
from slam_core.config import SynthConfig
from slam_core.synth import get_backend
from slam_core.synth.jobs import SHARD_FUNCTIONS, spokenswag_jobs
from slam_core.synth.shards import run_recorded_shards

TEXTS = [
    "Once upon a time, there was a little girl named Lily who loved to play in the park.",
    "One day, she found a shiny red ball under a big tree, and she was very happy.",
    "Her mom said that they should share the ball with the other kids at the park.",
    "Lily smiled, gave the ball to a small boy, and they played together until the sun went down.",
]


def _kokoro_dir(root: Path) -> Path:
    from misaki.espeak import EspeakG2P

    symbols = set(" .,!?;:")
    for language in ("en-us", "en-gb"):
        g2p = EspeakG2P(language=language)
        for text in TEXTS:
            symbols |= set(g2p(text)[0])
    config = {**KOKORO_REAL_CONFIG, "vocab": {s: i + 1 for i, s in enumerate(sorted(symbols))}}
    (root / "voices").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    torch.save({}, root / "kokoro-v1_0.pth")
    for k, voice in enumerate(("af_heart", "am_fenrir", "bf_emma", "bm_george")):
        torch.save(0.1 * torch.randn(510, 1, 256, generator=torch.Generator().manual_seed(k)), root / "voices" / f"{voice}.pt")
    return root


def _single(cfg: SynthConfig, voice: str, texts: list[str]) -> dict:
    backend = get_backend(cfg)
    backend.synthesize(texts[0], voice)  # warm-up (library load, first-call allocations)
    t0 = time.perf_counter()
    audio_s = sum(len(backend.synthesize_aligned(t, voice)[0]) / backend.sample_rate_hz for t in texts)
    wall = time.perf_counter() - t0
    return {"audio_s": round(audio_s, 2), "wall_s": round(wall, 3), "x_realtime": round(audio_s / wall, 2),
            "real_time_factor": round(wall / audio_s, 4)}


def _batched(cfg: SynthConfig, voice: str, texts: list[str], batch_size: int) -> dict:
    """All `texts` in one `synthesize_aligned_batch` call, `batch_size` sentences per masked forward."""
    backend = get_backend(cfg.model_copy(update={"kokoro_batch_size": batch_size}))
    backend.synthesize_aligned_batch([(t, voice) for t in texts[:batch_size]])  # warm-up at this batch shape
    t0 = time.perf_counter()
    results = backend.synthesize_aligned_batch([(t, voice) for t in texts])
    wall = time.perf_counter() - t0
    audio_s = sum(len(r[0]) for r in results) / backend.sample_rate_hz
    return {"batch_size": batch_size, "utterances": len(texts), "audio_s": round(audio_s, 2), "wall_s": round(wall, 3),
            "x_realtime": round(audio_s / wall, 2)}


H100_TF32_DENSE_TFLOPS = 494.7  # SXM data sheet; cuDNN convolutions run in TF32 under PyTorch's defaults


def _flops_per_audio_s(cfg: SynthConfig, voice: str, text: str) -> dict:
    """Model FLOPs per second of audio (torch's FLOP counter on one utterance), and the share of an H100's
    dense TF32 peak that 1,000x real time would need: what bounds the GPU throughput goal."""
    from torch.utils.flop_counter import FlopCounterMode

    backend = get_backend(cfg)
    with FlopCounterMode(display=False) as counter:
        wave = backend.synthesize(text, voice)
    audio_s = len(wave) / backend.sample_rate_hz
    by_op = counter.get_flop_counts()["Global"]
    total = counter.get_total_flops()
    gflop_per_s = total / 1e9 / audio_s
    return {"gflop_per_audio_s": round(gflop_per_s, 1),
            "convolution_share": round(sum(v for k, v in by_op.items() if "convolution" in str(k)) / total, 3),
            "tflops_needed_for_1000x": round(gflop_per_s, 1),
            "h100_tf32_dense_share_for_1000x": round(gflop_per_s / H100_TF32_DENSE_TFLOPS, 3)}


def _aggregate(cfg: SynthConfig, voices: list[str], workers: int, n_pairs: int) -> dict:
    """`n_pairs` SpokenSwag-style pairs through the shard runner in `workers` warm processes (catalog included)."""
    triples = [{"pair_id": f"p{i}", "prompt_text": TEXTS[i % 4], "chosen_text": TEXTS[(i + 1) % 4],
                "rejected_text": TEXTS[(i + 2) % 4]} for i in range(n_pairs)]
    cfg = cfg.model_copy(update={"shard_rows": max(1, n_pairs // (2 * workers))})
    with tempfile.TemporaryDirectory() as tmp:
        # warm-up: start the worker processes and load the backend in each (one-off cost, not throughput)
        warm = spokenswag_jobs(triples[:workers], cfg.model_copy(update={"shard_rows": 1}), voices, 1, tmp, "warm")
        run_recorded_shards(warm, workers, Path(tmp) / "catalog.duckdb", shard_functions=SHARD_FUNCTIONS)
        jobs = spokenswag_jobs(triples, cfg, voices, 0, tmp, "bench")
        t0 = time.perf_counter()
        records = run_recorded_shards(jobs, workers, Path(tmp) / "catalog.duckdb", shard_functions=SHARD_FUNCTIONS)
        wall = time.perf_counter() - t0
    audio_s = sum(r["audio_seconds"] for r in records)
    return {"workers": workers, "pairs": n_pairs, "audio_s": round(audio_s, 1), "wall_s": round(wall, 2),
            "x_realtime_aggregate": round(audio_s / wall, 1)}


def _calibrated_speed(cfg: SynthConfig) -> float:
    """Speed that makes the random model's audio as long per phoneme as the real model's."""
    backend = get_backend(cfg.model_copy(update={"kokoro_speed": 1.0}))
    text = "Lily smiled."  # short: the random model speaks ~0.6 s per phoneme at speed 1
    wave = backend.synthesize(text, "af_heart")
    n_phonemes = len(backend._get_g2p("af_heart")(text)[0])
    return (len(wave) / backend.sample_rate_hz) / (n_phonemes * REAL_SECONDS_PER_PHONEME)


def run(quick: bool = True) -> dict:
    results: dict = {"note": __doc__.split("\n\n")[0]}
    espeak = SynthConfig(backend="espeak")
    results["espeak_cpu_1_process"] = _single(espeak, "en-us", TEXTS * (1 if quick else 5))
    workers = max(1, min(4, os.cpu_count() or 1))
    results["espeak_cpu_aggregate"] = _aggregate(espeak, ["en-us", "en-gb"], workers, 16 if quick else 200)
    print(f"espeak: {results['espeak_cpu_1_process']['x_realtime']}x real time in one process, "
          f"{results['espeak_cpu_aggregate']['x_realtime_aggregate']}x aggregate with {workers} workers")
    try:
        import kokoro  # noqa: F401
    except ImportError:
        results["kokoro"] = "skipped: kokoro not installed (pip install 'slam[tts]')"
        return results
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _kokoro_dir(Path(tmp) / "kokoro")
        cfg = SynthConfig(backend="kokoro", kokoro_model=str(model_dir), voices=["af_heart"], device="cpu")
        speed = _calibrated_speed(cfg)
        cfg = cfg.model_copy(update={"kokoro_speed": speed})
        n_params = sum(p.numel() for p in get_backend(cfg)._model.parameters())
        results["kokoro_random_real_shape"] = {"parameters": n_params, "calibrated_speed": round(speed, 2),
                                               "torch_threads": torch.get_num_threads()}
        results["kokoro_compute"] = _flops_per_audio_s(cfg, "af_heart", TEXTS[0])
        print(f"kokoro: {results['kokoro_compute']['gflop_per_audio_s']} GFLOP per audio second "
              f"({results['kokoro_compute']['convolution_share']:.0%} convolutions): 1,000x real time needs "
              f"{results['kokoro_compute']['h100_tf32_dense_share_for_1000x']:.0%} of an H100's dense TF32 peak")
        cpu_texts = TEXTS[:2] if quick else TEXTS
        results["kokoro_cpu_1_process"] = _single(cfg.model_copy(update={"kokoro_batch_size": 1}), "af_heart", cpu_texts)
        results["kokoro_cpu_batched"] = _batched(cfg, "af_heart", cpu_texts, len(cpu_texts))
        results["kokoro_cpu_batched"]["ratio_vs_one_at_a_time"] = round(
            results["kokoro_cpu_batched"]["x_realtime"] / results["kokoro_cpu_1_process"]["x_realtime"], 2)
        print(f"kokoro (random weights, {n_params / 1e6:.0f}M params) on CPU: "
              f"{results['kokoro_cpu_1_process']['x_realtime']}x real time one at a time, "
              f"{results['kokoro_cpu_batched']['x_realtime']}x batched "
              f"({results['kokoro_cpu_batched']['ratio_vs_one_at_a_time']}x)")
    return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
