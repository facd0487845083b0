"""Word alignments: transcript matching, synthesis timings (espeak, offline) and Whisper word timestamps (tiny
random Whisper), written beside the units and recorded in the catalog with the share of words aligned."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from data_catalog import Catalog  # noqa: E402
from data_catalog.alignments import alignment_shares  # noqa: E402
from slam_core.align.sources import asr_alignments, synth_alignments  # noqa: E402
from slam_core.align.stage import AlignSettings, align_shard, alignment_fingerprint  # noqa: E402
from slam_core.align.words import (  # noqa: E402
    WORD_ALIGNMENTS, attach_times, normalise_word, read_alignments, window, words_path_for,
)
from slam_core.config import SynthConfig  # noqa: E402
from slam_core.corpora.hub import write_hub_audio_shard  # noqa: E402
from slam_core.corpora.local import write_segments  # noqa: E402
from slam_core.synth.stinystories import synthesize_stinystories_shard  # noqa: E402


def test_attach_times_matches_transcript_words() -> None:
    timed = [("once", 0.0, 0.3), ("upon", 0.3, 0.6), ("a", 0.6, 0.7), ("time,", 0.7, 1.1)]
    out = attach_times("Once upon a time, there".split(), timed)
    assert out == [("Once", 0.0, 0.3), ("upon", 0.3, 0.6), ("a", 0.6, 0.7), ("time,", 0.7, 1.1),
                   ("there", None, None)]
    # a misheard word of the same run length is matched one to one; a dropped one stays unaligned
    out = attach_times(["THE", "COLOR", "RED", "CAR"], [("the", 0, 1), ("colour", 1, 2), ("car", 3, 4)])
    assert [a for _, a, _ in out] == [0, None, None, 3]
    out = attach_times(["THE", "COLOR", "CAR"], [("the", 0, 1), ("colour", 1, 2), ("car", 3, 4)])
    assert [a for _, a, _ in out] == [0, 1, 3]
    # no transcript: the timed words are the transcript; punctuation-only and backwards words are dropped
    assert attach_times(None, [(" Hi", 0.1, 0.2), (".", 0.2, 0.2), ("x", 0.5, 0.4)]) == [("Hi", 0.1, 0.2)]
    assert normalise_word("Don't!") == "don't" and normalise_word("--") == ""


def test_window_shifts_and_clips_to_the_segment() -> None:
    timed = [("a", 0.0, 0.5), ("b", 1.0, 1.6), ("c", 1.9, 2.4), ("d", 3.0, 3.2)]
    assert window(timed, 1.0, 2.2) == [("b", 0.0, 0.6), ("c", 0.9, 1.2)]
    assert window(timed, 0.0, None) == timed


@pytest.fixture(scope="module")
def espeak_shard(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two utterances spoken by espeak into the sTinyStories layout, listed as SEGMENTS read in place."""
    root = tmp_path_factory.mktemp("espeak")
    utterances = [
        {"utt_id": "s0-000", "story_id": "s0", "text": "Once upon a time, a small dog found a red ball.",
         "split_sentence": False},
        {"utt_id": "s1-000", "story_id": "s1", "text": "The cat sat on the warm mat and slept.", "split_sentence": False},
    ]
    cfg = SynthConfig(backend="espeak", voices=["en-us"])
    audio = synthesize_stinystories_shard(utterances, cfg, ["en-us"], 0, root / "data-00000.parquet")
    seg = write_hub_audio_shard(audio["path"], root / "segments.parquet", "stinystories", "train")
    return Path(audio["path"]), Path(seg["path"])


def test_synth_alignments_from_espeak_timings(espeak_shard: tuple[Path, Path], tmp_path: Path) -> None:
    audio_path, segments_path = espeak_shard
    out = synth_alignments(segments_path, tmp_path / "words-00000.parquet")
    # espeak times "on the" as one word event: "the" is listed without times, the other 19 of 20 words are timed
    assert out["rows"] == 2 and out["bad"] == [] and out["share_aligned"] == 0.95
    table = pq.read_table(out["path"])
    assert table.schema == WORD_ALIGNMENTS
    durations = [r["end_s"] for r in pq.read_table(segments_path).to_pylist()]
    for (sid, words), duration, text in zip(read_alignments(out["path"]).items(), durations,
                                            pq.read_table(audio_path)["text"].to_pylist()):
        assert [w for w, _, _ in words] == text.split()
        starts = [a for _, a, _ in words if a is not None]
        assert starts == sorted(starts) and all(0 <= a <= b <= duration for _, a, b in words if a is not None)
    assert set(table["source"].to_pylist()) == {"synth"}


def test_synth_alignment_of_a_plain_audio_file_is_skipped_with_a_reason(tmp_path: Path) -> None:
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(16000, np.float32), 16000)
    seg = write_segments([{"segment_id": "a", "dataset": "x", "split": "train", "source_path": str(wav),
                           "start_s": 0.0, "end_s": 1.0, "speaker": "s", "text": "hello"}], tmp_path / "seg.parquet")
    out = synth_alignments(seg, tmp_path / "w.parquet")
    assert out["rows"] == 0 and out["bad"][0][:2] == ("a", "no_synth_alignment")


def test_align_shard_records_share_and_reuses(espeak_shard: tuple[Path, Path], tmp_path: Path) -> None:
    _, segments_path = espeak_shard
    out_path = words_path_for(tmp_path / "units" / "stinystories" / "train" / "units-00000.parquet")
    assert out_path.name == "words-00000.parquet"
    catalog = tmp_path / "catalog.duckdb"
    kwargs = dict(dataset="stinystories", split="train", segments_fingerprint="seg0", catalog_path=catalog)
    first = align_shard(AlignSettings("synth"), segments_path, out_path, **kwargs)
    assert not first["reused"] and first["share_aligned"] == 0.95 and first["tokens"] == first["words"] - 1 == 19
    again = align_shard(AlignSettings("synth"), segments_path, out_path, **kwargs)
    assert again["reused"] and again["fingerprint"] == first["fingerprint"]
    shares = alignment_shares(Catalog(catalog))
    assert shares == [{"dataset": "stinystories", "split": "train", "source": "synth", "shards": 1, "segments": 2,
                       "words": 20, "aligned": 19, "share_aligned": 0.95}]
    art = Catalog(catalog).artifacts(stage="alignments")
    assert len(art) == 1 and art[0]["tokens"] == 19 and art[0]["rows"] == 2
    assert alignment_fingerprint(AlignSettings("asr"), "seg0") != first["fingerprint"]
    with pytest.raises(ValueError, match="alignment method"):
        AlignSettings("mfa")


def _speech_segments(tmp_path: Path, texts: list[str | None]) -> Path:
    rows = []
    for i, text in enumerate(texts):
        wav = tmp_path / f"u{i}.wav"
        t = np.arange(16000 * 2) / 16000
        sf.write(wav, (0.1 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
        rows.append({"segment_id": f"u{i}", "dataset": "librispeech", "split": "train", "source_path": str(wav),
                     "start_s": 0.0, "end_s": 2.0, "speaker": "s", "text": text})
    rows.append({**rows[0], "segment_id": "gone", "source_path": str(tmp_path / "missing.wav")})
    return write_segments(rows, tmp_path / "segments.parquet")


def test_asr_alignments_match_the_transcript(tmp_path: Path) -> None:
    segments = _speech_segments(tmp_path, ["HE SAID HELLO WORLD", None])
    heard = [(" he", 0.1, 0.3), (" sad", 0.3, 0.5), (" hello", 0.6, 1.0), (" word.", 1.0, 1.4)]
    out = asr_alignments(segments, tmp_path / "w.parquet", model=None, recognise=lambda wave: heard)
    rows = read_alignments(out["path"])
    assert rows["u0"] == [("HE", 0.1, 0.3), ("SAID", 0.3, 0.5), ("HELLO", 0.6, 1.0), ("WORLD", 1.0, 1.4)]
    assert rows["u1"] == [("he", 0.1, 0.3), ("sad", 0.3, 0.5), ("hello", 0.6, 1.0), ("word.", 1.0, 1.4)]
    assert out["bad"][0][0] == "gone" and out["rows"] == 2 and out["share_aligned"] == 1.0


def test_asr_alignments_with_a_tiny_whisper(tmp_path: Path) -> None:
    """The real Whisper path (transcribe with word_timestamps) on a tiny random model: whatever it hears, every
    word it times lies inside the segment, and the transcript's words are all listed."""
    import torch
    from whisper.model import ModelDimensions, Whisper

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=1,
                           n_vocab=51864, n_text_ctx=448, n_text_state=32, n_text_head=2, n_text_layer=1)
    model = Whisper(dims)
    torch.nn.init.normal_(model.decoder.positional_embedding, std=0.02)
    model.eval()
    segments = _speech_segments(tmp_path, ["HELLO THERE", None])
    out = asr_alignments(segments, tmp_path / "w.parquet", model, max_tokens=8)
    rows = read_alignments(out["path"])
    assert [w for w, _, _ in rows["u0"]] == ["HELLO", "THERE"]
    for words in rows.values():
        assert all(a is None or 0.0 <= a <= b <= 30.0 for _, a, b in words)
