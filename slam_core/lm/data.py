"""Packed training rows from UNITS Parquet shards: streaming, mixing, deterministic shuffle, exact resume.

Layout of a packed row (exactly `context_len` tokens, no padding except at the end of a finite val pass):
- each document is `[1, u+2, ..., 1]` (vocab.encode_units);
- documents are concatenated; a document that does not fit is cut and CONTINUES at the start of the next
  row (of the same micro-batch or the next one), so no token is dropped and long documents are split into
  context-sized pieces, as SlamKit's `chunk_texts` does;
- `position_ids` restart at 0 at every document start and at every row start (a continued piece is a new
  segment, like a SlamKit chunk; this keeps positions < context_len);
- `labels` are the input ids with -100 at every segment start, so no token is predicted across documents;
- no attention_mask: each micro-batch also carries `cu_seqlens`, the segment starts over the flattened
  [B, L] tokens padded to a bucketed length (`slam_core.lm.attention`), computed here (on the prefetch thread
  when prefetching) so the packed attention kernels need neither a dense mask nor a host sync.

Shuffling is per source and per epoch: the order of row groups, then the order of rows inside each row
group, is a permutation seeded by (seed, source, epoch[, row group]). Only one row group per source is in
memory. Sources are mixed per document with probabilities = weights (sample-level ratios, as SlamKit's
`interleave_datasets(probabilities)`; by default proportional to each source's documents), drawn from a
counter-based RNG, so the loader's whole position is a few integers plus the unfinished document (`state_dict`).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from slam_core.lm.attention import cu_seqlens_from_positions
from slam_core.lm.vocab import PAD_ID, UNIT_OFFSET, encode_units

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


def _uniform_from_counter(seed: int, counter: int) -> float:
    """Uniform [0, 1) from (seed, counter) via splitmix64: stateless, so resuming needs only the counter."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + (counter + 1) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


@dataclass
class DataSource:
    """One dataset: its shard files and its mixing weight."""

    name: str
    shards: list[Path]
    weight: float = 1.0


def _row_groups(shards: Sequence[Path]) -> tuple[list[tuple[int, int]], int]:
    """(shard index, row group) of every row group, and the total number of rows."""
    out, n_rows = [], 0
    for shard_idx, path in enumerate(shards):
        try:
            parquet = pq.ParquetFile(path)
        except Exception as err:  # pyarrow raises several types for corrupt or missing files
            raise BadShardError(f"{path}: cannot read Parquet metadata ({err})") from None
        names = set(parquet.schema_arrow.names)
        if not {"segment_id", "units"} <= names:
            raise BadShardError(f"{path}: missing column(s) {sorted({'segment_id', 'units'} - names)}")
        out.extend((shard_idx, rg) for rg in range(parquet.metadata.num_row_groups))
        n_rows += parquet.metadata.num_rows
    return out, n_rows


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
    """Streams one source's documents of one split in seeded shuffled order, one row group in memory."""

    source: DataSource
    index: int
    seed: int
    split: str
    val_fraction: float
    cursor: _Cursor = field(default_factory=_Cursor)
    _groups: list[tuple[int, int]] = field(default_factory=list)
    _cache: tuple[tuple[int, int, int], list[str], list, np.ndarray] | None = None
    vocab_size: int | None = None
    skipped_ids: dict[str, str] = field(default_factory=dict)  # doc id -> reason
    _n_rows: int = 0
    _scanned_without_doc: int = 0

    def __post_init__(self) -> None:
        self._groups, self._n_rows = _row_groups(self.source.shards)
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
            if self._scanned_without_doc > self._n_rows:  # a whole pass without one usable document
                raise ValueError(f"data source '{self.source.name}' has no usable '{self.split}' documents "
                                 f"({len(self.skipped_ids)} skipped, val_fraction={self.val_fraction})")
            row = int(order[self.cursor.row_pos])
            self.cursor.row_pos += 1
            self._scanned_without_doc += 1
            in_val = is_validation_doc(ids[row], self.val_fraction)
            if in_val != (self.split == "val"):
                continue
            reason = self._reject_reason(docs[row])
            if reason:
                self.skipped_ids[ids[row]] = reason
                continue
            self._scanned_without_doc = 0
            return encode_units(docs[row])

    def _reject_reason(self, units: np.ndarray | None) -> str | None:
        if units is None:
            return "empty_units"
        if self.vocab_size is not None and int(units.max()) + UNIT_OFFSET >= self.vocab_size:
            return "unit_out_of_range"
        return None

    def _advance_group(self) -> None:
        self.cursor.row_pos = 0
        self.cursor.rg_pos += 1
        if self.cursor.rg_pos >= len(self._groups):
            self.cursor.rg_pos = 0
            self.cursor.epoch += 1


class PackedLoader:
    """Yields micro-batches {"input_ids", "labels", "position_ids"} of shape [micro_batch_size, context_len]
    and their "cu_seqlens" (int32 segment boundaries, see the module docstring).

    split="train" repeats sources forever (epochs); split="val" makes one pass and pads the last row.
    """

    def __init__(self, sources: Sequence[DataSource], context_len: int, micro_batch_size: int, seed: int,
                 split: str = "train", val_fraction: float = 0.0, vocab_size: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        # Data-parallel slicing: micro-batch i of the single-process stream goes to rank i % world_size. Every
        # rank packs the whole stream and keeps its share, so the position (state_dict) is the same on all
        # ranks and a checkpoint resumes under any world size.
        self.rank, self.world_size = rank, world_size
        weights = np.array([s.weight for s in sources], dtype=np.float64)
        if len(sources) == 0 or (weights <= 0).any():
            raise ValueError("PackedLoader needs at least one source, all with weight > 0")
        self.context_len, self.micro_batch_size, self.seed, self.split = context_len, micro_batch_size, seed, split
        self._probs = weights / weights.sum()
        self.vocab_size = vocab_size  # documents with a token >= vocab_size are skipped, not crashed on
        self._readers = [_SourceReader(s, i, seed, split, val_fraction, vocab_size=vocab_size) for i, s in enumerate(sources)]
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
        """Distinct documents skipped so far (empty, or not fitting the vocabulary)."""
        return sum(len(r.skipped_ids) for r in self._readers)

    def skipped_items(self) -> list[tuple[str, str, str]]:
        """(segment_id, reason, detail) of documents skipped so far: the catalog's quarantine triples."""
        details = {"empty_units": "null or empty unit list",
                   "unit_out_of_range": f"a unit id does not fit the model vocabulary ({self.vocab_size} tokens)"}
        return [(sid, reason, f"dataset '{r.source.name}': {details[reason]}")
                for r in self._readers for sid, reason in sorted(dict(r.skipped_ids).items())]

    # ---- documents ----
    def _next_doc(self) -> np.ndarray | None:
        max_epochs = 1 if self.split == "val" else None
        while not all(self._exhausted):
            probs = np.where(self._exhausted, 0.0, self._probs)
            cumulative = np.cumsum(probs / probs.sum())
            u = _uniform_from_counter(self.seed, self._n_docs)
            src = min(int(np.searchsorted(cumulative, u, side="right")), len(probs) - 1)
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
        """The next micro-batch of this rank, or None when a finite (val) pass is over."""
        mine = None
        for r in range(self.world_size):
            batch = self._next_stream_batch()
            if r == self.rank:
                mine = batch
        return mine

    def _next_stream_batch(self) -> dict[str, torch.Tensor] | None:
        rows = []
        for _ in range(self.micro_batch_size):
            row = self._fill_row()
            if row is None:
                break
            rows.append(row)
        if not rows:
            return None
        ids, labels, pos = (torch.from_numpy(np.stack(parts)) for parts in zip(*rows))
        return {"input_ids": ids, "labels": labels, "position_ids": pos,
                "cu_seqlens": cu_seqlens_from_positions(pos, self.micro_batch_size)}

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while (batch := self.next_batch()) is not None:
            yield batch


class PrefetchingLoader:
    """Runs a PackedLoader `depth` micro-batches ahead in a background thread (packing overlaps GPU work).

    `state_dict()` is the position after the last batch handed out, so a checkpoint resumes exactly there.
    """

    def __init__(self, loader: PackedLoader, depth: int = 4, pin_memory: bool = False) -> None:
        self._loader, self._pin = loader, pin_memory
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._state = loader.state_dict()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="packed-loader", daemon=True)
        self._thread.start()

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                batch = self._loader.next_batch()
                if batch is not None and self._pin:
                    batch = {k: v.pin_memory() for k, v in batch.items()}
                self._put((batch, self._loader.state_dict()))
                if batch is None:
                    return
        except Exception as err:  # handed to the consumer, which re-raises it in the training loop
            self._put((err, None))

    def _put(self, item: tuple) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def next_batch(self) -> dict[str, torch.Tensor] | None:
        batch, state = self._queue.get()
        if isinstance(batch, Exception):
            raise batch
        self._state = state
        return batch

    def state_dict(self) -> dict:
        return self._state

    def skipped_items(self) -> list[tuple[str, str, str]]:
        return self._loader.skipped_items()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def sources_from_paths(shard_paths: Sequence[Path], weights: dict[str, float] | None = None) -> list[DataSource]:
    """Group shard paths into one source per dataset directory (units/<dataset>/<split>/*.parquet).

    `weights` maps dataset name -> mixing weight (probability of drawing that set's next document, normalised);
    it must name every dataset. None weights each dataset by its number of documents, so the mix is a uniform
    shuffle of all documents, as SlamKit's `interleave_datasets` with ratios proportional to the sets' sizes.
    """
    groups: dict[str, list[Path]] = {}
    for path in sorted(Path(p) for p in shard_paths):
        name = path.parent.parent.name if path.parent.parent.name else path.parent.name
        groups.setdefault(name, []).append(path)
    if weights is None:
        return [DataSource(name, paths, float(max(1, _row_groups(paths)[1]))) for name, paths in sorted(groups.items())]
    missing = sorted(set(groups) - set(weights))
    if missing:
        raise ValueError(f"train.dataset_weights: no weight for dataset(s) {', '.join(missing)} "
                         f"(give every one of {', '.join(sorted(groups))}, or leave it unset to weight by documents)")
    return [DataSource(name, paths, float(weights[name])) for name, paths in sorted(groups.items())]
