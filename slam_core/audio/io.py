"""Audio I/O: soundfile to read, soxr to resample, to 16 kHz mono float32 at read time.

Every failure raises `BadAudioError(path, reason)` with a short machine-readable reason, so callers
can quarantine the file, count it in the catalog and go on.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Any
from pathlib import Path

import numpy as np
import soundfile as sf

TARGET_SAMPLE_RATE_HZ = 16_000
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")


class BadAudioError(Exception):
    """Audio that cannot be used; `reason` is one of: unreadable, empty, non_finite, too_long, ..."""

    def __init__(self, path: str | Path, reason: str, detail: str = "") -> None:
        self.path = str(path)
        self.reason = reason
        self.detail = detail
        super().__init__(f"{self.path}: {reason}" + (f" ({detail})" if detail else ""))


# Float audio is nominally in [-1, 1]; far beyond it (a float WAV of ±3e38) the encoder's float32 arithmetic
# overflows into NaN features, which nearest-centroid search turns into unit -1 (65535 as uint16).
MAX_ABS_SAMPLE = 1e3


def check_samples(wave: np.ndarray, source: str, stage: str) -> None:
    """BadAudioError unless every sample is finite and within ±MAX_ABS_SAMPLE."""
    if not np.isfinite(wave).all():
        raise BadAudioError(source, "non_finite", f"NaN or Inf samples {stage}")
    peak = float(np.abs(wave).max(initial=0.0))
    if peak > MAX_ABS_SAMPLE:
        raise BadAudioError(source, "out_of_range", f"peak |sample| {peak:.3g} > {MAX_ABS_SAMPLE:g} {stage}; float "
                            "audio belongs in [-1, 1]: rescale it (int-scaled floats: divide by 32768) or save 16-bit PCM")


def to_mono_16k(wave: np.ndarray, sample_rate_hz: int, source: str = "<array>") -> np.ndarray:
    """Down-mix to mono, resample to 16 kHz and check the samples are usable, before and after resampling."""
    wave = np.asarray(wave)
    if wave.size == 0:
        raise BadAudioError(source, "empty", "zero samples")
    check_samples(wave, source, "in the file")
    wave = wave.astype(np.float32)
    if wave.ndim == 2:
        wave = wave.mean(axis=1, dtype=np.float32)
    if sample_rate_hz != TARGET_SAMPLE_RATE_HZ:
        import soxr  # only when resampling: 16 kHz input needs no soxr

        wave = soxr.resample(wave, sample_rate_hz, TARGET_SAMPLE_RATE_HZ, quality="HQ").astype(np.float32)
    check_samples(wave, source, "after resampling to 16 kHz")
    return wave


def probe_audio(path: str | Path) -> Any:
    """Header of an audio file (no decoding); BadAudioError('unreadable' | 'empty') when it is unusable."""
    if Path(path).is_file() and Path(path).stat().st_size == 0:
        raise BadAudioError(path, "empty", "zero-length file")
    try:
        info = sf.info(str(path))
    except Exception as err:  # libsndfile raises several types for garbage input
        raise BadAudioError(path, "unreadable", str(err).splitlines()[0][:200]) from None
    if info.frames <= 0:
        raise BadAudioError(path, "empty", "zero frames")
    return info


def read_audio(
    path: str | Path,
    start_s: float | None = None,
    end_s: float | None = None,
    max_duration_s: float | None = None,
) -> np.ndarray:
    """Read `path` (or a [start_s, end_s) slice of it) as 16 kHz mono float32."""
    path = Path(path)
    info = probe_audio(path)
    if max_duration_s is not None and info.duration > max_duration_s:
        raise BadAudioError(path, "too_long", f"{info.duration:.0f} s > {max_duration_s:.0f} s")
    start = int(round((start_s or 0.0) * info.samplerate))
    stop = None if end_s is None else int(round(end_s * info.samplerate))
    try:
        wave, rate = sf.read(str(path), start=start, stop=stop, dtype="float32", always_2d=False)
    except Exception as err:
        raise BadAudioError(path, "truncated_or_corrupt", str(err).splitlines()[0][:200]) from None
    return to_mono_16k(wave, rate, str(path))


def decode_audio_bytes(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode FLAC/WAV bytes (as stored in Parquet audio columns) to 16 kHz mono float32."""
    if not data:
        raise BadAudioError(source, "empty", "zero bytes")
    try:
        wave, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as err:
        raise BadAudioError(source, "unreadable", str(err).splitlines()[0][:200]) from None
    return to_mono_16k(wave, rate, source)


def encode_flac(wave: np.ndarray, sample_rate_hz: int = TARGET_SAMPLE_RATE_HZ) -> bytes:
    """Encode float audio in [-1, 1] as 16-bit FLAC bytes (deterministic for the same input)."""
    buf = io.BytesIO()
    sf.write(buf, np.clip(wave, -1.0, 1.0), sample_rate_hz, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def list_audio_files(root: str | Path) -> list[Path]:
    """All audio files under `root`, recursively, in a stable order."""
    return sorted(p for p in Path(root).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


# ---- utterances read in place from audio Parquet shards (sTinyStories): no second copy as FLAC files ----------
# A SEGMENTS row's source_path `<file>.parquet#<column>:<row>` names one cell of an HF `Audio` column
# ({bytes, path} struct) or of a plain binary column.
_ROW_GROUPS_KEPT = 4
_row_group_cache: OrderedDict[tuple[str, str, int], list[Any]] = OrderedDict()
_row_group_offsets: dict[str, list[int]] = {}
_cache_lock = threading.Lock()


def parquet_audio_ref(path: str | Path, column: str, row: int) -> str:
    return f"{path}#{column}:{row}"


def parse_parquet_audio_ref(source_path: str) -> tuple[Path, str, int] | None:
    """(parquet file, column, row) of an in-place reference, or None for a plain audio file path."""
    path, sep, cell = str(source_path).rpartition("#")
    column, colon, row = cell.rpartition(":")
    if not sep or not colon or not path.endswith(".parquet") or not row.isdigit():
        return None
    return Path(path), column, int(row)


def cell_audio_bytes(cell: object) -> bytes | None:
    """HF `Audio` cells are {bytes, path} structs; plain binary columns are accepted too."""
    if isinstance(cell, dict):
        return cell.get("bytes")
    return bytes(cell) if isinstance(cell, (bytes, bytearray)) else None


def read_parquet_audio_bytes(path: Path, column: str, row: int) -> bytes:
    """The audio bytes of one row; the row group is read once and kept while its neighbours are read."""
    import pyarrow.parquet as pq

    key = str(path)
    with _cache_lock:
        if key not in _row_group_offsets:
            meta = pq.ParquetFile(path).metadata
            _row_group_offsets[key] = list(np.cumsum([0] + [meta.row_group(i).num_rows
                                                             for i in range(meta.num_row_groups)]))
        offsets = _row_group_offsets[key]
        group = int(np.searchsorted(offsets, row, side="right")) - 1
        if not 0 <= row < offsets[-1]:
            raise BadAudioError(f"{path}#{column}:{row}", "unreadable", f"no row {row} (the file has {offsets[-1]})")
        cached = _row_group_cache.get((key, column, group))
        if cached is None:
            cached = pq.ParquetFile(path).read_row_group(group, columns=[column]).column(0).to_pylist()
            _row_group_cache[(key, column, group)] = cached
            while len(_row_group_cache) > _ROW_GROUPS_KEPT:
                _row_group_cache.popitem(last=False)
        else:
            _row_group_cache.move_to_end((key, column, group))
    return cell_audio_bytes(cached[row - offsets[group]]) or b""


def probe_audio_bytes_s(data: bytes, source: str = "<bytes>") -> float:
    """Duration in seconds from the header of FLAC/WAV bytes (nothing decoded)."""
    if not data:
        raise BadAudioError(source, "empty", "zero bytes")
    try:
        info = sf.info(io.BytesIO(data))
    except Exception as err:
        raise BadAudioError(source, "unreadable", str(err).splitlines()[0][:200]) from None
    if info.frames <= 0:
        raise BadAudioError(source, "empty", "zero frames")
    return info.frames / info.samplerate


def read_segment_audio(source_path: str | Path, start_s: float | None = None, end_s: float | None = None
                       ) -> np.ndarray:
    """A SEGMENTS row's audio as 16 kHz mono float32: a slice of an audio file, or a Parquet cell read in place."""
    ref = parse_parquet_audio_ref(str(source_path))
    if ref is None:
        return read_audio(source_path, start_s, end_s)
    wave = decode_audio_bytes(read_parquet_audio_bytes(*ref), str(source_path))
    start = int(round((start_s or 0.0) * TARGET_SAMPLE_RATE_HZ))
    stop = None if end_s is None else int(round(end_s * TARGET_SAMPLE_RATE_HZ))
    return wave[start:stop]
