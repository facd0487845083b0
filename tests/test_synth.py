"""Speech synthesis: espeak-ng through ctypes, Kokoro's loader on random weights, and the synth stages."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from slam_core.audio.io import decode_audio_bytes
from slam_core.config import CorpusConfig, SynthConfig
from slam_core.corpora.builtin import prepare_builtin_corpus, write_parquet_atomic
from slam_core.schemas import EVAL_PAIRS_AUDIO, PREFERENCE_AUDIO, RECORDINGS, STORIES
from slam_core.synth import TTSError, TTSSetupError, get_backend
from slam_core.synth.dataset import (
    plan_recordings, synthesize_preferences, synthesize_recording_shard, synthesize_story_pairs,
    synthesize_triple_pairs,
)

SENTENCE = "The little fish swam to the coral reef and found a shiny shell."


@pytest.fixture(scope="module")
def espeak():
    return get_backend(SynthConfig(backend="espeak", words_per_minute=165))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    cfg = CorpusConfig(n_train_stories=8, n_heldout_stories=6, n_swag_train=4, n_swag_heldout=4)
    return prepare_builtin_corpus(cfg, 3, tmp_path_factory.mktemp("corpus"))


def test_espeak_speaks_plausible_speech_deterministically(espeak):
    wave = espeak.synthesize(SENTENCE, "en-us")
    assert espeak.sample_rate_hz == 22050 and wave.dtype == np.float32
    duration_s = len(wave) / espeak.sample_rate_hz
    n_words = len(SENTENCE.split())
    assert 0.5 * n_words * 60 / 165 < duration_s < 2.0 * n_words * 60 / 165
    frame_rms = np.sqrt((wave[: len(wave) // 441 * 441].reshape(-1, 441) ** 2).mean(axis=1))
    assert (frame_rms > 0.02).mean() > 0.5, "mostly silent"
    assert np.abs(wave).max() <= 1.0
    assert np.array_equal(wave, espeak.synthesize(SENTENCE, "en-us"))


def test_espeak_same_samples_later_and_in_another_process(espeak):
    # espeak seeds its noise from the clock and keeps state between calls: neither may leak into output.
    wave = espeak.synthesize(SENTENCE, "en-us+f3")
    espeak.synthesize("Something else first.", "en-gb")
    time.sleep(1.05)
    assert np.array_equal(wave, espeak.synthesize(SENTENCE, "en-us+f3"))
    code = ("import hashlib; from slam_core.synth.espeak import EspeakBackend; "
            f"print(hashlib.sha256(EspeakBackend(165).synthesize({SENTENCE!r}, 'en-us+f3').tobytes()).hexdigest())")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           cwd=Path(__file__).resolve().parents[1])
    assert other.stdout.strip() == hashlib.sha256(wave.tobytes()).hexdigest()


def test_espeak_voices_differ(espeak):
    waves = {v: espeak.synthesize(SENTENCE, v) for v in ("en-us", "en-gb", "en-us+f3", "en-us+m3")}

    def spectrum(w):  # average magnitude spectrum: differs with pitch/formants of the voice
        frames = w[: len(w) // 1024 * 1024].reshape(-1, 1024)
        return np.abs(np.fft.rfft(frames, axis=1)).mean(axis=0)

    specs = {v: spectrum(w) / spectrum(w).sum() for v, w in waves.items()}
    names = list(specs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert np.abs(specs[a] - specs[b]).sum() > 0.05, (a, b)


def test_espeak_is_thread_safe(espeak):
    texts = [f"Number {i} is a fine number to say out loud." for i in range(6)]
    serial = [espeak.synthesize(t, "en-us+f3") for t in texts]
    results: dict[int, np.ndarray] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, espeak.synthesize(texts[i], "en-us+f3")))
               for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(np.array_equal(serial[i], results[i]) for i in range(len(texts)))


def test_espeak_errors_are_clear(espeak):
    with pytest.raises(TTSError, match="empty_text"):
        espeak.synthesize(" ... !! ", "en-us")
    with pytest.raises(TTSSetupError, match="no voice 'xx-nope'"):
        espeak.synthesize("hello", "xx-nope")
    with pytest.raises(TTSSetupError, match="no voice 'en-zz'"):  # checked before any audio is made
        get_backend(SynthConfig(voices=["en-us", "en-zz"]))


def test_espeak_default_voices_exist_and_missing_loader_is_clear(espeak, monkeypatch):
    for voice in espeak.voices():
        espeak.check_voice(voice)
    from slam_core.synth import espeak as espeak_module

    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # as if the wheel were not installed
    with pytest.raises(TTSSetupError, match="pip install espeakng-loader"):
        espeak_module._Engine()


def test_recording_shard_joins_stories_with_gaps_and_skips_bad_story(tmp_path, corpus):
    cfg = SynthConfig(stories_per_recording=3, gap_between_stories_s=1.6)
    plans = plan_recordings(corpus["stories"], "train", cfg, seed=1)
    assert [len(p["story_ids"]) for p in plans] == [3, 3, 2]
    assert plans == plan_recordings(corpus["stories"], "train", cfg, seed=1)
    plans[0]["stories"][1] = ["...", "!!"]  # unspeakable story: skipped, not fatal
    out = synthesize_recording_shard(plans[:2], cfg, tmp_path / "a", shard_index=3)
    assert out["path"].endswith("recordings-00003.parquet") and out["rows"] == 2
    assert [(b[0], b[1]) for b in out["bad"]] == [(plans[0]["story_ids"][1], "empty_text")]
    table = pq.read_table(out["path"])
    assert table.schema.equals(RECORDINGS)
    rows = table.to_pylist()
    assert rows[0]["story_ids"] == [plans[0]["story_ids"][0], plans[0]["story_ids"][2]]
    for row in rows:
        info = sf.info(row["path"])
        assert info.samplerate == 16000 and abs(info.duration - row["duration_s"]) < 1e-3
        assert row["dataset"] == "stories" and row["speaker"].startswith("espeak-")
    assert out["audio_seconds"] == pytest.approx(sum(r["duration_s"] for r in rows))
    again = synthesize_recording_shard(plans[:2], cfg, tmp_path / "b", shard_index=3)
    for row in rows:
        name = Path(row["path"]).name
        assert (tmp_path / "a" / "audio" / name).read_bytes() == (tmp_path / "b" / "audio" / name).read_bytes()
    assert again["rows"] == 2


def test_story_pairs_use_other_topic_ending_and_share_prompt_audio(tmp_path, corpus):
    cfg = SynthConfig()
    out = synthesize_story_pairs(corpus["stories"], cfg, seed=4, out_path=tmp_path / "tsc.parquet")
    stories = {s["story_id"]: s for s in pq.read_table(corpus["stories"]).to_pylist()}
    endings = {s["sentences"][-1]: s["topic"] for s in stories.values()}
    table = pq.read_table(out["path"])
    assert table.schema.equals(EVAL_PAIRS_AUDIO) and out["rows"] == 6 and out["bad"] == []
    for row in table.to_pylist():
        story = stories[row["pair_id"]]
        prompt = " ".join(story["sentences"][:-1])
        assert row["set"] == "tsc_like" and row["positive_text"] == f"{prompt} {story['sentences'][-1]}"
        neg_ending = row["negative_text"][len(prompt) + 1:]
        assert row["negative_text"].startswith(prompt) and endings[neg_ending] != story["topic"]
        pos, neg = decode_audio_bytes(row["positive_audio"]), decode_audio_bytes(row["negative_audio"])
        shared = min(len(pos), len(neg)) // 2
        assert np.array_equal(pos[:shared], neg[:shared])  # same voice, same prompt samples
        assert not np.array_equal(pos, neg)
    again = synthesize_story_pairs(corpus["stories"], cfg, seed=4, out_path=tmp_path / "tsc2.parquet")
    assert Path(out["path"]).read_bytes() == Path(again["path"]).read_bytes()


def test_story_pairs_need_two_topics(tmp_path):
    path = write_parquet_atomic([{"story_id": f"s{i}", "topic": "ocean", "split": "heldout",
                                  "sentences": ["A fish swam.", "It slept."]} for i in range(3)],
                                STORIES, tmp_path / "stories.parquet")
    with pytest.raises(ValueError, match="2 topics"):
        synthesize_story_pairs(path, SynthConfig(), 0, tmp_path / "p.parquet")


def test_triple_pairs_and_preferences(tmp_path, corpus):
    cfg = SynthConfig()
    triples = {t["pair_id"]: t for t in pq.read_table(corpus["triples"]).to_pylist()}
    ssc = synthesize_triple_pairs(corpus["triples"], cfg, seed=2, out_path=tmp_path / "ssc.parquet")
    for row in pq.read_table(ssc["path"]).to_pylist():
        t = triples[row["pair_id"]]
        assert t["split"] == "heldout" and row["set"] == "ssc_like"
        assert row["positive_text"] == f"{t['prompt_text']} {t['chosen_text']}"
        assert row["negative_text"] == f"{t['prompt_text']} {t['rejected_text']}"
    prefs = synthesize_preferences(corpus["triples"], cfg, seed=2, out_path=tmp_path / "pref.parquet")
    table = pq.read_table(prefs["path"])
    assert table.schema.equals(PREFERENCE_AUDIO) and prefs["rows"] == 4
    for row in table.to_pylist():
        assert triples[row["pair_id"]]["split"] == "train"
        for key in ("prompt", "chosen", "rejected"):
            wave = decode_audio_bytes(row[f"{key}_audio"])
            n_words = len(row[f"{key}_text"].split())
            assert 0.15 * n_words < len(wave) / 16000 < 1.0 * n_words
    assert prefs["audio_seconds"] > 0 and ssc["rows"] == 4


# ---------------------------------------------------------------- Kokoro: random weights, real loader


def _tiny_kokoro_dir(root: Path, voices: tuple[str, ...] = ("af_test",), context_length: int = 512) -> Path:
    """config.json with the smallest dims that run, an empty state dict (random init) and local voice tensors
    (`context_length` = the phoneme limit, BOS/EOS included)."""
    import torch
    from misaki.espeak import EspeakG2P

    g2p = EspeakG2P(language="en-us")
    symbols = set(" .,!?;:") | set(g2p(SENTENCE)[0]) | set(g2p("Quick zebras vex the jumping dog, oh!")[0])
    config = {
        "vocab": {s: i + 1 for i, s in enumerate(sorted(symbols))}, "n_token": 178, "hidden_dim": 512,
        "style_dim": 128, "n_layer": 1, "max_dur": 50, "n_mels": 80, "dim_in": 64, "max_conv_dim": 512,
        "text_encoder_kernel_size": 5, "dropout": 0.2,
        "plbert": {"hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
                   "max_position_embeddings": context_length, "num_hidden_layers": 1, "dropout": 0.1},
        "istftnet": {"upsample_rates": [10, 6], "upsample_kernel_sizes": [20, 12], "upsample_initial_channel": 512,
                     "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3, 5]],
                     "gen_istft_n_fft": 20, "gen_istft_hop_size": 5},
    }
    (root / "voices").mkdir(parents=True)
    (root / "config.json").write_text(json.dumps(config))
    torch.save({}, root / "kokoro-v1_0.pth")
    for k, voice in enumerate(voices):
        torch.save(0.1 * torch.randn(510, 1, 256, generator=torch.Generator().manual_seed(k)),
                   root / "voices" / f"{voice}.pt")
    return root


@pytest.fixture
def one_torch_thread():
    """The random Kokoro is ~58M parameters: on a shared 2-core box, spinning torch threads fight other
    processes and a 1 s synthesis takes 10 s; one thread keeps the test fast and steady."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_kokoro_random_weights_through_local_dir_loader(tmp_path, one_torch_thread):
    model_dir = _tiny_kokoro_dir(tmp_path / "kokoro")
    backend = get_backend(SynthConfig(backend="kokoro", kokoro_model=str(model_dir), kokoro_speed=20.0,
                                      voices=["af_test"]))
    assert backend.sample_rate_hz == 24000 and backend.voices() == ["af_test"]
    text = "Fish swam. Sleep."  # two sentences: exercises the per-sentence path
    wave = backend.synthesize(text, "af_test")
    assert wave.dtype == np.float32 and len(wave) > 0.3 * 24000 and np.isfinite(wave).all() and np.abs(wave).max() > 0
    assert np.array_equal(wave, backend.synthesize(text, "af_test"))  # decoder noise is seeded
    assert np.array_equal(wave, backend.synthesize(text, str(model_dir / "voices" / "af_test.pt")))
    with pytest.raises(TTSSetupError, match="no Kokoro voice 'af_missing'"):
        backend.synthesize(text, "af_missing")
    with pytest.raises(TTSSetupError, match="no Kokoro voice 'en-us'"):  # espeak voice names are refused
        get_backend(SynthConfig(backend="kokoro", kokoro_model=str(model_dir), voices=["en-us"]))
    with pytest.raises(TTSError, match="empty_text"):
        backend.synthesize("  ", "af_test")


def test_kokoro_hub_id_offline_gives_one_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)  # 'hexgrad/Kokoro-82M' must not resolve as a local dir
    with pytest.raises(TTSSetupError) as info:
        get_backend(SynthConfig(backend="kokoro", kokoro_model="hexgrad/Kokoro-82M"))
    message = str(info.value)
    assert "hexgrad/Kokoro-82M" in message and "local directory" in message
    with pytest.raises(TTSSetupError, match="no config.json"):
        get_backend(SynthConfig(backend="kokoro", kokoro_model=str(tmp_path)))
