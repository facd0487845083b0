"""Synthesis at scale: word alignment (espeak events, Kokoro durations), sTinyStories and SpokenSwag shards,
the published SpokenSwag conversion, bad input, resume + determinism, and the `slam synth` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from slam_core.audio.io import decode_audio_bytes
from slam_core.config import CorpusConfig, SynthConfig
from slam_core.corpora.builtin import prepare_builtin_corpus, write_parquet_atomic
from slam_core.corpora.hub import write_hub_audio_shard
from slam_core.schemas import PREFERENCE_AUDIO, SEGMENTS, STINYSTORIES_AUDIO, STORIES, TRIPLES
from slam_core.synth import get_backend
from slam_core.synth.jobs import SHARD_FUNCTIONS, input_kind, plan_jobs
from slam_core.synth.shards import run_recorded_shards
from slam_core.synth.spokenswag import (
    KOKORO_SPOKENSWAG_VOICES, convert_published_spokenswag, spokenswag_voices, synthesize_spokenswag_shard,
)
from slam_core.synth.stinystories import plan_utterances, synthesize_stinystories_shard
from test_synth import SENTENCE, _tiny_kokoro_dir, one_torch_thread  # noqa: F401  (fixture)

STORY = ["Tom had a red ball.", "He threw it high, and the ball landed in a tree!", "Tom climbed up and got it."]


def check_alignment(words: list, duration_s: float) -> None:
    """Times monotonic (each word starts at or after the previous one ends) and inside the audio."""
    prev_end = 0.0
    for _, start, end in words:
        assert 0.0 <= start <= end <= duration_s + 1e-6
        assert start >= prev_end - 1e-6
        prev_end = end


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cfg = CorpusConfig(n_train_stories=8, n_heldout_stories=4, n_swag_train=6, n_swag_heldout=4)
    return prepare_builtin_corpus(cfg, 3, tmp_path_factory.mktemp("corpus"))


def test_espeak_word_alignment_from_word_events():
    backend = get_backend(SynthConfig())
    text = "The little fish swam, to the reef. And found 42 shells!"
    wave, words = backend.synthesize_aligned(text, "en-us")
    duration_s = len(wave) / backend.sample_rate_hz
    assert [w for w, _, _ in words] == ["The", "little", "fish", "swam", "to", "the", "reef", "And", "found", "42",
                                        "shells"]
    check_alignment(words, duration_s)
    assert words[-1][2] == pytest.approx(duration_s) and words[0][1] < 0.2
    assert np.array_equal(wave, backend.synthesize(text, "en-us"))  # same samples with or without events


def test_stinystories_shard_matches_published_layout_and_feeds_segments(tmp_path):
    stories = [{"story_id": "s1", "sentences": STORY * 3}, {"story_id": "s2", "sentences": STORY[:2]},
               {"story_id": "s3", "sentences": ["\U0001F600 \u4e2d", "!!"]}]
    cfg = SynthConfig(max_utterance_chars=120)
    utts, bad = plan_utterances(stories, cfg.max_utterance_chars)
    assert bad[0][:2] == ("s3", "empty_text")
    utts.append({"utt_id": "s4-000", "story_id": "s4", "text": "...", "split_sentence": False})  # unspeakable
    out = synthesize_stinystories_shard(utts, cfg, ["en-us", "en-gb"], 7, tmp_path / "train" / "data-00000.parquet")
    assert [b[:2] for b in out["bad"]] == [("s4-000", "empty_text")]
    table = pq.read_table(out["path"])
    assert table.schema.equals(STINYSTORIES_AUDIO) and out["rows"] == len(utts) - 1
    rows = table.to_pylist()
    assert [r["split_sentence"] for r in rows] == [True] * (len(rows) - 1) + [False]
    speakers = {r["audio"]["path"].split("_", 1)[1] for r in rows if r["audio"]["path"].startswith("s1-")}
    assert len(speakers) == 1  # one voice per story
    for row in rows:
        wave = decode_audio_bytes(row["audio"]["bytes"])
        words = [(w["word"], w["start_time"], w["end_time"]) for w in row["aligned_text"]]
        check_alignment(words, len(wave) / 16000)
        assert len(words) == len(row["text"].split())
    seg = write_hub_audio_shard(out["path"], tmp_path / "segments.parquet", "stinystories", "train")
    segs = pq.read_table(seg["path"])
    assert segs.schema.equals(SEGMENTS) and seg["rows"] == len(rows) and seg["bad"] == []
    assert segs.column("text").to_pylist() == [r["text"] for r in rows]


def test_spokenswag_shard_voices_bad_pair_and_determinism(tmp_path, corpus):
    triples = pq.read_table(corpus["triples"]).to_pylist()[:5]
    triples[2] = {**triples[2], "rejected_text": "\u2026 \U0001F600"}  # nothing speakable
    cfg = SynthConfig()
    voices = spokenswag_voices(cfg)
    assert voices == cfg.voices and spokenswag_voices(SynthConfig(backend="kokoro")) == list(KOKORO_SPOKENSWAG_VOICES)
    a = synthesize_spokenswag_shard(triples, cfg, voices, 11, tmp_path / "a.parquet")
    b = synthesize_spokenswag_shard(triples, cfg, voices, 11, tmp_path / "b.parquet")
    assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()
    assert [x[:2] for x in a["bad"]] == [(triples[2]["pair_id"], "empty_text")]
    table = pq.read_table(a["path"])
    assert table.schema.equals(PREFERENCE_AUDIO) and a["rows"] == 4
    assert len(set(table.column("speaker").to_pylist())) > 1


def test_published_spokenswag_converts_or_names_the_columns_found(tmp_path):
    tone = (0.1 * np.sin(np.arange(24000) / 24000 * 2 * np.pi * 220)).astype(np.float32)
    import soundfile as sf
    import io

    buf = io.BytesIO()
    sf.write(buf, tone, 24000, format="WAV")
    cell = {"bytes": buf.getvalue(), "path": "x.wav"}
    rows = [{"prompt": cell, "chosen": cell, "rejected": {"bytes": b"junk", "path": "y.wav"} if i == 1 else cell,
             "prompt_text": "A man sits.", "chosen_text": "He eats.", "rejected_text": "He flies.", "speaker": "af_heart"}
            for i in range(3)]
    (tmp_path / "data").mkdir()
    src = tmp_path / "data" / "train-00000-of-00058.parquet"
    pq.write_table(pa.Table.from_pylist(rows), src)
    out = convert_published_spokenswag(src, tmp_path / "prefs.parquet")
    table = pq.read_table(out["path"])
    assert table.schema.equals(PREFERENCE_AUDIO) and out["rows"] == 2 and out["bad"][0][1] == "unreadable"
    assert len(decode_audio_bytes(table.column("prompt_audio")[0].as_py())) == 16000
    wrong = tmp_path / "wrong.parquet"
    pq.write_table(pa.table({"question": ["x"], "audio": [b""]}), wrong)
    with pytest.raises(ValueError, match="found columns: question, audio"):
        convert_published_spokenswag(wrong, tmp_path / "w.parquet")
    jobs, _, info = plan_jobs("spokenswag", tmp_path / "data", SynthConfig(), 0, tmp_path / "out")
    assert info["input_kind"] == "published_spokenswag" and len(jobs) == 1


def test_resume_continues_from_last_complete_shard_with_same_bytes(tmp_path, corpus):
    cfg = SynthConfig(shard_rows=3, max_utterance_chars=150)
    catalog = tmp_path / "catalog.duckdb"
    jobs, _, _ = plan_jobs("stinystories", corpus["stories"], cfg, 5, tmp_path / "run")
    assert len(jobs) >= 3
    first = run_recorded_shards(jobs[:2], 1, catalog, shard_functions=SHARD_FUNCTIONS)  # "killed" after 2 shards
    Path(jobs[2]["out_path"]).parent.mkdir(parents=True, exist_ok=True)
    Path(jobs[2]["out_path"]).write_bytes(b"half-written by a killed worker, never recorded")
    again = run_recorded_shards(jobs, 1, catalog, shard_functions=SHARD_FUNCTIONS)  # ... and started again
    assert [r["reused"] for r in again] == [True, True] + [False] * (len(jobs) - 2)
    assert [r["rows"] for r in again[:2]] == [r["rows"] for r in first]
    fresh_jobs, _, _ = plan_jobs("stinystories", corpus["stories"], cfg, 5, tmp_path / "fresh")
    assert [j["fingerprint"] for j in fresh_jobs] == [j["fingerprint"] for j in jobs]
    # two worker processes
    run_recorded_shards(fresh_jobs, 2, tmp_path / "fresh-catalog.duckdb", shard_functions=SHARD_FUNCTIONS)
    for job, fresh in zip(jobs, fresh_jobs):
        assert Path(job["out_path"]).read_bytes() == Path(fresh["out_path"]).read_bytes()
    other_seed, _, _ = plan_jobs("stinystories", corpus["stories"], cfg, 6, tmp_path / "seed6")
    assert other_seed[0]["fingerprint"] != jobs[0]["fingerprint"]


def test_slam_synth_command_resumes_and_reports(tmp_path, corpus, capsys):
    from flows.cli import main

    argv = ["synth", "spokenswag", "--input", corpus["triples"], "--out", str(tmp_path / "out"), "--backend", "espeak",
            "--voices", "en-us", "en-gb", "--seed", "3", "--workers", "1", "--shard-rows", "4",
            "--data-root", str(tmp_path / "root")]
    assert main(argv) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["rows"] == 6 and len(first["shards"]) == 2 and first["reused_shards"] == 0
    assert first["voices"] == ["en-us", "en-gb"] and first["seed"] == 3
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["reused_shards"] == 2
    assert main(["synth", "spokenswag", "--input", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2


def test_slam_synth_spokenswag_accepts_the_official_swag_csv_file(tmp_path, capsys):
    # rowanz/swagaf data/train.csv: an unnamed index column first, then the 'regular' columns
    from flows.cli import main

    header = ",video-id,fold-ind,startphrase,sent1,sent2,gold-source,ending0,ending1,ending2,ending3,label"
    rows = [f'{i},anetv_{i},{i},"A dog runs. It","A dog runs {i}.",It,{gold},"barks loudly.","sleeps.","jumps high.",'
            f'"eats food.",{i % 4}' for i, gold in enumerate(["gold", "gold", "gen", "gold"])]
    csv = tmp_path / "train.csv"
    csv.write_text("\n".join([header, *rows]) + "\n")
    argv = ["synth", "spokenswag", "--input", str(csv), "--out", str(tmp_path / "out"), "--backend", "espeak",
            "--voices", "en-us", "--workers", "1", "--data-root", str(tmp_path / "root")]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["rows"] == 3  # the 'gen' row is not a gold row
    shard = pq.read_table(result["shards"][0]["path"] if isinstance(result["shards"][0], dict) else result["shards"][0])
    assert shard.num_rows == 3 and set(shard.column("pair_id").to_pylist()) == {
        "swag-train-000000", "swag-train-000001", "swag-train-000003"}
    assert input_kind("spokenswag", csv) == "swag"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="notes.txt: neither .* SWAG .*train.csv"):
        input_kind("spokenswag", tmp_path / "notes.txt")


def test_kokoro_alignment_long_sentence_split_and_spokenswag_voices(tmp_path, one_torch_thread):  # noqa: F811
    model_dir = _tiny_kokoro_dir(tmp_path / "kokoro", voices=KOKORO_SPOKENSWAG_VOICES, context_length=40)
    cfg = SynthConfig(backend="kokoro", kokoro_model=str(model_dir), kokoro_speed=20.0, voices=["af_heart"], device="cpu")
    backend = get_backend(cfg)
    text = "The little fish swam to the coral reef, and found a shiny shell. Quick zebras vex the dog!"
    parts: list[str] = []
    speak_parts = backend._speak_parts
    backend._speak_parts = lambda ps: parts.extend(" ".join(w for w, _ in p.words) for p in ps) or speak_parts(ps)
    wave, words = backend.synthesize_aligned(text, "af_heart")  # first sentence > 38 phonemes: cut at the comma
    del backend._speak_parts
    assert any(p.endswith("reef,") for p in parts) and len(parts) >= 3 and " ".join(parts) == text
    assert np.array_equal(wave, backend.synthesize(text, "af_heart"))
    assert [w for w, _, _ in words] == text.split()
    check_alignment(words, len(wave) / 24000)
    assert words[-1][2] > words[0][1]
    triples = [{"pair_id": f"p{i}", "prompt_text": "A fish swam.", "chosen_text": "It found a shell.",
                "rejected_text": "Zebras vex the dog."} for i in range(6)]
    a = synthesize_spokenswag_shard(triples, cfg, spokenswag_voices(cfg), 1, tmp_path / "a.parquet")
    speakers = set(pq.read_table(a["path"]).column("speaker").to_pylist())
    assert speakers <= {f"kokoro-{v}" for v in KOKORO_SPOKENSWAG_VOICES} and len(speakers) > 1
    b = synthesize_spokenswag_shard(triples, cfg, spokenswag_voices(cfg), 1, tmp_path / "b.parquet")
    assert Path(a["path"]).read_bytes() == Path(b["path"]).read_bytes()


def test_stories_parquet_and_triples_inputs_are_detected(tmp_path, corpus):
    jobs, _, info = plan_jobs("stinystories", corpus["stories"], SynthConfig(shard_rows=100), 0, tmp_path / "o")
    assert info["input_kind"] == "stories" and len(jobs) == 1
    assert pq.read_table(corpus["stories"]).schema.equals(STORIES)
    assert pq.read_table(corpus["triples"]).schema.equals(TRIPLES)
    empty = write_parquet_atomic([], STORIES, tmp_path / "empty.parquet")
    with pytest.raises(ValueError, match="no stories of split 'train'"):
        plan_jobs("stinystories", empty, SynthConfig(), 0, tmp_path / "o2")
