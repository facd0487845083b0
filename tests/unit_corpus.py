"""Tiny unit corpora for the training tests: patterned unit rows (a short random motif repeated, so the loss can
fall) written as a units shard in the pipeline's own Parquet schema, at the path layout the stages use."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slam_core.schemas import UNITS


def motif_rows(rng: np.random.Generator, n_rows: int, dataset: str, doc_len: tuple[int, int],
               motif_len: tuple[int, int] | int = (2, 6), n_units: int = 40, id_prefix: str = "s-") -> list[dict]:
    """`n_rows` documents of `dataset`: a motif of `motif_len` units (a range is drawn per document) below
    `n_units`, repeated to a length drawn from `doc_len`. Draw order: motif length, motif, document length."""
    rows = []
    for i in range(n_rows):
        k = motif_len if isinstance(motif_len, int) else rng.integers(*motif_len)
        motif = rng.integers(0, n_units, k)
        units = np.resize(motif, int(rng.integers(*doc_len))).tolist()
        rows.append({"segment_id": f"{id_prefix}{i}", "dataset": dataset, "split": "train", "units": units,
                     "durations": [1] * len(units), "n_frames": len(units), "audio_seconds": 0.04 * len(units)})
    return rows


def write_units_shard(root: Path, dataset: str, rows: list[dict], row_group_size: int | None = None) -> Path:
    """`root/units/<dataset>/train/units-00000.parquet` holding `rows`."""
    path = Path(root) / "units" / dataset / "train" / "units-00000.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=UNITS), path, row_group_size=row_group_size)
    return path
