"""Packed training rows from UNITS Parquet shards: streaming, mixing, deterministic shuffle, exact resume.

Layout of a packed row (exactly `context_len` tokens, no padding except at the end of a finite val pass):
- each document is `[1, u+2, ..., 1]` (vocab.encode_units);
- documents are concatenated; a document that does not fit is cut and CONTINUES at the start of the next
  row (of the same micro-batch or the next one), so no token is dropped and long documents are split into
  context-sized pieces, as SlamKit's `chunk_texts` does;
- `position_ids` restart at 0 at every document start and at every row start (a continued piece is a new
  segment, like a SlamKit chunk; this keeps positions < context_len);
- `labels` are the input ids with -100 at every segment start, so no token is predicted across documents;
- no attention_mask: HF builds the block-diagonal causal mask from the restarting position_ids.

Shuffling is per source and per epoch: the order of row groups, then the order of rows inside each row
group, is a permutation seeded by (seed, source, epoch[, row group]). Only one row group per source is in
memory. Sources are mixed per document with probabilities = weights, drawn from a counter-based RNG, so the
loader's whole position is a few integers plus the unfinished document (`state_dict`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from slam_core.lm.vocab import PAD_ID, encode_units

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


class BadShardError(ValueError):
    """A units shard cannot be read or lacks the required columns; the message names the file."""


def is_validation_doc(doc_id: str, val_fraction: float) -> bool:
    """Stable train/val assignment from a hash of the document id (independent of shard layout)."""
    if val_fraction <= 0:
        return False
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction


@dataclass
class DataSource:
    """One dataset: its shard files and its mixing weight."""

    name: str
    shards: list[Path]
    weight: float = 1.0


def _row_groups(shards: Sequence[Path]) -> list[tuple[int, int]]:
    out = []
    for shard_idx, path in enumerate(shards):
        try:
            parquet = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for corrupt or missing files
            raise BadShardError(f"{path}: cannot read Parquet metadata ({err})") from None
        names = set(parquet.schema_arrow.names)
        if not {"segment_id", "units"} <= names:
            raise BadShardError(f"{path}: missing column(s) {sorted({'segment_id', 'units'} - names)}")
        out.extend((shard_idx, rg) for rg in range(parquet.metadata.num_row_groups))
    return out


def read_row_group_docs(path: Path, row_group: int) -> tuple[list[str], list[np.ndarray | None]]:
    """(doc ids, unit arrays) of one row group; a null/empty unit list gives None (skipped by callers)."""
    table = pq.ParquetFile(path).read_row_group(row_group, columns=["segment_id", "units"])
    ids = table.column("segment_id").to_pylist()
    units = table.column("units").combine_chunks()
    offsets = units.offsets.to_numpy()
    values = units.values.to_numpy(zero_copy_only=False)
    valid = units.is_valid().to_numpy(zero_copy_only=False)
    docs = [values[offsets[i]:offsets[i + 1]] if valid[i] and offsets[i + 1] > offsets[i] else None
            for i in range(len(ids))]
    return ids, docs


@dataclass
class _Cursor:
    """Position of one source: epoch, index into its shuffled row groups, index into the current row group."""

    epoch: int = 0
    rg_pos: int = 0
    row_pos: int = 0


@dataclass
class _SourceReader:
    source: DataSource
    index: int
    seed: int
    split: str
    val_fraction: float
    cursor: _Cursor = field(default_factory=_Cursor)
    _groups: list[tuple[int, int]] = field(default_factory=list)
    _cache: tuple[tuple[int, int, int], list[str], list, np.ndarray] | None = None
    skipped: int = 0

    def __post_init__(self) -> None:
        self._groups = _row_groups(self.source.shards)
        if not self._groups:
            raise BadShardError(f"data source '{self.source.name}' has no row groups in {self.source.shards}")

    def _group_order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, self.index, epoch]).permutation(len(self._groups))

    def _load(self) -> tuple[list[str], list, np.ndarray]:
        key = (self.cursor.epoch, self.cursor.rg_pos, self.index)
        if self._cache is None or self._cache[0] != key:
            group = int(self._group_order(self.cursor.epoch)[self.cursor.rg_pos])
            shard_idx, rg = self._groups[group]
            ids, docs = read_row_group_docs(self.source.shards[shard_idx], rg)
            order = np.random.default_rng([self.seed, self.index, self.cursor.epoch, group]).permutation(len(ids))
            self._cache = (key, ids, docs, order)
        return self._cache[1], self._cache[2], self._cache[3]

    def next_doc(self, max_epochs: int | None) -> np.ndarray | None:
        """Token ids of the next document of this split, or None when `max_epochs` are exhausted."""
        while True:
            if max_epochs is not None and self.cursor.epoch >= max_epochs:
                return None
            ids, docs, order = self._load()
            if self.cursor.row_pos >= len(ids):
                self._advance_group()
                continue
            row = int(order[self.cursor.row_pos])
            self.cursor.row_pos += 1
            in_val = is_validation_doc(ids[row], self.val_fraction)
            if in_val != (self.split == "val"):
                continue
            if docs[row] is None:
                self.skipped += 1
                continue
            return encode_units(docs[row])

    def _advance_group(self) -> None:
        self.cursor.row_pos = 0
        self.cursor.rg_pos += 1
        if self.cursor.rg_pos >= len(self._groups):
            self.cursor.rg_pos = 0
            self.cursor.epoch += 1


class PackedLoader:
    """Yields micro-batches {"input_ids", "labels", "position_ids"} of shape [micro_batch_size, context_len].

    split="train" repeats sources forever (epochs); split="val" makes one pass and pads the last row.
    """

    def __init__(self, sources: Sequence[DataSource], context_len: int, micro_batch_size: int, seed: int,
                 split: str = "train", val_fraction: float = 0.0) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        if len(sources) == 0 or (weights <= 0).any():
            raise ValueError("PackedLoader needs at least one source, all with weight > 0")
        self.context_len, self.micro_batch_size, self.seed, self.split = context_len, micro_batch_size, seed, split
        self._probs = weights / weights.sum()
        self._readers = [_SourceReader(s, i, seed, split, val_fraction) for i, s in enumerate(sources)]
        self._exhausted = [False] * len(sources)
        self._n_docs = 0
        self._pending: np.ndarray | None = None  # rest of the document being packed

    # ---- position ----
    def state_dict(self) -> dict:
        """Plain-type snapshot of the loader position (safe for torch.load(weights_only=True))."""
        pending = torch.from_numpy(self._pending.copy()) if self._pending is not None else None
        return {
            "n_docs": self._n_docs, "pending": pending, "exhausted": list(self._exhausted),
            "cursors": [[r.cursor.epoch, r.cursor.rg_pos, r.cursor.row_pos] for r in self._readers],
        }

    def load_state_dict(self, state: dict) -> None:
        if len(state["cursors"]) != len(self._readers):
            raise ValueError("loader state has a different number of data sources")
        self._n_docs = int(state["n_docs"])
        self._exhausted = [bool(x) for x in state["exhausted"]]
        self._pending = state["pending"].numpy().astype(np.int64) if state["pending"] is not None else None
        for reader, (epoch, rg_pos, row_pos) in zip(self._readers, state["cursors"]):
            reader.cursor = _Cursor(int(epoch), int(rg_pos), int(row_pos))

    @property
    def skipped_docs(self) -> int:
        return sum(r.skipped for r in self._readers)

    # ---- documents ----
    def _next_doc(self) -> np.ndarray | None:
        max_epochs = 1 if self.split == "val" else None
        while not all(self._exhausted):
            probs = np.where(self._exhausted, 0.0, self._probs)
            rng = np.random.default_rng([self.seed, 7919, self._n_docs])
            src = int(rng.choice(len(probs), p=probs / probs.sum()))
            doc = self._readers[src].next_doc(max_epochs)
            if doc is None:
                self._exhausted[src] = True
                continue
            self._n_docs += 1
            return doc
        return None

    def _fill_row(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        ids = np.full(self.context_len, PAD_ID, dtype=np.int64)
        pos = np.zeros(self.context_len, dtype=np.int64)
        labels = np.full(self.context_len, IGNORE_INDEX, dtype=np.int64)
        filled = 0
        while filled < self.context_len:
            if self._pending is None:
                self._pending = self._next_doc()
                if self._pending is None:
                    break
            take = min(len(self._pending), self.context_len - filled)
            piece = self._pending[:take]
            ids[filled:filled + take] = piece
            pos[filled:filled + take] = np.arange(take)
            labels[filled:filled + take] = piece
            labels[filled] = IGNORE_INDEX  # segment start: nothing before it in this segment predicts it
            self._pending = self._pending[take:] if take < len(self._pending) else None
            filled += take
        if filled == 0:
            return None
        if filled < self.context_len:  # end of a finite pass: the pad is its own segment, never a target
            pos[filled:] = np.arange(self.context_len - filled)
        return ids, labels, pos

    def next_batch(self) -> dict[str, torch.Tensor] | None:
        """The next micro-batch, or None when a finite (val) pass is over."""
        rows = []
        for _ in range(self.micro_batch_size):
            row = self._fill_row()
            if row is None:
                break
            rows.append(row)
        if not rows:
            return None
        ids, labels, pos = (torch.from_numpy(np.stack(parts)) for parts in zip(*rows))
        return {"input_ids": ids, "labels": labels, "position_ids": pos}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while (batch := self.next_batch()) is not None:
            yield batch


def sources_from_paths(shard_paths: Sequence[Path], weights: dict[str, float] | None = None) -> list[DataSource]:
    """Group shard paths into one source per dataset directory (units/<dataset>/<split>/*.parquet).

    `weights` maps dataset name -> mixing weight (default 1 each).
    """
    groups: dict[str, list[Path]] = {}
    for path in sorted(Path(p) for p in shard_paths):
        name = path.parent.parent.name if path.parent.parent.name else path.parent.name
        groups.setdefault(name, []).append(path)
    weights = weights or {}
    return [DataSource(name, paths, float(weights.get(name, 1.0))) for name, paths in sorted(groups.items())]
