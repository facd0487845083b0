"""Where word times come from: synthesis shards (the TTS backend's own timings) and Whisper for real speech.

- synth: a segment that points into an audio Parquet shard (`<file>.parquet#audio:<row>`, as `slam synth
  stinystories` and the published slprl/sTinyStories are listed) takes that row's `aligned_text`
  ({word, start_time, end_time}, seconds): Kokoro's per-token timestamps on the real path, espeak-ng's word
  events on the offline one. Nothing is recomputed, so the stage costs a Parquet read.
- asr: openai-whisper's `transcribe(word_timestamps=True)` (cross-attention DTW) on the segment audio, greedy
  (temperature 0, no fallback), each segment alone; the transcript (LibriSpeech) is matched to Whisper's words,
  and a segment without one (Libri-Light) keeps Whisper's words.

Both write one WORD_ALIGNMENTS shard per SEGMENTS shard (`words.write_alignments`); a segment whose source has
nothing (no `aligned_text` column, unreadable audio) is skipped and listed in "bad" as (segment id, reason, detail).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from slam_core.align.words import TimedWord, alignment_row, attach_times, transcript_words, window, write_alignments
from slam_core.audio.io import BadAudioError, parse_parquet_audio_ref, read_segment_audio

log = logging.getLogger(__name__)

ALIGNED_COLUMN = "aligned_text"
METHODS = ("synth", "asr")


def _read_segments(segments_path: str | Path) -> list[dict]:
    rows = pq.read_table(segments_path).to_pylist()
    ids = [r["segment_id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{segments_path}: duplicate segment_id values; each segment needs a unique id")
    return rows


def _source_path(row: dict, audio_root: Path | None) -> str:
    src = str(row["source_path"])
    if audio_root is not None and not Path(src.partition("#")[0]).is_absolute():
        return str(Path(audio_root, src))
    return src


def _seconds(rows: list[dict], skipped: set[str]) -> float:
    return float(sum(r["end_s"] - r["start_s"] for r in rows if r["segment_id"] not in skipped))


# ---------------------------------------------------------------- synthesis timings


class _AlignedColumns:
    """`aligned_text` of synthesis shards, each file's column read once (None: the file has no such column)."""

    def __init__(self) -> None:
        self._files: dict[Path, list[Any] | None] = {}

    def row(self, path: Path, row: int) -> list[TimedWord] | None:
        if path not in self._files:
            names = pq.ParquetFile(path).schema_arrow.names
            self._files[path] = (pq.read_table(path, columns=[ALIGNED_COLUMN]).column(0).to_pylist()
                                 if ALIGNED_COLUMN in names else None)
        cells = self._files[path]
        if cells is None or not 0 <= row < len(cells):
            return None
        return [(c["word"], c["start_time"], c["end_time"]) for c in cells[row] or []]


def synth_alignments(segments_path: str | Path, out_path: str | Path, audio_root: Path | None = None) -> dict:
    """SEGMENTS shard of synthesised utterances -> WORD_ALIGNMENTS shard from the synthesis timings."""
    segments = _read_segments(segments_path)
    columns = _AlignedColumns()
    rows, bad = [], []
    for seg in segments:
        ref = parse_parquet_audio_ref(_source_path(seg, audio_root))
        timed = None if ref is None else columns.row(ref[0], ref[2])
        if timed is None:
            why = ("not a cell of an audio Parquet shard" if ref is None else
                   f"{ref[0].name} has no {ALIGNED_COLUMN} column (or no row {ref[2]})")
            bad.append((seg["segment_id"], "no_synth_alignment", why))
            continue
        timed = window(timed, seg["start_s"], seg["end_s"])
        rows.append(alignment_row(seg, "synth", attach_times(transcript_words(seg.get("text")), timed)))
    return write_alignments(rows, out_path, bad, _seconds(segments, {b[0] for b in bad}))


# ---------------------------------------------------------------- Whisper word timestamps


def whisper_words(model: Any, wave_16k: np.ndarray, language: str | None = "en",
                  max_tokens: int | None = None) -> list[TimedWord]:
    """(word, start_s, end_s) of Whisper's transcript of one 16 kHz wave, from its word timestamps."""
    if wave_16k.size == 0:
        return []
    if language is None and not model.is_multilingual:
        language = "en"
    fp16 = next(model.parameters()).device.type == "cuda"
    result = model.transcribe(np.ascontiguousarray(wave_16k, dtype=np.float32), language=language,
                              word_timestamps=True, temperature=0.0, fp16=fp16, verbose=None,
                              condition_on_previous_text=False, sample_len=max_tokens)
    return [(w["word"].strip(), float(w["start"]), float(w["end"]))
            for segment in result["segments"] for w in segment.get("words", [])]


def asr_alignments(segments_path: str | Path, out_path: str | Path, model: Any, language: str | None = "en",
                   audio_root: Path | None = None, max_tokens: int | None = None,
                   recognise: Callable[[np.ndarray], list[TimedWord]] | None = None) -> dict:
    """SEGMENTS shard of real speech -> WORD_ALIGNMENTS shard from Whisper word timestamps.

    `recognise` replaces Whisper (wave -> timed words), e.g. another ASR with word times."""
    recognise = recognise or (lambda wave: whisper_words(model, wave, language, max_tokens))
    segments = _read_segments(segments_path)
    rows, bad = [], []
    for seg in segments:
        try:
            wave = read_segment_audio(_source_path(seg, audio_root), seg["start_s"], seg["end_s"])
        except BadAudioError as err:
            bad.append((seg["segment_id"], err.reason, err.detail))
            continue
        timed = recognise(wave)
        rows.append(alignment_row(seg, "asr", attach_times(transcript_words(seg.get("text")), timed)))
    out = write_alignments(rows, out_path, bad, _seconds(segments, {b[0] for b in bad}))
    log.info("%s: %d segments aligned by ASR, %s of %d words", Path(out_path).name, out["rows"],
             out["share_aligned"], out["words"])
    return out


def align_segment_shard(method: str, segments_path: str | Path, out_path: str | Path, *, asr_model: Any = None,
                        language: str | None = "en", audio_root: Path | None = None,
                        max_tokens: int | None = None) -> dict:
    """One SEGMENTS shard -> one WORD_ALIGNMENTS shard by `method` ('synth' or 'asr')."""
    if method == "synth":
        return synth_alignments(segments_path, out_path, audio_root)
    if method == "asr":
        if asr_model is None:
            raise ValueError("word alignment by ASR needs a Whisper model (slam_core.eval.asr.load_asr)")
        return asr_alignments(segments_path, out_path, asr_model, language, audio_root, max_tokens)
    raise ValueError(f"word alignment method {method!r}: expected one of {', '.join(METHODS)}")
