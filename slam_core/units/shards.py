"""Unit shards on disk: segments, audio folders and spoken pairs -> UNITS / EVAL_PAIRS_UNITS / PREFERENCE_UNITS
Parquet, each written atomically and only after its unit ids pass validation (`validate.py`).

Extraction itself (decoding, batching, the encoder and k-means) is `extract.py`; this module only turns its
per-item results into tables.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from slam_core.atomic import atomic_path
from slam_core.audio.io import AUDIO_SUFFIXES, decode_audio_bytes, list_audio_files, read_audio, read_segment_audio
from slam_core.schemas import EVAL_PAIRS_AUDIO, EVAL_PAIRS_UNITS, PREFERENCE_AUDIO, PREFERENCE_UNITS, UNITS
from slam_core.units.extract import BadItem, Loader, UnitExtractor, extract_items
from slam_core.units.validate import check_unit_table

ROW_GROUP_ROWS = 1024


def _unit_list(arrays: Sequence[np.ndarray]) -> pa.Array:
    offsets = np.zeros(len(arrays) + 1, np.int32)
    np.cumsum([len(a) for a in arrays], out=offsets[1:])
    flat = np.concatenate(arrays).astype(np.uint16) if arrays else np.zeros(0, np.uint16)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, pa.uint16()))


def _write_parquet(table: pa.Table, out_path: Path, n_units: int) -> Path:
    check_unit_table(table, n_units, str(out_path))  # the commit point: an invalid shard is never written
    with atomic_path(out_path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd", row_group_size=ROW_GROUP_ROWS)
    return Path(out_path)


def _units_table(ids: list[str], dataset: list[str], split: list[str], results: dict) -> pa.Table:
    rows = [results[i] for i in ids]
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()), pa.array(dataset, pa.string()), pa.array(split, pa.string()),
            _unit_list([r[0] for r in rows]), _unit_list([r[1] for r in rows]),
            pa.array([r[2] for r in rows], pa.int32()), pa.array([r[3] for r in rows], pa.float32()),
        ],
        schema=UNITS,
    )


def _shard_summary(out_path: Path, table: pa.Table, bad: list[BadItem]) -> dict:
    tokens = int(pc.sum(pc.list_value_length(table["units"])).as_py() or 0) if table.num_rows else 0
    audio_s = float(pc.sum(table["audio_seconds"]).as_py() or 0.0) if table.num_rows else 0.0
    return {"path": str(out_path), "rows": table.num_rows, "tokens": tokens, "audio_seconds": audio_s, "bad": bad}


def extract_segment_shard(
    segments_path: Path, out_path: Path, extractor: UnitExtractor, batch_size: int, audio_root: Path | None = None
) -> dict:
    """SEGMENTS shard -> UNITS shard (atomic). Undecodable or too-short segments are skipped and listed in "bad".

    Relative `source_path`s are resolved against `audio_root` when given.
    """
    seg = pq.read_table(segments_path).to_pylist()
    ids = [r["segment_id"] for r in seg]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{segments_path}: duplicate segment_id values; each segment needs a unique id")

    def loader(row: dict) -> Loader:
        src = Path(row["source_path"])
        src = Path(audio_root, src) if audio_root is not None and not src.is_absolute() else src
        return lambda: read_segment_audio(src, row["start_s"], row["end_s"])

    results, bad = extract_items([(r["segment_id"], loader(r)) for r in seg], extractor, batch_size)
    kept = [r for r in seg if r["segment_id"] in results]
    table = _units_table(
        [r["segment_id"] for r in kept], [r["dataset"] for r in kept], [r["split"] for r in kept], results
    )
    _write_parquet(table, out_path, extractor.n_units)
    return _shard_summary(out_path, table, bad)


def extract_audio_dir(
    audio_dir: Path, out_dir: Path, extractor: UnitExtractor, batch_size: int = 16,
    shard_files: int = 256, dataset: str = "custom", split: str = "train",
) -> list[dict]:
    """Every audio file under `audio_dir` (recursive) -> UNITS shards `out_dir/units-NNNNN.parquet`.

    segment_id is the file's path relative to `audio_dir`; returns one summary dict per shard.
    """
    audio_dir = Path(audio_dir)
    files = list_audio_files(audio_dir)
    if not files:
        raise FileNotFoundError(f"{audio_dir}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found")
    summaries = []
    for shard, lo in enumerate(range(0, len(files), shard_files)):
        items = [(p.relative_to(audio_dir).as_posix(), partial(read_audio, p)) for p in files[lo : lo + shard_files]]
        results, bad = extract_items(items, extractor, batch_size)
        ids = [i for i, _ in items if i in results]
        table = _units_table(ids, [dataset] * len(ids), [split] * len(ids), results)
        out_path = Path(out_dir) / f"units-{shard:05d}.parquet"
        summaries.append(_shard_summary(_write_parquet(table, out_path, extractor.n_units), table, bad))
    return summaries


_PAIR_KINDS = {
    "eval_pairs": (EVAL_PAIRS_AUDIO, EVAL_PAIRS_UNITS, ("positive", "negative")),
    "preferences": (PREFERENCE_AUDIO, PREFERENCE_UNITS, ("prompt", "chosen", "rejected")),
}


def _pair_kind(table: pa.Table, source: Path) -> str:
    for kind, (schema, _, _) in _PAIR_KINDS.items():
        if set(schema.names) <= set(table.column_names):
            return kind
    raise ValueError(f"{source}: columns {table.column_names} match neither EVAL_PAIRS_AUDIO nor PREFERENCE_AUDIO")


def extract_pair_units(audio_path: Path, out_path: Path, extractor: UnitExtractor, batch_size: int) -> dict:
    """EVAL_PAIRS_AUDIO -> EVAL_PAIRS_UNITS, or PREFERENCE_AUDIO -> PREFERENCE_UNITS (detected from columns).

    A pair with any undecodable side is skipped and listed in "bad" as (pair_id/side, reason, detail).
    """
    table = pq.read_table(audio_path)
    kind = _pair_kind(table, Path(audio_path))
    _, out_schema, sides = _PAIR_KINDS[kind]
    rows = table.select(["pair_id", *[f"{s}_audio" for s in sides]]).to_pylist()
    items = [
        (f"{r['pair_id']}/{s}", partial(decode_audio_bytes, r[f"{s}_audio"], f"{audio_path}:{r['pair_id']}/{s}"))
        for r in rows for s in sides
    ]
    results, bad = extract_items(items, extractor, batch_size)
    kept = [r for r in rows if all(f"{r['pair_id']}/{s}" in results for s in sides)]
    columns: dict[str, pa.Array] = {"pair_id": pa.array([r["pair_id"] for r in kept], pa.string())}
    if kind == "eval_pairs":
        set_of = dict(zip(table["pair_id"].to_pylist(), table["set"].to_pylist()))
        columns["set"] = pa.array([set_of[r["pair_id"]] for r in kept], pa.string())
    for s in sides:
        columns[f"{s}_units"] = _unit_list([results[f"{r['pair_id']}/{s}"][0] for r in kept])
        if f"{s}_durations" in out_schema.names:
            columns[f"{s}_durations"] = _unit_list([results[f"{r['pair_id']}/{s}"][1] for r in kept])
    out = pa.Table.from_arrays([columns[n] for n in out_schema.names], schema=out_schema)
    _write_parquet(out, out_path, extractor.n_units)
    return {"path": str(out_path), "rows": out.num_rows, "kind": kind, "bad": bad}
