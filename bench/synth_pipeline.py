"""Kokoro text to audio as the pipeline runs it: G2P (misaki/espeak) in worker processes feeding one model process
that speaks length-sorted batches (`KokoroBackend.synthesize_aligned_stream`). Part of the GPU synthesis bench
(`bench.synth_gpu.run_gpu`), which also measures the model alone on phoneme ids.

The real Kokoro-82M shapes with random weights (seeded: the same weights as `synth_gpu.build_model`, so its
calibrated speed applies), the phoneme vocabulary misaki gives the texts, the four SpokenSwag voices (both
accents) and the built-in story generator's text cut into sTinyStories utterances (<= 400 characters). A figure
counts everything from text to float32 audio on the host: G2P, batching, the forward, word timing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from bench.common import sync

VOICES = ("af_heart", "am_fenrir", "bf_emma", "bm_george")
RATE_HZ = 24_000


def utterance_requests(n: int, seed: int = 0, smoke: bool = False) -> list[tuple[str, str]]:
    """`n` (text, voice) requests: sTinyStories-style utterances of built-in stories (`smoke`: the first two
    words of the first sentence, so a CPU speaks them in seconds), voices in turn."""
    from slam_core.config import CorpusConfig
    from slam_core.corpora.builtin import generate_stories
    from slam_core.synth.stinystories import plan_utterances

    texts: list[str] = []
    k = 0
    while len(texts) < n:
        stories = generate_stories(CorpusConfig(n_train_stories=max(8, n // 2), n_heldout_stories=1), seed + k)
        utterances, _ = plan_utterances(stories, 400)
        texts += [u["text"] for u in utterances]
        k += 1
    if smoke:
        texts = [" ".join(t.split()[:2]).rstrip(",.!?") + "." for t in texts]
    return [(text, VOICES[i % len(VOICES)]) for i, text in enumerate(texts[:n])]


def build_backend(root: Path, config: dict, device: str, speed: float, batch_size: int, g2p_workers: int,
                  texts: list[str], dtype: str = "float32", seed: int = 0):
    """A KokoroBackend over a local directory: `config` (a Kokoro config without vocabulary), the phoneme
    vocabulary of `texts`, an empty state dict (random weights drawn from `seed`) and random voice packs."""
    from slam_core.rehearsal.models import kokoro_vocab
    from slam_core.synth.kokoro_tts import KokoroBackend

    root.mkdir(parents=True, exist_ok=True)
    vocab = kokoro_vocab(texts)
    if max(vocab.values()) >= config["n_token"]:
        raise ValueError(f"{len(vocab)} phoneme symbols exceed n_token {config['n_token']}")
    (root / "config.json").write_text(json.dumps({**config, "vocab": vocab}))
    torch.save({}, root / "kokoro-v1_0.pth")
    (root / "voices").mkdir(exist_ok=True)
    for k, voice in enumerate(VOICES):
        torch.save(0.1 * torch.randn(510, 1, 256, generator=torch.Generator().manual_seed(seed + k)),
                   root / "voices" / f"{voice}.pt")
    torch.manual_seed(seed)
    return KokoroBackend(str(root), speed=speed, device=device, batch_size=batch_size, max_batch_tokens=1 << 20,
                         dtype=dtype, g2p_workers=g2p_workers)


def g2p_one_process(backend, requests: list[tuple[str, str]]) -> dict:
    """The CPU step alone, in this process: how fast one core turns these texts into phoneme ids."""
    from slam_core.synth.kokoro_g2p import plan_requests

    jobs = [(i, text, voice) for i, (text, voice) in enumerate(requests)]
    plan_requests(backend.g2p.spec, jobs[:4])  # G2P objects made, espeak loaded
    t0 = time.perf_counter()
    plans = plan_requests(backend.g2p.spec, jobs)
    wall_s = time.perf_counter() - t0
    parts = sum(len(p) for p in plans if isinstance(p, list))
    return {"utterances": len(jobs), "sentences": parts, "wall_s": round(wall_s, 3),
            "utterances_per_s": round(len(jobs) / wall_s, 1)}


def _audio_s(results: list) -> tuple[float, int]:
    good = [r for r in results if not isinstance(r, Exception)]
    return sum(len(wave) for wave, _ in good) / RATE_HZ, len(good)


def text_to_audio(backend, requests: list[tuple[str, str]], call_size: int, run_s: float,
                  warm_up: list[tuple[str, str]]) -> dict:
    """Speak `requests` in calls of `call_size` through the stream (G2P of the next calls ahead in the workers)
    until `run_s` has passed after a call; after a warm-up call that starts the workers and the kernels."""
    t0 = time.perf_counter()
    backend.synthesize_aligned_batch(warm_up)
    sync()
    start_up_s = time.perf_counter() - t0
    calls = [requests[i:i + call_size] for i in range(0, len(requests), call_size)]
    audio_s, utterances, done, failed = 0.0, 0, 0, 0
    t0 = time.perf_counter()
    for results in backend.synthesize_aligned_stream(calls, lookahead=2):
        seconds, good = _audio_s(results)
        audio_s, utterances, done, failed = audio_s + seconds, utterances + good, done + 1, failed + len(results) - good
        if time.perf_counter() - t0 >= run_s:
            break
    sync()
    wall_s = time.perf_counter() - t0
    stats = backend.stream_stats
    workers = backend.g2p.workers
    return {"kind": "text_to_audio", "includes_g2p": True, "gpu_processes": 1, "g2p_workers": workers,
            "workers": workers, "dtype": "float32" if backend._autocast is None else str(backend._autocast)[6:],
            "batch_size": backend.batch_size, "calls": done, "call_size": call_size, "utterances": utterances,
            "failed_utterances": failed, "audio_s": round(audio_s, 1), "wall_s": round(wall_s, 2),
            "x_realtime_aggregate": round(audio_s / wall_s, 1) if wall_s > 0 else None,
            "g2p_wait_s": round(stats.get("g2p_wait_s", 0.0), 3), "model_step_s": round(stats.get("gpu_s", 0.0), 2),
            "start_up_s": round(start_up_s, 1)}


def run_pipeline(kokoro: dict, config: dict, device: str, speed: float, batch_size: int, g2p_workers: list[int],
                 n_requests: int, call_size: int, run_s: float, left, smoke: bool, save) -> None:
    """Append one text-to-audio run per G2P worker count to kokoro["aggregate"] (first the pipeline's, then the
    in-process comparison) while `left()` allows, and the one-core G2P rate to kokoro["g2p_one_process"]."""
    import tempfile

    requests = utterance_requests(n_requests, seed=0, smoke=smoke)
    warm_up = utterance_requests(4 * max(g2p_workers + [1]), seed=99, smoke=True)
    for workers in g2p_workers:
        if left() < run_s + 10:
            kokoro["aggregate"].append({"kind": "text_to_audio", "g2p_workers": workers, "workers": workers,
                                        "not_reached": f"{left():.0f} s of the part's budget left"})
            continue
        backend = None
        try:
            with tempfile.TemporaryDirectory() as tmp:
                backend = build_backend(Path(tmp) / "kokoro", config, device, speed, batch_size, workers,
                                        [t for t, _ in requests[:64] + warm_up])
                if "g2p_one_process" not in kokoro:
                    kokoro["g2p_one_process"] = g2p_one_process(backend, requests[:call_size])
                kokoro["aggregate"].append(text_to_audio(backend, requests, call_size, min(run_s, left() - 8), warm_up))
        except Exception as err:  # noqa: BLE001 - recorded; the rest of the bench goes on
            kokoro["aggregate"].append({"kind": "text_to_audio", "g2p_workers": workers, "workers": workers,
                                        "error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"})
        finally:
            if backend is not None:
                backend.close()
        print(f"kokoro text to audio: {kokoro['aggregate'][-1]}", flush=True)
        save()


def log_mel(wave: np.ndarray, rate: int = RATE_HZ, n_fft: int = 1024, hop: int = 256, n_mels: int = 80) -> torch.Tensor:
    """(frames, n_mels) natural-log mel power spectrum (HTK mel scale, triangular filters, floor 1e-5)."""
    x = torch.from_numpy(np.asarray(wave, np.float32))
    power = torch.stft(x, n_fft, hop, window=torch.hann_window(n_fft), return_complex=True).abs().pow(2)
    mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
    edges = 700 * (10 ** (np.linspace(mel(0), mel(rate / 2), n_mels + 2) / 2595) - 1)
    freqs = np.linspace(0, rate / 2, n_fft // 2 + 1)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    bank = np.maximum(0, np.minimum((freqs - lower) / (centre - lower), (upper - freqs) / (upper - centre)))
    return torch.log(torch.from_numpy(bank.astype(np.float32)) @ power + 1e-5).T


def log_mel_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of the two log-mel spectra (nats) over the frames of the common prefix."""
    n = min(len(a), len(b))
    return float((log_mel(a[:n]) - log_mel(b[:n])).abs().mean())


def choose_dtype(single_process: list[dict], agreement: dict) -> dict:
    """The fastest measured dtype whose audio keeps to float32's (same length for >= 90 % of utterances, >= 95 %
    of unit frames equal, log-mel distance <= 0.1 nats on same-length utterances); float32 when none does."""
    rule = ("fastest of float32 and each reduced dtype with same_length_share >= 0.9, "
            "units_frame_agreement_same_length >= 0.95 and log_mel_distance_same_length <= 0.1")
    speed = {r["dtype"]: r["x_realtime"] for r in single_process if "x_realtime" in r}
    ok = ["float32"] + [d for d, a in agreement.items() if "error" not in a and a.get("same_length_share", 0) >= 0.9
                        and (a.get("units_frame_agreement_same_length") or 0) >= 0.95
                        and (a.get("log_mel_distance_same_length") if a.get("log_mel_distance_same_length")
                             is not None else 1e9) <= 0.1]
    measured = [d for d in ok if d in speed]
    return {"dtype": max(measured, key=speed.get) if measured else "float32", "passing": ok, "rule": rule}
