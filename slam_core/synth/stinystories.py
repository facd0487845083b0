"""sTinyStories: stories -> utterances -> audio Parquet shards in the layout of the published slprl/sTinyStories.

Rows: `audio` {bytes: 16 kHz FLAC, path: "<utterance id>_<speaker>.flac"}, `text`, `aligned_text` (one
{word, start_time, end_time} per spoken word, seconds from the start of the audio) and `split_sentence`
(True when the story was longer than `synth.max_utterance_chars` and was cut at sentence, clause or word
ends into several rows). The same `hub.write_hub_audio_shard` lists these shards and the published ones
into SEGMENTS, so everything downstream is shared.

Text is normalised first (NFKC, symbols spelled, unknown characters dropped); a story with nothing left to
say, or an utterance the backend cannot speak, is skipped with a counted reason, never fatal for the shard.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from slam_core.atomic import atomic_path
from slam_core.audio.io import encode_flac
from slam_core.config import SynthConfig
from slam_core.schemas import STINYSTORIES_AUDIO
from slam_core.synth.dataset import pick_voice, speaker_name
from slam_core.synth.shards import cached_backend, speak_many_16k
from slam_core.synth.text_norm import normalise_text, split_utterances

log = logging.getLogger(__name__)


def plan_utterances(stories: list[dict], max_chars: int) -> tuple[list[dict], list[tuple[str, str, str]]]:
    """Utterances {utt_id, story_id, text, split_sentence} of STORIES rows, and skipped stories as
    (story_id, reason, detail). Nothing is truncated: joining a story's utterances gives its whole text."""
    utterances, bad = [], []
    for story in stories:
        norm = normalise_text(" ".join(story["sentences"]))
        if not any(ch.isalnum() for ch in norm.text):
            bad.append((story["story_id"], "empty_text", "nothing speakable after normalisation"))
            continue
        if norm.dropped_chars:
            log.debug("%s: dropped %d unspeakable characters", story["story_id"], norm.dropped_chars)
        parts = split_utterances(norm.text, max_chars)
        for k, text in enumerate(parts):
            utterances.append({"utt_id": f"{story['story_id']}-{k:03d}", "story_id": story["story_id"],
                               "text": text, "split_sentence": len(parts) > 1})
    return utterances, bad


def read_stories(path: str | Path, split: str | None = None, limit: int | None = None) -> list[dict]:
    """STORIES rows of a Parquet file (one split, or all), at most `limit`."""
    rows = pq.read_table(path).to_pylist()
    if rows and not {"story_id", "sentences"} <= set(rows[0]):
        raise ValueError(f"{path}: not a STORIES table (need story_id, sentences; found {sorted(rows[0])})")
    rows = [r for r in rows if split is None or r.get("split") == split]
    return rows[:limit] if limit is not None else rows


def synthesize_stinystories_shard(utterances: list[dict], cfg: SynthConfig, voices: list[str], seed: int,
                                  out_path: str | Path) -> dict:
    """Speak one shard of utterances into an sTinyStories-layout Parquet file (written atomically).

    The voice is drawn per story from (seed, story id), so all parts of a story share a speaker and a
    shard can be redone alone. Returns {"path", "rows", "audio_seconds", "bad"}.
    """
    backend = cached_backend(cfg, voices)
    rate = cfg.sample_rate_hz
    rows, bad = [], []
    audio_seconds = 0.0
    requests = [(utt["text"], pick_voice(voices, seed, utt["story_id"])) for utt in utterances]
    spoken = speak_many_16k(backend, requests, rate, aligned=True)  # one batched call on Kokoro
    for utt, (_, voice), result in zip(utterances, requests, spoken):
        if isinstance(result, Exception):
            bad.append((utt["utt_id"], getattr(result, "reason", "synth_failed"), f"{type(result).__name__}: {result}"))
            continue
        wave, words = result
        duration_s = len(wave) / rate
        audio_seconds += duration_s
        rows.append({
            "audio": {"bytes": encode_flac(wave, rate), "path": f"{utt['utt_id']}_{speaker_name(backend, voice)}.flac"},
            "text": utt["text"],
            "aligned_text": [{"word": w, "start_time": round(min(a, duration_s), 4),
                              "end_time": round(min(b, duration_s), 4)} for w, a, b in words],
            "split_sentence": utt["split_sentence"],
        })
    with atomic_path(Path(out_path)) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=STINYSTORIES_AUDIO), tmp, compression="zstd")
    log.info("%s: %d utterances, %d skipped, %.1f s of audio", Path(out_path).name, len(rows), len(bad), audio_seconds)
    return {"path": str(out_path), "rows": len(rows), "audio_seconds": audio_seconds, "bad": bad}
