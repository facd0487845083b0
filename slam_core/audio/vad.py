"""Voice-activity segmentation with silero-vad: long recordings -> SEGMENTS rows (no audio copied).

silero-vad ships its model in the wheel (offline). The model keeps recurrent state between windows,
so each call loads its own copy (0.1 s) instead of sharing one across threads. Segments shorter than
cfg.min_speech_s are dropped; regions longer than cfg.max_segment_s are split (silero splits at its
longest inner pause; any remainder still too long is cut into equal parts).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slam_core.atomic import atomic_path
from slam_core.audio.io import TARGET_SAMPLE_RATE_HZ, BadAudioError, probe_audio, read_audio
from slam_core.config import VadConfig
from slam_core.schemas import SEGMENTS

log = logging.getLogger(__name__)


def load_vad_model():
    """A fresh silero-vad model (stateful: one per call or thread)."""
    from silero_vad import load_silero_vad

    return load_silero_vad()


def speech_spans_s(wave: np.ndarray, cfg: VadConfig, model=None) -> list[tuple[float, float]]:
    """Speech regions of a 16 kHz mono wave as (start_s, end_s), each at most cfg.max_segment_s long."""
    import torch
    from silero_vad import get_speech_timestamps

    model = model if model is not None else load_vad_model()
    stamps = get_speech_timestamps(
        torch.from_numpy(np.ascontiguousarray(wave, dtype=np.float32)), model,
        threshold=cfg.threshold, sampling_rate=TARGET_SAMPLE_RATE_HZ,
        min_speech_duration_ms=int(cfg.min_speech_s * 1000), max_speech_duration_s=cfg.max_segment_s,
        min_silence_duration_ms=int(cfg.min_silence_s * 1000), speech_pad_ms=int(cfg.speech_pad_s * 1000),
    )
    spans: list[tuple[float, float]] = []
    for stamp in stamps:
        start_s, end_s = stamp["start"] / TARGET_SAMPLE_RATE_HZ, stamp["end"] / TARGET_SAMPLE_RATE_HZ
        if end_s - start_s >= cfg.min_speech_s:
            spans.extend(_split_long(start_s, end_s, cfg.max_segment_s))
    return spans


def _split_long(start_s: float, end_s: float, max_segment_s: float) -> list[tuple[float, float]]:
    n_parts = max(1, math.ceil((end_s - start_s) / max_segment_s - 1e-9))
    step = (end_s - start_s) / n_parts
    return [(start_s + k * step, start_s + (k + 1) * step) for k in range(n_parts)]


# Files longer than this are read and segmented window by window, so memory stays bounded (a 3-hour file is
# 0.7 GB as float32); a speech region that crosses a window edge is cut there.
LONG_FILE_WINDOW_S = 600.0


def _speech_spans_of_file(path: str, cfg: VadConfig, model) -> tuple[list[tuple[float, float]], float]:
    """(speech spans, seconds of audio) of one file, windowed when it is longer than LONG_FILE_WINDOW_S."""
    duration_s = probe_audio(path).duration
    if duration_s <= LONG_FILE_WINDOW_S:
        wave = read_audio(path)
        return speech_spans_s(wave, cfg, model), len(wave) / TARGET_SAMPLE_RATE_HZ
    spans: list[tuple[float, float]] = []
    seconds = 0.0
    for start_s in np.arange(0.0, duration_s, LONG_FILE_WINDOW_S):
        wave = read_audio(path, float(start_s), float(min(start_s + LONG_FILE_WINDOW_S, duration_s)))
        spans += [(float(start_s + a), float(start_s + b)) for a, b in speech_spans_s(wave, cfg, model)]
        seconds += len(wave) / TARGET_SAMPLE_RATE_HZ
    return spans, seconds


def _segment_one(recording_id: str, path: str, speaker: str, cfg: VadConfig, dataset: str, split: str,
                 model) -> tuple[list[dict], float]:
    spans, seconds = _speech_spans_of_file(path, cfg, model)
    rows = [{
        "segment_id": f"{recording_id}-{k:04d}", "dataset": dataset, "split": split, "source_path": str(path),
        "start_s": round(start_s, 4), "end_s": round(end_s, 4), "speaker": speaker, "text": None,
    } for k, (start_s, end_s) in enumerate(spans)]
    return rows, seconds


def _segment_sources(sources: list[tuple[str, str, str]], cfg: VadConfig, out_path: Path, dataset: str,
                     split: str) -> dict:
    """sources: (recording_id, audio path, speaker). Bad or silent files are listed, never fatal."""
    model = load_vad_model()
    rows: list[dict] = []
    bad: list[tuple[str, str, str]] = []
    audio_seconds = 0.0
    for recording_id, path, speaker in sources:
        try:
            segments, seconds = _segment_one(recording_id, path, speaker, cfg, dataset, split, model)
        except BadAudioError as err:
            log.warning("skipping %s: %s", path, err)
            bad.append((str(path), err.reason, err.detail))
            continue
        audio_seconds += seconds
        if not segments:
            bad.append((str(path), "no_speech", f"no speech segment of at least {cfg.min_speech_s} s"))
        rows.extend(segments)
    with atomic_path(out_path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=SEGMENTS), tmp, compression="zstd")
    log.info("VAD %s/%s: %d files -> %d segments, %d bad", dataset, split, len(sources), len(rows), len(bad))
    return {"path": str(out_path), "rows": len(rows), "audio_seconds": audio_seconds, "bad": bad}


def segment_recordings(recordings_path: Path, cfg: VadConfig, out_path: Path, dataset: str, split: str) -> dict:
    """Segment every recording listed in a RECORDINGS Parquet file into SEGMENTS rows at `out_path`.

    Returns {"path", "rows", "audio_seconds", "bad": [(path, reason, detail)]}.
    """
    recordings = pq.read_table(recordings_path, columns=["recording_id", "path", "speaker"]).to_pylist()
    sources = [(r["recording_id"], r["path"], r["speaker"]) for r in recordings]
    return _segment_sources(sources, cfg, Path(out_path), dataset, split)


def segment_audio_files(paths: list[Path], cfg: VadConfig, out_path: Path, dataset: str, split: str) -> dict:
    """Segment arbitrary audio files (a user's folder); speaker = parent directory name, id = parent-stem."""
    return _segment_sources(recording_sources(paths), cfg, Path(out_path), dataset, split)


def recording_sources(paths: list[Path]) -> list[tuple[str, str, str]]:
    """(recording id, path, speaker) per file: id `<parent dir>-<stem>`; files whose ids would collide (`x.wav`
    beside `x.flac`, or two `spk/x.wav` in different trees) get the extension and, if still needed, a digest of
    the full path appended, so every file keeps its own segments."""
    base = [f"{Path(p).parent.name}-{Path(p).stem}" for p in paths]
    counts = Counter(base)
    ids = [b if counts[b] == 1 else f"{b}-{Path(p).suffix.lstrip('.').lower()}" for b, p in zip(base, paths)]
    counts = Counter(ids)
    ids = [i if counts[i] == 1 else f"{i}-{hashlib.sha256(str(p).encode()).hexdigest()[:8]}" for i, p in zip(ids, paths)]
    return [(i, str(p), Path(p).parent.name) for i, p in zip(ids, paths)]
