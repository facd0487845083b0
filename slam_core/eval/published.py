"""The published modelling sets (sBLIMP, sWUGGY inter/oov, sSC, tSC, SALMon) as pair lists, tokenised by the
units stage into EVAL_PAIRS_UNITS files.

The sets' file layouts and pairing rules live in `slam_core/corpora/published_layout.py` (shared with the
corpora stage's layout checks; docs/published-artifacts.md, 'Evaluation sets'). A set's pairs are audio
references (a WAV file, or a row of a SALMon hub Parquet file); `tokenise_pairs` runs them through
`slam_core.units.extract.extract_items` (the units stage's decoding and batching) and writes one EVAL_PAIRS_UNITS
Parquet per set, so pair scoring is the same code for published and built-in sets.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slam_core.atomic import atomic_path
from slam_core.audio.io import BadAudioError, decode_audio_bytes, read_audio
from slam_core.corpora.published_layout import AudioRef, PairSource
from slam_core.eval.pairs import wilson_interval
from slam_core.schemas import EVAL_PAIRS_UNITS

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=4)
def _parquet_column(path: str, column: str) -> list[Any]:
    return pq.read_table(path, columns=[column]).column(column).to_pylist()


def load_audio(ref: AudioRef) -> np.ndarray:
    """16 kHz mono float32 samples of one reference (BadAudioError with a reason when unusable)."""
    if ref.row is None:
        return read_audio(ref.path)
    cell = _parquet_column(ref.path, str(ref.column))[ref.row]
    source = f"{ref.path}:{ref.row}/{ref.column}"
    if isinstance(cell, dict):  # HF Audio feature: {"bytes": ..., "path": ...}
        if cell.get("bytes"):
            return decode_audio_bytes(cell["bytes"], source)
        if cell.get("path") and (Path(ref.path).parent / cell["path"]).is_file():
            return read_audio(Path(ref.path).parent / cell["path"])
        raise BadAudioError(source, "unreadable", "audio cell without bytes or a resolvable path")
    if isinstance(cell, (bytes, bytearray)):
        return decode_audio_bytes(bytes(cell), source)
    raise BadAudioError(source, "unreadable", f"audio cell of type {type(cell).__name__}")


def sources_digest(pairs: Sequence[PairSource]) -> str:
    """Identity of a set's audio (file paths, sizes, mtimes; rows for Parquet), for the tokenisation cache key."""
    h = hashlib.sha256()
    seen: set[str] = set()
    for p in pairs:
        h.update(f"{p.pair_id}|{p.positive.path}|{p.positive.row}|{p.negative.path}|{p.negative.row}\n".encode())
        for path in (p.positive.path, p.negative.path):
            if path not in seen:
                seen.add(path)
                st = Path(path).stat()
                h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def tokenise_pairs(pairs: Sequence[PairSource], set_name: str, extractor: Any, batch_size: int,
                   out_path: str | Path) -> dict[str, Any]:
    """Units (with durations) of both sides of every pair -> EVAL_PAIRS_UNITS Parquet, atomically.

    A pair with an unusable side is left out and listed in "bad" as (set:pair/side, reason, detail).
    """
    from slam_core.units.extract import extract_items

    items = [(f"{p.pair_id}/{side}", functools.partial(load_audio, getattr(p, side)))
             for p in pairs for side in ("positive", "negative")]
    results, bad = extract_items(items, extractor, batch_size)
    kept = [p for p in pairs if f"{p.pair_id}/positive" in results and f"{p.pair_id}/negative" in results]
    unit_type = EVAL_PAIRS_UNITS.field("positive_units").type

    def col(side: str, k: int) -> pa.Array:
        return pa.array([np.asarray(results[f"{p.pair_id}/{side}"][k], np.uint16) for p in kept], unit_type)

    table = pa.Table.from_arrays(
        [pa.array([p.pair_id for p in kept], pa.string()), pa.array([set_name] * len(kept), pa.string()),
         col("positive", 0), col("positive", 1), col("negative", 0), col("negative", 1)], schema=EVAL_PAIRS_UNITS)
    with atomic_path(Path(out_path), suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    tokens = sum(len(results[f"{p.pair_id}/{s}"][0]) for p in kept for s in ("positive", "negative"))
    audio_s = sum(results[f"{p.pair_id}/{s}"][3] for p in kept for s in ("positive", "negative"))
    log.info("%s: %d of %d pairs tokenised (%d tokens)", set_name, len(kept), len(pairs), tokens)
    return {"path": str(out_path), "rows": len(kept), "tokens": tokens, "audio_seconds": audio_s,
            "bad": [(f"{set_name}:{i}", r, d) for i, r, d in bad]}


def salmon_mean(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """SALMon's summary: the unweighted mean of the part accuracies, n = all pairs, and a 95 % interval of that
    mean from the parts' independent binomial variances (Wilson when there is a single part)."""
    if not parts:
        raise ValueError("salmon_mean: no parts")
    accs = np.array([p["accuracy"] for p in parts], float)
    ns = np.array([p["n"] for p in parts], float)
    mean = float(accs.mean())
    if len(parts) == 1:
        low, high = wilson_interval(mean * ns[0], int(ns[0]))
    else:
        half = 1.96 * math.sqrt(float(np.sum(accs * (1 - accs) / ns))) / len(parts)
        low, high = max(0.0, mean - half), min(1.0, mean + half)
    return {"accuracy": mean, "n": int(ns.sum()), "ci_low": low, "ci_high": high}
