"""Kokoro-82M on the GPU: the batched masked forward in float32 vs bfloat16/float16 autocast, text to audio as the
pipeline runs it (G2P worker processes feeding one model process: `bench.synth_pipeline`), and several model
processes on the one GPU (aggregate × real time). Run by `python -m bench.run_all --gpu` (part `synth`).

The real architecture (hexgrad/Kokoro-82M config.json shapes) with random weights. The model-only runs take
random phoneme-id sequences of sentence length (40-200 phonemes) with random style vectors; the text-to-audio
runs also do G2P (misaki and espeak-ng, carried to the GPU host) on built-in story text. `speed` is calibrated so the
random model speaks ~80 ms per phoneme like the real one (audio length, and so decoder work per second of
audio, then match). Audio difference against float32: signal-to-noise ratio on utterances whose predicted
durations agree (equal length), log-mel distance (nats) and log-spectral distance, and the share of 25 Hz frames
whose units (HuBERT-base shape, random weights, float32) agree; `dtype_choice` names the fastest dtype that keeps
to float32 by a stated rule.

The model-only runs import only torch, numpy, transformers and the `kokoro` package's model modules (not its G2P
stack, which needs spaCy); the text-to-audio runs also need misaki, phonemizer and espeakng-loader.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing as mp
import sys
import tempfile
import time
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import sync
from bench.synth_pipeline import choose_dtype, log_mel_distance, run_pipeline
from slam_core.rehearsal.models import KOKORO_82M
from slam_core.synth.kokoro_batch import KokoroItem, forward_batch

# hexgrad/Kokoro-82M config.json (v1.0): the shapes that decide the compute (one copy, shared with the rehearsal).
KOKORO_REAL_CONFIG = KOKORO_82M
# A lighter variant for smoke runs on a CPU (tests): the same modules with a small PL-BERT (the decoder's
# widths are fixed in kokoro's code).
SMALL_CONFIG = {**KOKORO_REAL_CONFIG,
                "plbert": {**KOKORO_REAL_CONFIG["plbert"], "hidden_size": 64, "num_attention_heads": 2,
                           "intermediate_size": 128, "num_hidden_layers": 2}}
REAL_SECONDS_PER_PHONEME = 0.08
KOKORO_RATE_HZ = 24_000
DTYPES = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


def import_kmodel():
    """kokoro's KModel class; without misaki/spaCy (GPU hosts) its modules are loaded without the package's
    __init__, which imports the G2P pipeline."""
    try:
        from kokoro.model import KModel

        return KModel
    except ImportError:
        pass
    spec = importlib.util.find_spec("kokoro")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("kokoro is not installed: carry kokoro==0.9.4 and loguru wheels (pip install 'slam[tts]')")
    for name in [m for m in sys.modules if m == "kokoro" or m.startswith("kokoro.")]:
        del sys.modules[name]
    package = types.ModuleType("kokoro")
    package.__path__ = list(spec.submodule_search_locations)
    sys.modules["kokoro"] = package
    from kokoro.model import KModel

    return KModel


def build_model(root: Path, device: torch.device, seed: int = 0, small: bool = False):
    """The Kokoro-82M shape (`small`: SMALL_CONFIG) with random weights (an empty state dict), on `device`."""
    root.mkdir(parents=True, exist_ok=True)
    vocab = {chr(0x250 + i): i + 1 for i in range(KOKORO_REAL_CONFIG["n_token"] - 1)}
    config = {**(SMALL_CONFIG if small else KOKORO_REAL_CONFIG), "vocab": vocab}
    (root / "config.json").write_text(json.dumps(config))
    torch.save({}, root / "kokoro-v1_0.pth")
    torch.manual_seed(seed)
    model = import_kmodel()(repo_id="hexgrad/Kokoro-82M", config=str(root / "config.json"),
                            model=str(root / "kokoro-v1_0.pth"))
    return model.eval().to(device)


def make_items(n: int, seed: int, phonemes: tuple[int, int] = (40, 200)) -> list[KokoroItem]:
    rng = np.random.default_rng(seed)
    items = []
    for k in range(n):
        ids = rng.integers(1, KOKORO_REAL_CONFIG["n_token"], int(rng.integers(*phonemes))).tolist()
        style = torch.from_numpy(0.1 * rng.standard_normal((1, 256)).astype(np.float32))
        items.append(KokoroItem(input_ids=[0, *ids, 0], ref_s=style, seed=seed * 100_000 + k))
    return items


def calibrated_speed(model, items: list[KokoroItem]) -> float:
    out = forward_batch(model, items, speed=1.0)
    audio_s = sum(len(w) for w, _ in out) / KOKORO_RATE_HZ
    return audio_s / (sum(len(it.input_ids) - 2 for it in items) * REAL_SECONDS_PER_PHONEME)


def synthesize(model, items: list[KokoroItem], batch_size: int, speed: float, dtype: str) -> list[np.ndarray]:
    """Audio per item (input order), items length-sorted into batches of `batch_size`."""
    order = sorted(range(len(items)), key=lambda i: len(items[i].input_ids))
    out: list[np.ndarray] = [np.zeros(0, np.float32)] * len(items)
    for lo in range(0, len(order), batch_size):
        batch = order[lo:lo + batch_size]
        for i, (wave, _) in zip(batch, forward_batch(model, [items[i] for i in batch], speed, DTYPES[dtype])):
            out[i] = wave.float().cpu().numpy()
    return out


def _x_realtime(model, items, batch_size: int, speed: float, dtype: str) -> dict:
    synthesize(model, items[:batch_size], batch_size, speed, dtype)  # warm-up at this batch shape
    sync()
    t0 = time.perf_counter()
    audio_s = sum(map(len, synthesize(model, items, batch_size, speed, dtype))) / KOKORO_RATE_HZ
    wall_s = time.perf_counter() - t0
    return {"dtype": dtype, "batch_size": batch_size, "utterances": len(items), "audio_s": round(audio_s, 1),
            "wall_s": round(wall_s, 3), "x_realtime": round(audio_s / wall_s, 1)}


# ---- audio difference --------------------------------------------------------------------------------


def _log_spectral_distance_db(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over frames of the RMS difference of the two log power spectra (dB), on the common prefix."""
    n = min(len(a), len(b))
    window = torch.hann_window(1024)
    spec = [torch.stft(torch.from_numpy(x[:n].astype(np.float32)), 1024, 256, window=window, return_complex=True).abs()
            for x in (a, b)]
    diff = 20 * (torch.log10(spec[0] + 1e-5) - torch.log10(spec[1] + 1e-5))
    return float(diff.pow(2).mean(dim=0).sqrt().mean())


def resample_24k_to_16k(wave: torch.Tensor) -> torch.Tensor:
    """Polyphase 2/3 resampling with a Kaiser-windowed sinc low-pass (cut-off 7.2 kHz), on wave's device."""
    taps = 96 * 2 + 1
    t = torch.arange(taps, dtype=torch.float64) - taps // 2
    cutoff = 0.45 / 2  # of the upsampled 48 kHz rate: 0.9 x the 8 kHz Nyquist of the output
    kernel = 2 * cutoff * torch.sinc(2 * cutoff * t) * torch.kaiser_window(taps, periodic=False, beta=8.0, dtype=torch.float64)
    kernel = (2 * kernel / kernel.sum()).float().to(wave.device)
    up = torch.zeros(wave.shape[-1] * 2, device=wave.device)
    up[::2] = wave
    filtered = F.conv1d(up[None, None], kernel.flip(0)[None, None], padding=taps // 2)[0, 0]
    return filtered[::3]


def dtype_agreement(model, items: list[KokoroItem], speed: float, batch_size: int, dtypes: list[str],
                    small_encoder: bool = False) -> dict:
    """Each reduced dtype's audio against float32's: SNR, log-spectral distance, units agreement (HuBERT-base
    shape; `small_encoder`: the CPU-sized stand-in of smoke runs)."""
    from bench.bench_units import _real_shape_encoder, _small_encoder
    from slam_core.units.extract import UnitExtractor

    reference = synthesize(model, items, batch_size, speed, "float32")
    device = next(model.parameters()).device
    to16k = lambda w: resample_24k_to_16k(torch.from_numpy(w).to(device)).cpu().numpy()  # noqa: E731
    encoder, layer = (_small_encoder(), 2) if small_encoder else (_real_shape_encoder(), 11)
    encoder = encoder.to(device)
    plain = UnitExtractor(encoder, None, layer, device, torch.float32, batch_size=32)
    feats = np.concatenate(plain.features([to16k(w) for w in reference]))
    centroids = feats[np.random.default_rng(0).choice(len(feats), min(500, len(feats)), replace=False)].copy()
    units = UnitExtractor(encoder, centroids, layer, device, torch.float32, batch_size=32)
    out = {}
    for dtype in dtypes:
        try:
            got = synthesize(model, items, batch_size, speed, dtype)
        except RuntimeError as err:  # e.g. an op without a kernel for this dtype: report, go on
            out[dtype] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
            continue
        same = [i for i in range(len(items)) if len(got[i]) == len(reference[i])]
        mel = [log_mel_distance(got[i], reference[i]) for i in same]
        noise = sum(float(np.sum((got[i] - reference[i]) ** 2)) for i in same)
        signal = sum(float(np.sum(reference[i] ** 2)) for i in same)
        ref_units = units.frames([to16k(reference[i]) for i in same])
        got_units = units.frames([to16k(got[i]) for i in same])
        agree = np.concatenate(ref_units) == np.concatenate(got_units) if same else np.zeros(0, bool)
        out[dtype] = {
            "finite": bool(all(np.isfinite(g).all() for g in got)),
            "same_length_share": round(len(same) / len(items), 3),
            "snr_db_same_length": (round(float(10 * np.log10(signal / noise)), 2) if noise > 0 else "identical") if same else None,
            "log_mel_distance_same_length": round(float(np.mean(mel)), 4) if mel else None,
            "log_spectral_distance_db": round(float(np.mean([_log_spectral_distance_db(g, r) for g, r in zip(got, reference)])), 3),
            "units_frame_agreement_same_length": round(float(agree.mean()), 4) if len(agree) else None,
        }
    return out


# ---- several worker processes on one GPU -------------------------------------------------------------


def _worker(rank: int, device: str, dtype: str, batch_size: int, speed: float, run_s: float,
            phonemes: tuple[int, int], small: bool, barrier, queue) -> None:
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model = build_model(Path(tmp) / "kokoro", torch.device(device), small=small)
        items = make_items(4 * batch_size, seed=1000 + rank, phonemes=phonemes)
        synthesize(model, items[:batch_size], batch_size, speed, dtype)  # warm-up
        sync()
        barrier.wait(timeout=300)
        start, audio_s, k, done = time.time(), 0.0, 0, 0
        while time.time() - start < run_s:  # one batch at a time, so the window ends close to run_s
            batch = items[(k % 4) * batch_size:(k % 4 + 1) * batch_size]
            audio_s += sum(map(len, synthesize(model, batch, batch_size, speed, dtype))) / KOKORO_RATE_HZ
            k, done = k + 1, done + len(batch)
        sync()
        queue.put((rank, audio_s, start, time.time(), None, done))
    except Exception as err:  # noqa: BLE001 - reported to the parent, which records it
        barrier.abort()
        queue.put((rank, 0.0, 0.0, 0.0, f"{type(err).__name__}: {err}", 0))


def aggregate(workers: int, dtype: str, batch_size: int, speed: float, run_s: float, device: str = "cuda",
              phonemes: tuple[int, int] = (40, 200), small: bool = False, wait_s: float = 600.0) -> dict:
    """`workers` processes, each with its own model, synthesising for `run_s` seconds after a common start. Workers
    that have not all reported within `wait_s` are stopped and the figure is recorded as not reached."""
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(workers), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(r, device, dtype, batch_size, speed, run_s, phonemes, small, barrier, queue))
             for r in range(workers)]
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    reports = []
    try:
        for _ in procs:
            reports.append(queue.get(timeout=max(1.0, wait_s - (time.perf_counter() - t0))))
    except queue_mod.Empty:
        for p in procs:
            p.terminate()
        return {"kind": "model_processes", "includes_g2p": False, "gpu_processes": workers, "workers": workers,
                "dtype": dtype, "batch_size": batch_size, "not_reached": f"{len(reports)} of {workers} workers reported within {wait_s:.0f} s (start-up, "
                               f"then {run_s:.0f} s of synthesis); stopped"}
    for p in procs:  # within the same wait: a worker slow to exit is stopped
        p.join(timeout=max(0.1, wait_s - (time.perf_counter() - t0)))
        if p.is_alive():
            p.terminate()
    errors = [r[4] for r in reports if r[4]]
    if errors:
        return {"kind": "model_processes", "gpu_processes": workers, "workers": workers, "error": errors[0]}
    window_s = max(r[3] for r in reports) - min(r[2] for r in reports)
    audio_s = sum(r[1] for r in reports)
    return {"kind": "model_processes", "includes_g2p": False, "gpu_processes": workers, "g2p_workers": 0,
            "workers": workers, "dtype": dtype, "batch_size": batch_size, "utterances": sum(r[5] for r in reports),
            "audio_s": round(audio_s, 1), "wall_s": round(window_s, 2), "x_realtime_aggregate": round(audio_s / window_s, 1),
            "start_up_s": round(time.perf_counter() - t0 - window_s, 1)}


def summarize(kokoro: dict, top: dict) -> None:
    """The headline fields: the best single-process run, and the best aggregate of several processes when one was
    measured: text to audio with G2P worker processes (`kind` text_to_audio) or several model processes on phoneme
    ids (model_processes), whichever is faster, its kind, processes, utterances, audio and wall seconds copied
    beside it. One process is never reported as the aggregate: then aggregate_x_realtime is None and
    aggregate_status says why."""
    kokoro.update({"x_realtime_one_process": top["x_realtime"], "dtype": top["dtype"], "batch_size": top["batch_size"]})
    runs = [r for r in kokoro["aggregate"] if "x_realtime_aggregate" in r and r["workers"] > 1]
    fastest = max(runs, key=lambda r: r["x_realtime_aggregate"], default=None)
    if fastest is not None:
        kokoro.update({"aggregate_x_realtime": fastest["x_realtime_aggregate"], "aggregate_workers": fastest["workers"],
                       "aggregate_status": "measured", **{f"aggregate_{k}": fastest.get(k) for k in (
                           "kind", "includes_g2p", "gpu_processes", "g2p_workers", "utterances", "audio_s", "wall_s")}})
    else:
        why = [f"{r.get('kind', 'model_processes')} with {r['workers']} workers: {r.get('not_reached') or r.get('error')}"
               for r in kokoro["aggregate"] if r.get("not_reached") or r.get("error")]
        kokoro.update({"aggregate_x_realtime": None, "aggregate_workers": None,
                       "aggregate_status": "not reached: " + ("; ".join(why) or "not started")})


def run_gpu(budget_s: float = 35.0, save: Callable[[dict], object] = lambda r: None, smoke: bool = False) -> dict:
    """Within `budget_s`, most important first: one model process in float32 (batch 64); text to audio with 8 G2P
    worker processes feeding one model process; 4 model processes in float32 (each recorded as not reached when it
    does not finish in time); text to audio with G2P in the model's process (the comparison); bfloat16, float16
    and batch 16; reduced precision against float32 and the dtype choice. Results saved after every part.
    `smoke`: the same code on the CPU with a few short utterances and a lighter PL-BERT, 2 workers (tests run it)."""
    t0 = time.perf_counter()
    device = torch.device("cpu" if smoke else "cuda")
    phonemes, n_items, sizes = ((6, 12), 2, (1, 2)) if smoke else ((40, 200), 128, (16, 64))
    results: dict = {"note": __doc__.split("\n\n")[0]}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "kokoro", device, small=smoke)
    # calibration speaks ~0.6 s per phoneme at speed 1: minutes on a CPU, so smoke runs take the GPU-measured 9
    speed = 9.0 if smoke else calibrated_speed(model, make_items(8, seed=7, phonemes=phonemes))
    items = make_items(n_items, seed=0, phonemes=phonemes)
    kokoro: dict = {"parameters": sum(p.numel() for p in model.parameters()), "calibrated_speed": round(speed, 2),
                    "single_process": [], "aggregate": []}
    results["kokoro"] = kokoro
    left = lambda: budget_s - (time.perf_counter() - t0)  # noqa: E731

    cost = {"single_s": 0.0}  # the last one-process run's wall time with its warm-up: the next ones start if it fits

    def single(dtype: str, batch_size: int) -> None:
        started = time.perf_counter()
        try:
            kokoro["single_process"].append(_x_realtime(model, items, batch_size, speed, dtype))
        except RuntimeError as err:
            kokoro["single_process"].append({"dtype": dtype, "batch_size": batch_size, "error": str(err)[:200]})
        print(f"kokoro single process: {kokoro['single_process'][-1]}", flush=True)
        save(results)
        cost["single_s"] = time.perf_counter() - started

    def best() -> dict:
        return max((r for r in kokoro["single_process"] if "x_realtime" in r), key=lambda r: r["x_realtime"],
                   default={"x_realtime": None, "dtype": None, "batch_size": None})

    def text_to_audio(g2p_workers: list[int]) -> None:
        config = SMALL_CONFIG if smoke else KOKORO_REAL_CONFIG
        n_requests, call_size, run_s = (8, 4, 2.0) if smoke else (1024, 64, 6.0)
        run_pipeline(kokoro, config, device.type, speed, sizes[1], g2p_workers, n_requests, call_size, run_s,
                     left, smoke, lambda: (summarize(kokoro, best()), save(results)))

    # most important first: one process in float32 (the reference), the pipeline's text to audio, several model
    # processes, then G2P in one process and the other dtypes
    single("float32", sizes[1])
    summarize(kokoro, best())
    save(results)
    text_to_audio([2 if smoke else 8])
    workers = 2 if smoke else 4
    if left() >= 20:
        run_s = 2.0 if smoke else max(4.0, min(10.0, left() - 25))  # the rest: spawn, imports, model, warm-up
        kokoro["aggregate"].append(aggregate(workers, "float32", sizes[1], speed, run_s=run_s, device=device.type,
                                             phonemes=phonemes, small=smoke, wait_s=left() - 3))
    else:
        kokoro["aggregate"].append({"kind": "model_processes", "workers": workers,
                                    "not_reached": f"{left():.0f} s of the part's budget left"})
    print(f"kokoro aggregate: {kokoro['aggregate'][-1]}", flush=True)
    summarize(kokoro, best())
    save(results)
    text_to_audio([0])
    if left() > max(8, 1.2 * cost["single_s"]):
        single("bfloat16", sizes[1])
    for dtype, batch_size in [] if smoke else [("float16", sizes[1]), ("float32", sizes[0])]:
        if left() > max(8, 1.2 * cost["single_s"]):
            single(dtype, batch_size)
    if left() > max(10, 2 * cost["single_s"]):
        kokoro["dtype_agreement"] = dtype_agreement(model, items[:4 if smoke else 32], speed, sizes[0],
                                                    ["bfloat16"] if smoke else ["bfloat16", "float16"], smoke)
        kokoro["dtype_choice"] = choose_dtype(kokoro["single_process"], kokoro["dtype_agreement"])
        print(f"kokoro reduced precision vs float32: {kokoro['dtype_agreement']}; choice {kokoro['dtype_choice']}",
              flush=True)
        save(results)
    summarize(kokoro, best())
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    save(results)
    return results
