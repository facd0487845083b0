"""Running synthesis shards: a per-process backend cache, a worker pool, shard fingerprints, and the
catalog loop that makes a killed run continue from the last complete shard.

Each shard is written atomically and then recorded (data_catalog.produce_or_reuse), so after a kill a shard
is either recorded and complete or redone from scratch; a redone shard has the same bytes (seeded voices,
seeded decoder noise). Workers are separate processes because both backends serialise calls behind a lock
(espeak-ng is a process-wide singleton; one Kokoro model runs one utterance at a time).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import numpy as np
import soxr

from slam_core.audio.io import BadAudioError, check_samples
from slam_core.config import SynthConfig
from slam_core.fingerprint import code_version, fingerprint
from slam_core.synth.backends import get_backend
from slam_core.synth.base import TTSBackend, TTSError, TTSSetupError

log = logging.getLogger(__name__)

SYNTH_CODE_SCOPE = ("synth", "audio/io.py", "schemas.py")
# Config fields `get_backend` builds a backend from: one backend per distinct set in a process.
_BACKEND_FIELDS = ("backend", "words_per_minute", "kokoro_model", "kokoro_speed", "device", "kokoro_batch_size",
                   "kokoro_max_batch_tokens", "kokoro_dtype", "kokoro_g2p_workers")
# Config fields that change the audio (not workers / shard_rows / G2P workers: they only change how the work is
# spread). Kokoro's batch settings are among them: batch composition moves samples by float rounding.
_AUDIO_FIELDS = (*(f for f in _BACKEND_FIELDS if f not in ("device", "kokoro_g2p_workers")),
                 "sample_rate_hz", "max_utterance_chars")

# What one utterance may raise without failing its shard (it is skipped and counted with the reason).
UTTERANCE_ERRORS = (TTSError, RuntimeError, ValueError, AssertionError, IndexError)

_backends: dict[str, TTSBackend] = {}
_backends_lock = threading.Lock()
_pools: dict[int, Executor] = {}


def cached_backend(cfg: SynthConfig, voices: Sequence[str]) -> TTSBackend:
    """One backend per configuration per process (a Kokoro model is loaded once, not once per shard), with
    every voice in `voices` checked, so a bad voice fails before any audio is made."""
    key = cfg.model_dump_json(include=set(_BACKEND_FIELDS))
    with _backends_lock:
        if key not in _backends:
            _backends[key] = get_backend(cfg.model_copy(update={"voices": []}))
        backend = _backends[key]
    for voice in dict.fromkeys(voices):
        backend.check_voice(voice)
    return backend


def speak_16k(backend: TTSBackend, text: str, voice: str, sample_rate_hz: int,
              aligned: bool = False) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """Audio at `sample_rate_hz` (and word times, which resampling does not change); raises what the backend
    raises for this text."""
    result = speak_many_16k(backend, [(text, voice)], sample_rate_hz, aligned)[0]
    if isinstance(result, Exception):
        raise result
    return result


def speak_many_16k(backend: TTSBackend, requests: Sequence[tuple[str, str]], sample_rate_hz: int,
                   aligned: bool = False) -> list[tuple[np.ndarray, list[tuple[str, float, float]]] | Exception]:
    """`speak_16k` for many (text, voice) requests: one batched call when the backend has one (Kokoro),
    else one call each. A request that fails gives its exception in place of a result."""
    batch_call = getattr(backend, "synthesize_aligned_batch", None)
    if batch_call is not None:
        raw: list = batch_call(list(requests))
    else:
        raw = []
        for text, voice in requests:
            try:
                raw.append(backend.synthesize_aligned(text, voice) if aligned else (backend.synthesize(text, voice), []))
            except TTSSetupError:
                raise
            except UTTERANCE_ERRORS as err:
                raw.append(err)
    out: list = []
    for result in raw:
        if isinstance(result, Exception):
            out.append(result)
            continue
        wave, words = result
        if backend.sample_rate_hz != sample_rate_hz:
            wave = soxr.resample(wave, backend.sample_rate_hz, sample_rate_hz, quality="HQ")
        try:  # a backend's NaN or runaway output is a failed utterance, never audio in a shard
            check_samples(np.asarray(wave), "synthesised utterance", "after resampling")
        except BadAudioError as err:
            out.append(TTSError(str(err)))
            continue
        out.append((np.asarray(wave, dtype=np.float32), words if aligned else []))
    return out


def split_into_shards(items: Sequence[Any], shard_rows: int) -> list[list[Any]]:
    return [list(items[i:i + shard_rows]) for i in range(0, len(items), shard_rows)]


def shard_fingerprint(kind: str, cfg: SynthConfig, voices: Sequence[str], seed: int, items: list[dict]) -> str:
    """Digest of what a shard's bytes depend on: its items, the audio-relevant config, voices, seed, code."""
    items_digest = hashlib.sha256(json.dumps(items, sort_keys=True).encode()).hexdigest()
    config = {"synth": cfg.model_dump(mode="json", include=set(_AUDIO_FIELDS)), "voices": list(voices),
              "seed": seed, "items": items_digest}
    return fingerprint(f"synth-{kind}", config, code=code_version(SYNTH_CODE_SCOPE))


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s")


def worker_pool(workers: int) -> Executor:
    """A process pool shared by every caller in this process (spawned: safe with threads and CUDA)."""
    if workers not in _pools:
        threads = max(1, (os.cpu_count() or 1) // workers)
        _pools[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                              initializer=_init_worker, initargs=(threads,))
    return _pools[workers]


def run_shard(fn: Callable[..., dict], args: tuple, workers: int) -> dict:
    """`fn(*args)` in this process (workers == 1) or in the shared worker pool."""
    if workers <= 1:
        return fn(*args)
    return worker_pool(workers).submit(fn, *args).result()


def run_recorded_shards(jobs: list[dict], workers: int, catalog_path: str | Path, *,
                        shard_functions: Mapping[str, Callable[..., dict]], stage: str = "synth") -> list[dict]:
    """Run every job not yet in the catalog (in `workers` processes), recording each as it completes.

    A job is {"kind", "args", "out_path", "fingerprint", "dataset", "split"} (planned by slam_core.synth.jobs,
    which also owns `shard_functions`, the shard function of each kind); `shard_functions[kind](*args)` writes
    `out_path` atomically and returns {"rows", "audio_seconds", "bad"}. Returns the records in job order.
    """
    from data_catalog import Catalog, produce_or_reuse

    catalog = Catalog(catalog_path)
    records: dict[int, dict] = {}

    def produce(job: dict) -> dict:
        return shard_functions[job["kind"]](*job["args"])

    def record(index: int, result: dict | None) -> None:
        job = jobs[index]
        records[index] = produce_or_reuse(catalog, stage=stage, dataset=job["dataset"], split=job["split"],
                                          out_path=job["out_path"], fingerprint=job["fingerprint"],
                                          produce=lambda: result if result is not None else produce(job))

    todo = []
    for i, job in enumerate(jobs):
        if catalog.find_artifact(Path(job["out_path"]), job["fingerprint"]) is not None:
            record(i, None)  # recorded and complete: reused without work
        else:
            todo.append(i)
    log.info("%d of %d shards already complete; %d to synthesise with %d worker(s)",
             len(jobs) - len(todo), len(jobs), len(todo), workers)
    if workers <= 1:
        for i in todo:
            record(i, produce(jobs[i]))
    else:
        pool = worker_pool(workers)
        futures = {pool.submit(shard_functions[jobs[i]["kind"]], *jobs[i]["args"]): i for i in todo}
        for future in as_completed(futures):
            record(futures[future], future.result())
    return [records[i] for i in range(len(jobs))]
