"""Documents of the interleaved mix as token shards: interleaved (units + word alignments), speech-only (units) and
text-only (stories), each a Parquet of whole documents in the joint vocabulary (`interleave.InterleavedVocab`).

SlamKit's `config/train_inter_scale.yaml` mixes three sets by sample ratio, "such that the number of tokens
matches": text-only 0.2024, interleaved 0.5433, speech-only 0.2543 (`INTER_SCALE_RATIOS`), context 2,048. The
loader mixes sets by weight per example, so these ratios are the three sets' weights.

A token shard (`TOKEN_DOCS`): doc_id, kind ('interleaved', 'speech', 'text'), tokens list<uint32> (Qwen's joint
vocabulary has 152,167 ids: more than uint16). Interleaved documents are fixed when the shard is written, seeded
per segment (`InterleavingTokenizer`'s seed and the segment id), so a rewritten shard has the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slam_core.align.words import read_alignments
from slam_core.atomic import atomic_path
from slam_core.lm.interleave import InterleavingTokenizer

INTER_SCALE_RATIOS = {"text": 0.2023584112, "interleaved": 0.5433262899, "speech": 0.2543152989}
INTER_SCALE_CONTEXT = 2048
KINDS = tuple(INTER_SCALE_RATIOS)
TOKEN_DOCS = pa.schema([("doc_id", pa.string()), ("kind", pa.string()), ("tokens", pa.list_(pa.uint32()))])


def _units_rows(units_path: str | Path) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    table = pq.read_table(units_path, columns=["segment_id", "units", "durations"])
    for sid, units, durations in zip(table["segment_id"].to_pylist(), table["units"].to_pylist(),
                                     table["durations"].to_pylist()):
        yield sid, np.asarray(units, np.int64), np.asarray(durations, np.int64)


def interleaved_documents(units_path: str | Path, words_path: str | Path, tok: InterleavingTokenizer
                          ) -> Iterator[tuple[str, np.ndarray]]:
    """(segment id, interleaved tokens) of every segment with both units and words; segments without an aligned
    word give no document (they are speech-only material)."""
    words = read_alignments(words_path)
    for sid, units, durations in _units_rows(units_path):
        aligned = words.get(sid)
        if units.size and aligned and any(a is not None for _, a, _ in aligned):
            yield sid, tok.encode_interleaved(aligned, units, durations, sid)


def speech_documents(units_path: str | Path, tok: InterleavingTokenizer) -> Iterator[tuple[str, np.ndarray]]:
    """(segment id, `[BOS, <speech>, units, EOS]`) of every non-empty segment."""
    for sid, units, _ in _units_rows(units_path):
        if units.size:
            yield sid, tok.encode_speech(units)


def text_documents(texts: Iterable[tuple[str, str]], tok: InterleavingTokenizer) -> Iterator[tuple[str, np.ndarray]]:
    """(id, `[BOS, <text>, tokens, EOS]`) of every non-empty text."""
    for doc_id, text in texts:
        if text and text.strip():
            yield doc_id, tok.encode_text(" ".join(text.split()))


def story_texts(stories_path: str | Path, split: str | None = "train") -> list[tuple[str, str]]:
    """(story id, story text) of a STORIES Parquet (one split, or all)."""
    rows = pq.read_table(stories_path, columns=["story_id", "split", "sentences"]).to_pylist()
    return [(r["story_id"], " ".join(r["sentences"])) for r in rows if split is None or r["split"] == split]


def write_token_docs(docs: Iterable[tuple[str, np.ndarray]], kind: str, out_path: str | Path,
                     vocab_size: int) -> dict[str, Any]:
    """A TOKEN_DOCS shard, atomically; every id is checked against the vocabulary first. Returns rows and tokens."""
    if kind not in KINDS:
        raise ValueError(f"document kind {kind!r}: expected one of {', '.join(KINDS)}")
    ids, seqs = [], []
    for doc_id, tokens in docs:
        if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
            raise ValueError(f"{doc_id}: token ids {tokens.min()}..{tokens.max()} outside the vocabulary ({vocab_size})")
        ids.append(doc_id)
        seqs.append(np.asarray(tokens, np.uint32))
    offsets = np.zeros(len(seqs) + 1, np.int32)
    np.cumsum([len(s) for s in seqs], out=offsets[1:])
    flat = np.concatenate(seqs) if seqs else np.zeros(0, np.uint32)
    table = pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array([kind] * len(ids), pa.string()),
         pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), pa.array(flat, pa.uint32()))], schema=TOKEN_DOCS)
    with atomic_path(Path(out_path), suffix=".parquet") as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return {"path": str(out_path), "rows": table.num_rows, "tokens": int(offsets[-1])}


def read_token_docs(path: str | Path) -> list[tuple[str, np.ndarray]]:
    """(doc id, tokens) of a TOKEN_DOCS shard."""
    table = pq.read_table(path, columns=["doc_id", "tokens"])
    return [(d, np.asarray(t, np.int64)) for d, t in zip(table["doc_id"].to_pylist(), table["tokens"].to_pylist())]
