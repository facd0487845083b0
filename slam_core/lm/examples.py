"""Training examples as SlamKit makes them, behind a memory-mapped index (no data in memory).

An *example* is a chunk of at most `context_len` tokens of one document. A document is encoded
`[1, u+2, ..., 1]` (`slam_core.lm.vocab.encode_units`) and cut at multiples of `context_len`, as SlamKit's
`hf_dataset.py:chunk_texts` does (consecutive chunks, no BOS re-added, the remainder kept): a document shorter
than the context is never split, and every chunk is an example of its own.

Token store: each units shard is converted once into flat arrays under a cache directory (temp dir, fsync,
rename, so a half-built store never looks complete; two processes building the same store both finish and one
rename wins). The key is the shard's resolved path, size and mtime, so a rewritten shard gets a new store.
- `tokens.npy`      uint16, the encoded documents back to back (opened with mmap: random access costs a page);
                    uint32 for a token-docs shard (interleaved mix, below);
- `doc_offsets.npy` int64, n_docs + 1 offsets into tokens;
- `doc_val_u01.npy` float64, the hash draw that puts a document in the validation split (`is_validation_doc`);
- `doc_max_token.npy` uint16 (uint32 for token docs), to skip documents that do not fit a model's vocabulary
                    without reading them;
- `meta.json`       ids of all stored documents (read only to name skipped ones);
- `empty.json`      ids of the documents with no units (not stored).

Two shard schemas, told apart by their columns: UNITS (`segment_id`, `units`: unit ids, encoded here as above)
and TOKEN_DOCS of the interleaved mix (`doc_id`, `tokens`: whole documents already in the joint vocabulary,
`slam_core.lm.interleave_data`, stored as they are; Qwen's joint vocabulary needs uint32).

`SourceExamples` lists the examples of one dataset's shards for one split as three arrays (shard, start,
length): the global shuffle permutes indices into them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from slam_core.lm.vocab import BOS_ID, EOS_ID, UNIT_OFFSET

STORE_VERSION = 1
UNIT_COLUMNS, TOKEN_COLUMNS = ("segment_id", "units"), ("doc_id", "tokens")
_STORE_FILES = ("tokens.npy", "doc_offsets.npy", "doc_val_u01.npy", "doc_max_token.npy", "meta.json", "empty.json")


class BadShardError(ValueError):
    """A units shard cannot be read or lacks the required columns; the message names the file."""


def validation_u01(doc_id: str) -> float:
    """The uniform draw in [0, 1) that assigns a document to train or validation (a hash of its id)."""
    digest = hashlib.sha256(doc_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def is_validation_doc(doc_id: str, val_fraction: float) -> bool:
    """Stable train/val assignment from a hash of the document id (independent of shard layout)."""
    return val_fraction > 0 and validation_u01(doc_id) < val_fraction


def _store_key(shard: Path) -> str:
    stat = shard.stat()
    raw = f"v{STORE_VERSION}|{shard.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()[:24]


def _check_columns(shard: Path) -> tuple[pq.ParquetFile, tuple[str, str]]:
    """The shard's Parquet file and its (id, sequence) columns: ("segment_id", "units") of a UNITS shard, or
    ("doc_id", "tokens") of a TOKEN_DOCS shard."""
    try:
        parquet = pq.ParquetFile(shard)
    except Exception as err:  # pyarrow raises several types for corrupt or missing files
        raise BadShardError(f"{shard}: cannot read Parquet metadata ({err})") from None
    names = set(parquet.schema_arrow.names)
    if not {"segment_id", "units"} <= names and {"doc_id", "tokens"} <= names:
        return parquet, TOKEN_COLUMNS
    if not {"segment_id", "units"} <= names:
        raise BadShardError(f"{shard}: missing column(s) {sorted({'segment_id', 'units'} - names)}")
    return parquet, UNIT_COLUMNS


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
        fh.flush()
        os.fsync(fh.fileno())


def _encoded(shard: Path, doc_id: str, body: np.ndarray, columns: tuple[str, str]) -> np.ndarray:
    """One stored document: units -> `[BOS, u + 2, ..., EOS]` (uint16); token docs as they are (uint32)."""
    if columns == TOKEN_COLUMNS:
        if int(body.min()) < 0 or int(body.max()) > np.iinfo(np.uint32).max:
            raise BadShardError(f"{shard}: document {doc_id} has token ids outside [0, 2**32)")
        return body.astype(np.uint32)
    if int(body.min()) < 0 or int(body.max()) + UNIT_OFFSET > np.iinfo(np.uint16).max:
        raise BadShardError(f"{shard}: document {doc_id} has unit ids outside [0, 65533]")
    return np.concatenate([[BOS_ID], body + UNIT_OFFSET, [EOS_ID]]).astype(np.uint16)


def _build_store(shard: Path, out: Path) -> None:
    parquet, columns = _check_columns(shard)
    id_column, seq_column = columns
    dtype = np.uint32 if columns == TOKEN_COLUMNS else np.uint16
    tokens, offsets, val_u01, max_token, ids, empty = [], [0], [], [], [], []
    for rg in range(parquet.metadata.num_row_groups):
        try:
            table = parquet.read_row_group(rg, columns=list(columns))
        except Exception as err:
            raise BadShardError(f"{shard}: cannot read row group {rg} ({err})") from None
        seqs = table.column(seq_column).combine_chunks()
        bounds = seqs.offsets.to_numpy()
        values = seqs.values.to_numpy(zero_copy_only=False).astype(np.int64)
        valid = seqs.is_valid().to_numpy(zero_copy_only=False)
        for i, doc_id in enumerate(table.column(id_column).to_pylist()):
            body = values[bounds[i]:bounds[i + 1]] if valid[i] else values[:0]
            if len(body) == 0:
                empty.append(doc_id)
                continue
            encoded = _encoded(shard, doc_id, body, columns)
            tokens.append(encoded)
            offsets.append(offsets[-1] + len(encoded))
            val_u01.append(validation_u01(doc_id))
            max_token.append(int(encoded.max()))
            ids.append(doc_id)
    out.mkdir(parents=True)
    _save_npy(out / "tokens.npy", np.concatenate(tokens) if tokens else np.zeros(0, dtype))
    _save_npy(out / "doc_offsets.npy", np.asarray(offsets, dtype=np.int64))
    _save_npy(out / "doc_val_u01.npy", np.asarray(val_u01, dtype=np.float64))
    _save_npy(out / "doc_max_token.npy", np.asarray(max_token, dtype=dtype))
    for name, payload in (("meta.json", {"shard": str(shard), "ids": ids}), ("empty.json", empty)):
        with open(out / name, "w", encoding="utf-8") as fh:
            json.dump(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())


def default_store_dir() -> Path:
    """Where stores go when no cache directory is given (tests, benches): one folder per user in the temp dir."""
    import tempfile

    return Path(tempfile.gettempdir()) / f"slam-examples-{os.getuid()}"


@dataclass
class ShardStore:
    """The converted arrays of one units or token-docs shard (tokens memory-mapped)."""

    shard: Path
    path: Path
    tokens: np.ndarray = field(repr=False)
    doc_offsets: np.ndarray = field(repr=False)
    doc_val_u01: np.ndarray = field(repr=False)
    doc_max_token: np.ndarray = field(repr=False)

    @classmethod
    def open(cls, shard: Path, store_dir: Path | None = None) -> "ShardStore":
        """The store of `shard`, built first when it is missing or the shard changed since."""
        shard = Path(shard)
        if not shard.is_file():
            raise BadShardError(f"{shard}: cannot read Parquet metadata (no such file)")
        root = Path(store_dir) if store_dir is not None else default_store_dir()
        path = root / _store_key(shard)
        if not all((path / name).is_file() for name in _STORE_FILES):
            tmp = root / f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            root.mkdir(parents=True, exist_ok=True)
            try:
                _build_store(shard, tmp)
                try:
                    os.rename(tmp, path)
                except OSError:  # another process renamed its copy first: use that one
                    pass
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return cls(shard, path, np.load(path / "tokens.npy", mmap_mode="r"), np.load(path / "doc_offsets.npy"),
                   np.load(path / "doc_val_u01.npy"), np.load(path / "doc_max_token.npy"))

    def meta(self) -> dict:
        return json.loads((self.path / "meta.json").read_text(encoding="utf-8"))

    def empty_ids(self) -> list[str]:
        return json.loads((self.path / "empty.json").read_text(encoding="utf-8"))


@dataclass
class SourceExamples:
    """Examples of one dataset (its shards) for one split: example i is
    `stores[shard[i]].tokens[start[i]:start[i] + length[i]]`."""

    name: str
    stores: list[ShardStore]
    shard: np.ndarray
    start: np.ndarray
    length: np.ndarray
    skipped: list[tuple[str, str]]  # (document id, reason) of documents left out

    def __len__(self) -> int:
        return len(self.start)

    @property
    def n_tokens(self) -> int:
        return int(self.length.sum())

    def example(self, i: int) -> np.ndarray:
        start = int(self.start[i])
        return np.asarray(self.stores[int(self.shard[i])].tokens[start:start + int(self.length[i])], dtype=np.int64)


def chunk_documents(doc_offsets: np.ndarray, keep: np.ndarray, context_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of the examples of the kept documents: each cut at multiples of context_len."""
    starts, lengths = doc_offsets[:-1][keep], np.diff(doc_offsets)[keep]
    n_chunks = -(-lengths // context_len)
    doc = np.repeat(np.arange(len(starts)), n_chunks)
    first = np.repeat(np.cumsum(n_chunks) - n_chunks, n_chunks)
    chunk = np.arange(int(n_chunks.sum())) - first
    return starts[doc] + chunk * context_len, np.minimum(context_len, lengths[doc] - chunk * context_len)


def source_examples(name: str, shards: list[Path], context_len: int, split: str, val_fraction: float,
                    vocab_size: int | None, store_dir: Path | None = None) -> SourceExamples:
    """The examples of `split` ("train" or "val") in `shards`, in shard and document order."""
    stores = [ShardStore.open(Path(s), store_dir) for s in shards]
    shard_idx, starts, lengths, skipped = [], [], [], []
    for i, store in enumerate(stores):
        in_val = store.doc_val_u01 < val_fraction if val_fraction > 0 else np.zeros(len(store.doc_val_u01), bool)
        in_split = in_val if split == "val" else ~in_val
        fits = store.doc_max_token < vocab_size if vocab_size is not None else np.ones(len(in_split), bool)
        if (in_split & ~fits).any():
            ids = store.meta()["ids"]
            skipped += [(ids[d], "unit_out_of_range") for d in np.flatnonzero(in_split & ~fits)]
        s, n = chunk_documents(store.doc_offsets, in_split & fits, context_len)
        shard_idx.append(np.full(len(s), i, dtype=np.int32))
        starts.append(s)
        lengths.append(n.astype(np.int32))
    for store in stores:  # documents with no units are not stored; each is reported by its own split
        skipped += [(doc_id, "empty_units") for doc_id in store.empty_ids()
                    if is_validation_doc(doc_id, val_fraction) == (split == "val")]
    cat = (lambda parts, dtype: np.concatenate(parts) if parts else np.zeros(0, dtype))
    return SourceExamples(name, stores, cat(shard_idx, np.int32), cat(starts, np.int64), cat(lengths, np.int32),
                          skipped)
