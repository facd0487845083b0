"""Transcript words with times, and the WORD_ALIGNMENTS shard that holds them beside a units shard.

A segment's alignment lists every word of its transcript in order, each with start/end seconds from the segment
start, or null times where no timed word matched it (the interleaver keeps such words in text). Timed words come
from a source (synthesis timings, Whisper word timestamps) and are matched to the transcript on normalised
spellings, so a word the source dropped, merged or misheard is left unaligned rather than given a wrong time. A
segment without a transcript (Libri-Light) takes the source's words as its transcript.

The share of words aligned (aligned / transcript words) is the stage's quality number: it goes into the shard
(`n_words`, `n_aligned` per segment), into the catalog and into the summary.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from slam_core.atomic import atomic_path

# units/<dataset>/<split>/words-NNNNN.parquet, beside units-NNNNN.parquet: every transcript word of a segment in
# order, start/end in seconds from the segment start (null when not aligned). Kept here rather than in
# slam_core/schemas.py, whose digest is part of the units/synth stage fingerprints: adding a schema must not
# invalidate the unit shards every data root already holds.
TIMED_WORD = pa.struct([("word", pa.string()), ("start", pa.float64()), ("end", pa.float64())])
WORD_ALIGNMENTS = pa.schema([
    ("segment_id", pa.string()), ("dataset", pa.string()), ("split", pa.string()), ("source", pa.string()),
    ("words", pa.list_(TIMED_WORD)), ("n_words", pa.int32()), ("n_aligned", pa.int32()),
])

TimedWord = tuple[str, float, float]
WordTimes = tuple[str, "float | None", "float | None"]
# Alignment sources recorded per row
SOURCES = ("synth", "asr")
_NON_WORD = re.compile(r"[^\w']+")


def normalise_word(word: str) -> str:
    """Lower case, punctuation dropped (apostrophes kept): the spelling words are matched on."""
    return _NON_WORD.sub("", word.lower()).strip("'")


def transcript_words(text: str | None) -> list[str] | None:
    """Whitespace words of a transcript (punctuation stays attached, as written); None without a transcript."""
    if text is None:
        return None
    return text.split()


def window(timed: Iterable[TimedWord], start_s: float, end_s: float | None) -> list[TimedWord]:
    """Timed words of a recording that fall in the segment [start_s, end_s] (by their midpoint), shifted to the
    segment start and clipped to its length."""
    length = None if end_s is None else end_s - start_s
    out = []
    for word, a, b in timed:
        mid = (a + b) / 2 - start_s
        if mid < 0 or (length is not None and mid > length):
            continue
        lo = max(0.0, a - start_s)
        hi = b - start_s if length is None else min(length, b - start_s)
        out.append((word, round(lo, 4), round(max(lo, hi), 4)))
    return out


def attach_times(transcript: Sequence[str] | None, timed: Sequence[TimedWord]) -> list[WordTimes]:
    """Every transcript word in order with the times of the timed word it matches, else (word, None, None).

    Matching runs difflib's longest-matching-blocks on normalised spellings; a replaced run of equal length on both
    sides (a misheard word: "colour" for "color") is matched one to one, any other difference leaves the transcript
    words unaligned. Without a transcript the timed words are the transcript. Timed words with an empty spelling
    (punctuation, or a bad time: end before start) are dropped first.
    """
    timed = [(w, float(a), float(b)) for w, a, b in timed if normalise_word(w) and a is not None and b is not None
             and b >= a >= 0]
    if transcript is None:
        return [(w.strip(), a, b) for w, a, b in timed]
    out: list[WordTimes] = [(w, None, None) for w in transcript]
    spoken = [i for i, w in enumerate(transcript) if normalise_word(w)]  # punctuation-only words stay unaligned
    left = [normalise_word(transcript[i]) for i in spoken]
    right = [normalise_word(w) for w, _, _ in timed]
    matcher = difflib.SequenceMatcher(None, left, right, autojunk=False)
    for tag, i0, i1, j0, j1 in matcher.get_opcodes():
        if tag == "equal" or (tag == "replace" and i1 - i0 == j1 - j0):
            for i, j in zip(range(i0, i1), range(j0, j1)):
                _, a, b = timed[j]
                out[spoken[i]] = (transcript[spoken[i]], a, b)
    return out


def alignment_row(segment: dict, source: str, words: Sequence[WordTimes]) -> dict:
    """A WORD_ALIGNMENTS row of a SEGMENTS row."""
    if source not in SOURCES:
        raise ValueError(f"alignment source {source!r}: expected one of {', '.join(SOURCES)}")
    return {"segment_id": segment["segment_id"], "dataset": segment["dataset"], "split": segment["split"],
            "source": source, "words": [{"word": w, "start": a, "end": b} for w, a, b in words],
            "n_words": len(words), "n_aligned": sum(1 for _, a, _ in words if a is not None)}


def write_alignments(rows: list[dict], out_path: str | Path, bad: Sequence[tuple[str, str, str]] = (),
                     audio_seconds: float = 0.0) -> dict:
    """Write rows atomically; the summary that the catalog records: rows (segments), tokens (aligned words),
    words (transcript words), the share aligned, and the segments skipped as (id, reason, detail)."""
    table = pa.Table.from_pylist(rows, schema=WORD_ALIGNMENTS)
    with atomic_path(Path(out_path), suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return {"path": str(out_path), **alignment_counts(table), "audio_seconds": audio_seconds, "bad": list(bad)}


def alignment_counts(table: pa.Table) -> dict:
    """rows, words, tokens (= aligned words) and share of a WORD_ALIGNMENTS table."""
    words = int(pc.sum(table["n_words"]).as_py() or 0) if table.num_rows else 0
    aligned = int(pc.sum(table["n_aligned"]).as_py() or 0) if table.num_rows else 0
    return {"rows": table.num_rows, "words": words, "tokens": aligned, "share_aligned": share(aligned, words)}


def read_alignment_counts(path: str | Path) -> dict:
    """`alignment_counts` of a shard on disk (two int columns read)."""
    return alignment_counts(pq.read_table(path, columns=["n_words", "n_aligned"]))


def share(aligned: int, words: int) -> float | None:
    return round(aligned / words, 4) if words else None


def read_alignments(path: str | Path) -> dict[str, list[WordTimes]]:
    """segment_id -> [(word, start, end)] of a WORD_ALIGNMENTS shard."""
    table = pq.read_table(path, columns=["segment_id", "words"])
    return {sid: [(w["word"], w["start"], w["end"]) for w in words]
            for sid, words in zip(table["segment_id"].to_pylist(), table["words"].to_pylist())}


def words_path_for(units_path: str | Path) -> Path:
    """Where the alignments of a units shard live: `units-00003.parquet` -> `words-00003.parquet` beside it."""
    units_path = Path(units_path)
    name = units_path.name
    stem = name[len("units-"):] if name.startswith("units-") else name
    return units_path.with_name(f"words-{stem}")
