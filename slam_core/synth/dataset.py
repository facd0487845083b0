"""Synthesis stages: long story recordings (for VAD + units) and spoken eval / preference pairs.

Every function reads text Parquet (STORIES / TRIPLES), speaks it with the configured backend, writes
its outputs atomically and returns a small dict. Voices are drawn from `cfg.voices` with a seed derived
from the item id, so the same inputs + seed give the same bytes and a shard can be redone alone.
Text a backend cannot speak is skipped and listed in `bad` as (id, reason, detail), never fatal.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from slam_core.atomic import atomic_path, write_bytes_atomic
from slam_core.audio.io import TARGET_SAMPLE_RATE_HZ, encode_flac
from slam_core.config import SynthConfig
from slam_core.schemas import EVAL_PAIRS_AUDIO, PREFERENCE_AUDIO, RECORDINGS
from slam_core.synth.backends import get_backend
from slam_core.synth.base import TTSBackend, TTSError
from slam_core.synth.shards import speak_16k

log = logging.getLogger(__name__)

# Pause between a prompt and its continuation in pair audio: an ordinary sentence pause, so the
# positive and negative differ only in the continuation.
SENTENCE_PAUSE_S = 0.35
# Silence before the first and after the last story of a recording; longer than VAD's default
# min_silence_s, so the last segment closes at the speech end instead of running to the file end.
RECORDING_EDGE_SILENCE_S = 1.0


def _read_split(path: str | Path, split: str) -> list[dict]:
    rows = pq.read_table(path).to_pylist()
    return [r for r in rows if r["split"] == split]


def _write_rows(rows: list[dict], schema: pa.Schema, out_path: Path) -> Path:
    with atomic_path(out_path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp, compression="zstd")
    return Path(out_path)


def pick_voice(voices: list[str], seed: int, key: str) -> str:
    """The voice for item `key`: seeded by (seed, key) only, so it does not depend on shard layout."""
    return random.Random(f"voice-{seed}-{key}").choice(list(voices))


def speaker_name(backend: TTSBackend, voice: str) -> str:
    """Speaker label stored in Parquet rows: backend plus voice id (a .pt path becomes its stem)."""
    return f"{backend.name}-{Path(voice).stem if voice.endswith('.pt') else voice}"


def _speak(backend: TTSBackend, text: str, voice: str, sample_rate_hz: int) -> np.ndarray:
    return speak_16k(backend, text, voice, sample_rate_hz)[0]


def _silence(seconds: float, sample_rate_hz: int) -> np.ndarray:
    return np.zeros(int(round(seconds * sample_rate_hz)), dtype=np.float32)


def _join(parts: list[np.ndarray], pause: np.ndarray) -> np.ndarray:
    out: list[np.ndarray] = []
    for part in parts:
        if out:
            out.append(pause)
        out.append(part)
    return np.concatenate(out)


# ---------------------------------------------------------------- long recordings of stories


def plan_recordings(stories_path: str | Path, split: str, cfg: SynthConfig, seed: int) -> list[dict]:
    """Group the split's stories into recordings of cfg.stories_per_recording stories, each with a voice.

    Plans are plain JSON-able dicts (recording_id, split, voice, story_ids, stories=[sentences...]).
    """
    stories = _read_split(stories_path, split)
    size = cfg.stories_per_recording
    plans = []
    for k, start in enumerate(range(0, len(stories), size)):
        group = stories[start:start + size]
        recording_id = f"stories-{split}-{k:05d}"
        plans.append({
            "recording_id": recording_id, "split": split, "voice": pick_voice(cfg.voices, seed, recording_id),
            "story_ids": [s["story_id"] for s in group], "stories": [list(s["sentences"]) for s in group],
        })
    return plans


def _speak_recording(plan: dict, backend: TTSBackend, cfg: SynthConfig, bad: list) -> tuple[np.ndarray | None, list[str], list[str]]:
    spoken, ids, texts = [], [], []
    for story_id, sentences in zip(plan["story_ids"], plan["stories"]):
        text = " ".join(sentences)
        try:
            spoken.append(_speak(backend, text, plan["voice"], cfg.sample_rate_hz))
        except TTSError as err:
            bad.append((story_id, err.reason, str(err)))
            continue
        ids.append(story_id)
        texts.append(text)
    if not spoken:
        return None, ids, texts
    edge = _silence(RECORDING_EDGE_SILENCE_S, cfg.sample_rate_hz)
    body = _join(spoken, _silence(cfg.gap_between_stories_s, cfg.sample_rate_hz))
    return np.concatenate([edge, body, edge]), ids, texts


def synthesize_recording_shard(plans: list[dict], cfg: SynthConfig, out_dir: Path, shard_index: int) -> dict:
    """Speak each plan into <out_dir>/audio/<recording_id>.flac and list them in recordings-NNNNN.parquet.

    Stories are joined by cfg.gap_between_stories_s of silence, so one file holds several stories for
    VAD to separate. Returns {"path", "rows", "audio_seconds", "bad": [(story_id, reason, detail)]}.
    """
    out_dir = Path(out_dir)
    backend = get_backend(cfg)
    rows, bad = [], []
    audio_seconds = 0.0
    for plan in plans:
        wave, story_ids, texts = _speak_recording(plan, backend, cfg, bad)
        if wave is None:
            bad.append((plan["recording_id"], "no_story_spoken", "every story of the recording failed TTS"))
            continue
        audio_path = write_bytes_atomic(out_dir / "audio" / f"{plan['recording_id']}.flac",
                                        encode_flac(wave, cfg.sample_rate_hz))
        duration_s = len(wave) / cfg.sample_rate_hz
        audio_seconds += duration_s
        rows.append({
            "recording_id": plan["recording_id"], "dataset": "stories", "split": plan["split"],
            "path": str(audio_path.resolve()), "speaker": speaker_name(backend, plan["voice"]),
            "duration_s": duration_s, "story_ids": story_ids, "text": "\n".join(texts),
        })
        log.info("recording %s: %d stories, %.1f s", plan["recording_id"], len(story_ids), duration_s)
    path = _write_rows(rows, RECORDINGS, out_dir / f"recordings-{shard_index:05d}.parquet")
    return {"path": str(path), "rows": len(rows), "audio_seconds": audio_seconds, "bad": bad}


# ---------------------------------------------------------------- evaluation and preference pairs


def _pair_row(backend: TTSBackend, voice: str, prompt: str, positive: str, negative: str) -> dict:
    """Speak the prompt once and each continuation once, so the two audios share the prompt samples."""
    rate = TARGET_SAMPLE_RATE_HZ
    pause = _silence(SENTENCE_PAUSE_S, rate)
    prompt_wave = _speak(backend, prompt, voice, rate)
    pos_wave = _join([prompt_wave, _speak(backend, positive, voice, rate)], pause)
    neg_wave = _join([prompt_wave, _speak(backend, negative, voice, rate)], pause)
    return {
        "speaker": speaker_name(backend, voice),
        "positive_text": f"{prompt} {positive}", "negative_text": f"{prompt} {negative}",
        "positive_audio": encode_flac(pos_wave, rate), "negative_audio": encode_flac(neg_wave, rate),
        "_seconds": (len(pos_wave) + len(neg_wave)) / rate,
    }


def _write_pairs(items: list[tuple[str, str, str, str]], set_name: str, cfg: SynthConfig, seed: int, out_path: Path) -> dict:
    """items: (pair_id, prompt, positive continuation, negative continuation)."""
    backend = get_backend(cfg)
    rows, bad = [], []
    audio_seconds = 0.0
    for pair_id, prompt, positive, negative in items:
        try:
            row = _pair_row(backend, pick_voice(cfg.voices, seed, pair_id), prompt, positive, negative)
        except TTSError as err:
            bad.append((pair_id, err.reason, str(err)))
            continue
        audio_seconds += row.pop("_seconds")
        rows.append({"pair_id": pair_id, "set": set_name, **row})
    path = _write_rows(rows, EVAL_PAIRS_AUDIO, Path(out_path))
    log.info("%s pairs: %d written, %d skipped, %.1f s of audio", set_name, len(rows), len(bad), audio_seconds)
    return {"path": str(path), "rows": len(rows), "audio_seconds": audio_seconds, "bad": bad}


def story_pair_texts(stories: list[dict], seed: int) -> list[tuple[str, str, str, str]]:
    """tSC-like items: prompt = all but the last sentence; negative ending = last sentence of a seeded
    random story of another topic."""
    topics = {s["topic"] for s in stories}
    if len(topics) < 2:
        raise ValueError(f"tSC-like pairs need stories of at least 2 topics, got {sorted(topics)}")
    items = []
    for story in stories:
        rng = random.Random(f"tsc-{seed}-{story['story_id']}")
        donor = rng.choice([s for s in stories if s["topic"] != story["topic"]])
        sentences = list(story["sentences"])
        items.append((story["story_id"], " ".join(sentences[:-1]), sentences[-1], donor["sentences"][-1]))
    return items


def synthesize_story_pairs(stories_path: str | Path, cfg: SynthConfig, seed: int, out_path: Path,
                           split: str = "heldout") -> dict:
    """Spoken tSC-like pairs (EVAL_PAIRS_AUDIO, set 'tsc_like'), 16 kHz FLAC bytes, one voice per pair."""
    items = story_pair_texts(_read_split(stories_path, split), seed)
    return _write_pairs(items, "tsc_like", cfg, seed, out_path)


def synthesize_triple_pairs(triples_path: str | Path, cfg: SynthConfig, seed: int, out_path: Path,
                            split: str = "heldout") -> dict:
    """Spoken sSC-like pairs (set 'ssc_like'): prompt + chosen vs prompt + rejected."""
    items = [(t["pair_id"], t["prompt_text"], t["chosen_text"], t["rejected_text"])
             for t in _read_split(triples_path, split)]
    return _write_pairs(items, "ssc_like", cfg, seed, out_path)


def synthesize_preferences(triples_path: str | Path, cfg: SynthConfig, seed: int, out_path: Path,
                           split: str = "train") -> dict:
    """PREFERENCE_AUDIO rows: prompt, chosen and rejected spoken separately with one seeded voice per row."""
    backend = get_backend(cfg)
    rows, bad = [], []
    audio_seconds = 0.0
    for triple in _read_split(triples_path, split):
        voice = pick_voice(cfg.voices, seed, triple["pair_id"])
        try:
            waves = {k: _speak(backend, triple[f"{k}_text"], voice, TARGET_SAMPLE_RATE_HZ)
                     for k in ("prompt", "chosen", "rejected")}
        except TTSError as err:
            bad.append((triple["pair_id"], err.reason, str(err)))
            continue
        audio_seconds += sum(len(w) for w in waves.values()) / TARGET_SAMPLE_RATE_HZ
        rows.append({
            "pair_id": triple["pair_id"], "speaker": speaker_name(backend, voice),
            **{f"{k}_text": triple[f"{k}_text"] for k in waves},
            **{f"{k}_audio": encode_flac(w) for k, w in waves.items()},
        })
    path = _write_rows(rows, PREFERENCE_AUDIO, Path(out_path))
    return {"path": str(path), "rows": len(rows), "audio_seconds": audio_seconds, "bad": bad}
