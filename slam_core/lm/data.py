"""Pre-training micro-batches from UNITS Parquet shards: SlamKit's examples, a global shuffle, packed buffers.

What an optimiser step is (SlamKit's paper command: `per_device_train_batch_size=8`,
`gradient_accumulation_steps=16`, `data.packing=true`): 128 *examples*, each a chunk of at most context_len
tokens of one document (`slam_core.lm.examples`: cut only at multiples of the context, so a shorter document
is never split). SlamKit's `DataCollatorWithFlattening` puts each micro-batch's 8 examples in one row with
restarting `position_ids` and the first label of every example at -100; the loss is normalised by the step's
target count (HF's `num_items_in_batch`), see `slam_core.lm.step`.

Here the step's examples (`next_step`) are packed whole into fixed-size token buffers of
`micro_batch_size x context_len` tokens (first-fit decreasing, so few buffers and little padding): the shape
the compiled step and the packed kernels see never changes, and the number of buffers per step follows from
the examples (a buffer always holds >= micro_batch_size examples). An example may run across a row boundary
of its buffer: the varlen kernels see the flattened buffer through `cu_seqlens`, the other attention paths get
it flattened to one row (`slam_core.lm.step.packed_loss_sum`). Padding at a buffer's end is its own segment
(positions restart at 0), never a target.

Shuffling is global and holds no data in memory: each dataset's examples are an index (shard, start, length)
permuted per epoch by a seeded RNG (seed, dataset, epoch); datasets are mixed per example with probabilities =
weights (SlamKit's `interleave_datasets(probabilities)`; by default proportional to each set's examples, which
makes the stream a uniform shuffle of all examples of all sets), drawn from a counter-based RNG. The loader's
position is a few integers (`state_dict`), the same on every data-parallel rank: every rank packs the whole
step and keeps buffers rank, rank + W, ...; ranks with fewer get an empty buffer so collectives stay aligned.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from slam_core.lm.attention import cu_seqlens_from_positions
from slam_core.lm.examples import BadShardError, SourceExamples, is_validation_doc, source_examples
from slam_core.lm.vocab import PAD_ID

__all__ = ["BadShardError", "DataSource", "IGNORE_INDEX", "PackedLoader", "PrefetchingLoader", "StepBatch",
           "is_validation_doc", "sources_from_paths"]

log = logging.getLogger(__name__)

IGNORE_INDEX = -100
STATE_VERSION = 2


def _uniform_from_counter(seed: int, counter: int) -> float:
    """Uniform [0, 1) from (seed, counter) via splitmix64: stateless, so resuming needs only the counter."""
    mask = (1 << 64) - 1
    z = (seed * 0x9E3779B97F4A7C15 + (counter + 1) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return ((z ^ (z >> 31)) >> 11) / float(1 << 53)


@dataclass
class DataSource:
    """One dataset: its shard files and its mixing weight (None: proportional to its number of examples)."""

    name: str
    shards: list[Path]
    weight: float | None = None


@dataclass
class StepBatch:
    """One optimiser step: this rank's micro-batches and figures of the whole (global) step."""

    batches: list[dict[str, torch.Tensor]]
    n_examples: int
    n_tokens: int   # real tokens (no padding) over all ranks
    n_targets: int  # predicted tokens over all ranks: the loss's normaliser
    n_buffers: int  # micro-batches over all ranks, before empty ones are added for alignment


class _Permuted:
    """One source's examples in seeded shuffled order, epoch after epoch; position = (epoch, pos)."""

    def __init__(self, examples: SourceExamples, index: int, seed: int) -> None:
        self.examples, self.index, self.seed = examples, index, seed
        self.epoch, self.pos = 0, 0
        self._order: tuple[int, np.ndarray] | None = None

    def order(self) -> np.ndarray:
        if self._order is None or self._order[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.index, self.epoch])
            self._order = (self.epoch, rng.permutation(len(self.examples)))
        return self._order[1]

    def next(self, max_epochs: int | None) -> np.ndarray | None:
        if self.pos >= len(self.examples):
            self.epoch, self.pos = self.epoch + 1, 0
        if max_epochs is not None and self.epoch >= max_epochs:
            return None
        i = int(self.order()[self.pos])
        self.pos += 1
        return self.examples.example(i)


class PackedLoader:
    """Micro-batches {"input_ids", "labels", "position_ids"} of shape [micro_batch_size, context_len] (one
    token buffer each) and their "cu_seqlens" (int32 segment starts over the flattened buffer).

    `next_step(n)` gives one optimiser step of n examples (training); `next_batch()` the next buffer filled
    in stream order (finite passes: split="val" makes one pass; split="train" repeats sources forever).
    `store_dir` is where the shards' token stores are kept (`slam_core.lm.examples`). `whole_rows` keeps every
    example inside one row of its buffer (for attention that masks row by row: `packed_sdpa`, HF's sdpa/eager;
    `slam_core.lm.attention.needs_whole_rows`): more padding, but no attention across the whole buffer.
    """

    def __init__(self, sources: Sequence[DataSource], context_len: int, micro_batch_size: int, seed: int,
                 split: str = "train", val_fraction: float = 0.0, vocab_size: int | None = None,
                 rank: int = 0, world_size: int = 1, store_dir: Path | None = None, whole_rows: bool = False) -> None:
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
        if len(sources) == 0 or any(s.weight is not None and not s.weight > 0 for s in sources):
            raise ValueError("PackedLoader needs at least one source, all with weight > 0")
        self.rank, self.world_size = rank, world_size
        self.context_len, self.micro_batch_size, self.seed, self.split = context_len, micro_batch_size, seed, split
        self.vocab_size = vocab_size  # documents with a token >= vocab_size are skipped, not crashed on
        self.whole_rows = whole_rows
        self._sets = [source_examples(s.name, s.shards, context_len, split, val_fraction, vocab_size, store_dir)
                      for s in sources]
        empty = [s.name for s, ex in zip(sources, self._sets) if len(ex) == 0]
        if empty and split == "train":  # a validation pass over no examples just scores nothing
            raise ValueError(f"data source(s) {', '.join(empty)} have no usable '{split}' documents "
                             f"({sum(len(ex.skipped) for ex in self._sets)} skipped, val_fraction={val_fraction})")
        weights = np.array([len(ex) if s.weight is None else s.weight for s, ex in zip(sources, self._sets)], float)
        self._probs = weights / weights.sum() if weights.sum() > 0 else np.full(len(weights), 1 / len(weights))
        self.mix = {ex.name: round(float(p), 6) for ex, p in zip(self._sets, self._probs)}
        self._readers = [_Permuted(ex, i, seed) for i, ex in enumerate(self._sets)]
        self._exhausted = [len(ex) == 0 for ex in self._sets]
        self._n_drawn = 0
        self._pending: np.ndarray | None = None  # an example that did not fit the last next_batch buffer

    @property
    def buffer_tokens(self) -> int:
        return self.micro_batch_size * self.context_len

    def n_examples(self) -> dict[str, int]:
        """Examples per dataset in this split (one epoch)."""
        return {ex.name: len(ex) for ex in self._sets}

    # ---- position ----
    def state_dict(self) -> dict:
        """Plain-type snapshot of the loader position (safe for torch.load(weights_only=True))."""
        pending = torch.from_numpy(self._pending.copy()) if self._pending is not None else None
        return {"version": STATE_VERSION, "n_drawn": self._n_drawn, "pending": pending,
                "exhausted": list(self._exhausted), "cursors": [[r.epoch, r.pos] for r in self._readers]}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError("this checkpoint's data position was written by an older slam (rows of documents, "
                             "not examples); finish it with that version or start a new run in another run dir")
        if len(state["cursors"]) != len(self._readers):
            raise ValueError("loader state has a different number of data sources")
        self._n_drawn = int(state["n_drawn"])
        self._exhausted = [bool(x) for x in state["exhausted"]]
        self._pending = state["pending"].numpy().astype(np.int64) if state["pending"] is not None else None
        for reader, (epoch, pos) in zip(self._readers, state["cursors"]):
            reader.epoch, reader.pos = int(epoch), int(pos)

    @property
    def skipped_docs(self) -> int:
        """Distinct documents left out (no units, or not fitting the vocabulary)."""
        return sum(len(ex.skipped) for ex in self._sets)

    def skipped_items(self) -> list[tuple[str, str, str]]:
        """(segment_id, reason, detail) of documents left out: the catalog's quarantine triples."""
        details = {"empty_units": "null or empty unit list",
                   "unit_out_of_range": f"a unit id does not fit the model vocabulary ({self.vocab_size} tokens)"}
        return [(sid, reason, f"dataset '{ex.name}': {details[reason]}")
                for ex in self._sets for sid, reason in sorted(ex.skipped)]

    # ---- examples ----
    def _next_example(self) -> np.ndarray | None:
        max_epochs = 1 if self.split == "val" else None
        while not all(self._exhausted):
            probs = np.where(self._exhausted, 0.0, self._probs)
            cumulative = np.cumsum(probs / probs.sum())
            u = _uniform_from_counter(self.seed, self._n_drawn)
            src = min(int(np.searchsorted(cumulative, u, side="right")), len(probs) - 1)
            example = self._readers[src].next(max_epochs)
            if example is None:
                self._exhausted[src] = True
                continue
            self._n_drawn += 1
            return example
        return None

    def _buffer(self, placed: Sequence[tuple[int, np.ndarray]]) -> dict[str, torch.Tensor]:
        """One micro-batch from (offset in the flattened buffer, example) pairs, in offset order."""
        size, rows = self.buffer_tokens, self.micro_batch_size
        ids = np.full(size, PAD_ID, dtype=np.int64)
        labels = np.full(size, IGNORE_INDEX, dtype=np.int64)
        pos = np.zeros(size, dtype=np.int64)
        end = 0
        for offset, ex in list(placed) + [(size, ids[:0])]:
            gap = np.arange(end, offset)  # padding: segments of its own (restarting at each row), never targets
            pos[end:offset] = gap - np.maximum(end, gap // self.context_len * self.context_len)
            n = len(ex)
            ids[offset:offset + n] = ex
            labels[offset + 1:offset + n] = ex[1:]  # the first label of every example is -100, as SlamKit's collator
            pos[offset:offset + n] = np.arange(n)
            end = offset + n
        pos_t = torch.from_numpy(pos.reshape(rows, self.context_len))
        return {"input_ids": torch.from_numpy(ids.reshape(rows, -1)), "labels": torch.from_numpy(labels.reshape(rows, -1)),
                "position_ids": pos_t, "cu_seqlens": cu_seqlens_from_positions(pos_t, rows)}

    def _layout(self, examples: Sequence[np.ndarray]) -> list[list[tuple[int, np.ndarray]]]:
        """First-fit decreasing: the fewest buffers (flat) or rows (row-aligned, then grouped micro_batch_size rows
        to a buffer); returns each buffer's (offset, example) placements."""
        capacity = self.context_len if self.whole_rows else self.buffer_tokens
        order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
        bins: list[list[int]] = []
        room: list[int] = []
        for i in order:
            n = len(examples[i])
            slot = next((b for b, free in enumerate(room) if free >= n), None)
            if slot is None:
                bins.append([])
                room.append(capacity)
                slot = len(bins) - 1
            bins[slot].append(i)
            room[slot] -= n
        group = self.micro_batch_size if self.whole_rows else 1
        buffers = []
        for first in range(0, len(bins), group):
            placed = []
            for r, members in enumerate(bins[first:first + group]):
                offset = r * capacity
                for i in members:
                    placed.append((offset, examples[i]))
                    offset += len(examples[i])
            buffers.append(placed)
        return buffers

    # ---- training: one optimiser step ----
    def next_step(self, n_examples: int) -> StepBatch:
        """The next `n_examples` examples of the stream, packed into buffers (first-fit decreasing); this
        rank's share of them. Every rank computes the same packing, so the step's figures are global."""
        examples = [self._next_example() for _ in range(n_examples)]
        examples = [ex for ex in examples if ex is not None]
        if not examples:
            raise ValueError("the training stream ended (no examples left)")
        layout = self._layout(examples)
        per_rank = -(-len(layout) // self.world_size)
        mine = [self._buffer(layout[b]) for b in range(self.rank, len(layout), self.world_size)]
        mine += [self._buffer([]) for _ in range(per_rank - len(mine))]
        n_tokens = sum(len(ex) for ex in examples)
        return StepBatch(mine, len(examples), n_tokens, n_tokens - len(examples), len(layout))

    # ---- finite passes (validation) and streaming ----
    def next_batch(self) -> dict[str, torch.Tensor] | None:
        """This rank's next buffer filled in stream order, or None when a finite (val) pass is over."""
        mine = None
        for r in range(self.world_size):
            batch = self._next_stream_buffer()
            if r == self.rank:
                mine = batch
        return mine

    def _next_stream_buffer(self) -> dict[str, torch.Tensor] | None:
        placed, offset = [], 0
        while True:
            if self._pending is None:
                self._pending = self._next_example()
                if self._pending is None:
                    break
            n = len(self._pending)
            if self.whole_rows and offset % self.context_len + n > self.context_len:
                offset = -(-offset // self.context_len) * self.context_len  # the next row
            if offset + n > self.buffer_tokens:
                break
            placed.append((offset, self._pending))
            offset += n
            self._pending = None
        return self._buffer(placed) if placed else None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        while (batch := self.next_batch()) is not None:
            yield batch


class PrefetchingLoader:
    """Runs a PackedLoader `depth` items ahead in a background thread (packing overlaps GPU work). Items are
    optimiser steps (`next_step`) when `examples_per_step` is given, else buffers (`next_batch`).

    `state_dict()` is the position after the last item handed out, so a checkpoint resumes exactly there.
    """

    def __init__(self, loader: PackedLoader, depth: int = 4, pin_memory: bool = False,
                 examples_per_step: int | None = None) -> None:
        self._loader, self._pin, self._per_step = loader, pin_memory, examples_per_step
        self.mix = loader.mix
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._state = loader.state_dict()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="packed-loader", daemon=True)
        self._thread.start()

    def _pinned(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v.pin_memory() for k, v in batch.items()} if self._pin else batch

    def _produce(self) -> None:
        try:
            while not self._stop.is_set():
                if self._per_step is not None:
                    step = self._loader.next_step(self._per_step)
                    step.batches = [self._pinned(b) for b in step.batches]
                    self._put((step, self._loader.state_dict()))
                    continue
                batch = self._loader.next_batch()
                self._put((batch if batch is None else self._pinned(batch), self._loader.state_dict()))
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

    def _get(self):
        item, state = self._queue.get()
        if isinstance(item, Exception):
            raise item
        self._state = state
        return item

    def next_batch(self) -> dict[str, torch.Tensor] | None:
        return self._get()

    def next_step(self, n_examples: int) -> StepBatch:
        if n_examples != self._per_step:
            raise ValueError(f"this prefetcher makes steps of {self._per_step} examples, not {n_examples}")
        return self._get()

    def state_dict(self) -> dict:
        return self._state

    def skipped_items(self) -> list[tuple[str, str, str]]:
        return self._loader.skipped_items()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def sources_from_paths(shard_paths: Sequence[Path], weights: dict[str, float] | None = None) -> list[DataSource]:
    """Group shard paths into one source per dataset directory (units/<dataset>/<split>/*.parquet).

    `weights` maps dataset name -> mixing weight (probability of drawing that set's next example, normalised);
    it must name every dataset. None weights each dataset by its number of examples, so the mix is a uniform
    shuffle of all examples, as SlamKit's `interleave_datasets` with ratios proportional to the sets' sizes.
    """
    groups: dict[str, list[Path]] = {}
    for path in sorted(Path(p) for p in shard_paths):
        name = path.parent.parent.name if path.parent.parent.name else path.parent.name
        groups.setdefault(name, []).append(path)
    if weights is None:
        return [DataSource(name, paths) for name, paths in sorted(groups.items())]
    missing = sorted(set(groups) - set(weights))
    if missing:
        raise ValueError(f"train.dataset_weights: no weight for dataset(s) {', '.join(missing)} "
                         f"(give every one of {', '.join(sorted(groups))}, or leave it unset to weight by examples)")
    return [DataSource(name, paths, float(weights[name])) for name, paths in sorted(groups.items())]
