"""Token shards of the interleaved mix: interleaved documents from units + word alignments, speech-only and
text-only documents, in the joint vocabulary, with SlamKit's train_inter_scale ratios."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slam_core.align.words import alignment_row, write_alignments
from slam_core.lm.interleave import InterleavingTokenizer
from slam_core.lm.interleave_data import (
    INTER_SCALE_RATIOS, interleaved_documents, read_token_docs, speech_documents, story_texts, text_documents,
    write_token_docs,
)
from slam_core.lm.text_tokenizer import load_text_tokenizer, tiny_tokenizer_dir
from slam_core.schemas import STORIES, UNITS

TEXTS = ["the little dog ran to the park and found a big stick", "a girl sang a song to her cat in the sun"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> InterleavingTokenizer:
    root = tmp_path_factory.mktemp("tok")
    return InterleavingTokenizer(load_text_tokenizer(tiny_tokenizer_dir(root, TEXTS * 4, vocab_size=300)),
                                 method="poisson", span=3, prob=0.4, seed=5)


def _shards(tmp_path: Path) -> tuple[Path, Path, dict]:
    rng = np.random.default_rng(1)
    rows, words_rows, truth = [], [], {}
    for i, text in enumerate(TEXTS + ["silence only"]):
        words = text.split()
        timed = [(w, 0.1 + 0.4 * k, 0.1 + 0.4 * (k + 1)) for k, w in enumerate(words)]
        if i == 2:
            timed = [(w, None, None) for w in words]  # nothing aligned: no interleaved document
        n = int((0.2 + 0.4 * len(words)) / 0.08)
        units, durations = rng.integers(0, 500, n), np.full(n, 2)
        truth[f"seg{i}"] = (timed, units, durations)
        rows.append({"segment_id": f"seg{i}", "dataset": "d", "split": "train", "units": units.tolist(),
                     "durations": durations.tolist(), "n_frames": int(durations.sum()), "audio_seconds": n * 0.08})
        words_rows.append(alignment_row({"segment_id": f"seg{i}", "dataset": "d", "split": "train"}, "synth", timed))
    rows.append({**rows[0], "segment_id": "no-words"})
    units_path = tmp_path / "units-00000.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=UNITS), units_path)
    words_path = Path(write_alignments(words_rows, tmp_path / "words-00000.parquet")["path"])
    return units_path, words_path, truth


def test_interleaved_documents_from_units_and_alignments(tmp_path: Path, tok: InterleavingTokenizer) -> None:
    units_path, words_path, truth = _shards(tmp_path)
    docs = list(interleaved_documents(units_path, words_path, tok))
    assert [d for d, _ in docs] == ["seg0", "seg1"]
    for sid, ids in docs:
        timed, units, durations = truth[sid]
        spans = tok.plan(timed, durations, sid)
        decoded = tok.decode(ids)
        assert [m for m, _ in decoded] == [s.modality for s in spans]
        for (m, content), s in zip(decoded, spans):
            expected = ([w for w, _, _ in timed[s.word_lo:s.word_hi]] if m == "text"
                        else units[s.unit_lo:s.unit_hi].tolist())
            assert list(content) == expected
    out = write_token_docs(docs, "interleaved", tmp_path / "inter.parquet", tok.vocab.size)
    back = read_token_docs(out["path"])
    assert out["rows"] == 2 and all(np.array_equal(a, b) for (_, a), (_, b) in zip(back, docs))
    assert out["tokens"] == sum(len(d) for _, d in docs)
    again = list(interleaved_documents(units_path, words_path, tok))  # seeded: the same documents again
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(again, docs))


def test_speech_and_text_documents(tmp_path: Path, tok: InterleavingTokenizer) -> None:
    units_path, _, truth = _shards(tmp_path)
    speech = dict(speech_documents(units_path, tok))
    assert len(speech) == 4 and tok.decode(speech["seg1"])[0][1].tolist() == truth["seg1"][1].tolist()
    stories = tmp_path / "stories.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"story_id": "a", "topic": "t", "split": "train", "sentences": ["The dog ran.", "It was fun."]},
        {"story_id": "b", "topic": "t", "split": "heldout", "sentences": ["No."]}], schema=STORIES), stories)
    [(doc_id, ids)] = list(text_documents(story_texts(stories), tok))
    assert doc_id == "a" and tok.decode(ids) == [("text", "The dog ran. It was fun.".split())]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        write_token_docs([("x", np.array([tok.vocab.size]))], "text", tmp_path / "bad.parquet", tok.vocab.size)
    assert abs(sum(INTER_SCALE_RATIOS.values()) - 1.0) < 1e-6
