"""Tiny corpora and evaluation sets in the layouts the real ones ship in, for the dress rehearsal.

Speech comes from a few real recordings (16 kHz read speech), cut and speed-perturbed into utterances; text
comes from the built-in seeded story and situation generator. Layouts:

- LibriSpeech: `LibriSpeech/<part>/<speaker>/<chapter>/<speaker>-<chapter>-<utt>.flac` + `<speaker>-<chapter>.trans.txt`
- Libri-Light: `<subset>/<speaker>/<book>/<file>.flac` + `<file>.json` with "voice_activity" [[start_s, end_s], ...]
- TinyStories: `data/{train,validation}-00000-of-00001.parquet` with a `text` column (hub layout)
- SWAG ('regular' config): `regular/{train,val}.csv` with the hub's columns
- evaluation sets in SlamKit's reference layout: `sblimp/<sub>/<i>+<word>.wav`, `swuggy_{inter,oov}/<sub>/<i>_<word>.wav`,
  `sSC/<i>_<name>.wav`, `tSC/<i>_<name>.wav` (pairs 2i, 2i+1), `salmon/<part>/sample_<i>_<j>.wav` and a hub
  Parquet part with positive_audio/negative_audio.
"""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import soxr

from slam_core.atomic import atomic_dir
from slam_core.config import CorpusConfig
from slam_core.corpora.builtin import generate_stories, generate_triples

SAMPLE_RATE_HZ = 16_000
LIBRISPEECH_PARTS = ("train-clean-100", "dev-clean", "dev-other")
LIBRILIGHT_SUBSET = "small"
SWAG_COLUMNS = ("video-id", "fold-ind", "startphrase", "sent1", "sent2", "gold-source",
                "ending0", "ending1", "ending2", "ending3", "label")


def read_speech(files: Sequence[Path]) -> list[np.ndarray]:
    """16 kHz mono float32 waves of the source recordings."""
    from slam_core.audio.io import read_audio

    waves = [read_audio(f) for f in files]
    if not waves or min(len(w) for w in waves) < SAMPLE_RATE_HZ:
        raise ValueError(f"rehearsal speech: need recordings of at least 1 s, got {[str(f) for f in files]}")
    return waves


class SpeechCutter:
    """Seeded slices of the source speech, each speed-perturbed (0.9-1.1x) and gain-scaled, so utterances
    differ while staying speech."""

    def __init__(self, waves: list[np.ndarray], seed: int) -> None:
        self.waves = waves
        self.rng = np.random.default_rng(seed)

    def cut(self, seconds: float) -> np.ndarray:
        wave = self.waves[int(self.rng.integers(len(self.waves)))]
        factor = float(self.rng.uniform(0.9, 1.1))
        n = min(len(wave), int(seconds * SAMPLE_RATE_HZ * factor))
        start = int(self.rng.integers(0, len(wave) - n + 1))
        piece = soxr.resample(wave[start:start + n], SAMPLE_RATE_HZ * factor, SAMPLE_RATE_HZ)
        return (piece * float(self.rng.uniform(0.6, 1.0))).astype(np.float32)


def _write(path: Path, wave: np.ndarray, fmt: str = "FLAC") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, wave, SAMPLE_RATE_HZ, format=fmt, subtype="PCM_16")


def text_corpus(n_train: int, n_heldout: int, sentences_per_story: int, seed: int) -> tuple[list[dict], list[dict]]:
    """(stories, triples) from the built-in generator: the text side of TinyStories and SWAG."""
    cfg = CorpusConfig(n_train_stories=n_train, n_heldout_stories=n_heldout, n_swag_train=n_train,
                       n_swag_heldout=n_heldout, sentences_per_story=(sentences_per_story, sentences_per_story))
    return generate_stories(cfg, seed), generate_triples(cfg, seed)


def write_tinystories(out_dir: Path, stories: list[dict]) -> Path:
    """TinyStories' hub layout: train and validation Parquet files with a `text` column."""
    with atomic_dir(out_dir) as tmp:
        (tmp / "data").mkdir()
        for split, name in (("train", "train"), ("heldout", "validation")):
            texts = [" ".join(s["sentences"]) for s in stories if s["split"] == split]
            pq.write_table(pa.table({"text": texts}), tmp / "data" / f"{name}-00000-of-00001.parquet")
    return out_dir


def write_swag(out_dir: Path, triples: list[dict], seed: int) -> Path:
    """SWAG's 'regular' CSV files: the chosen continuation is the gold ending at a seeded label, the rejected
    one and two more other-topic continuations are the distractors."""
    rng = random.Random(f"rehearsal-swag-{seed}")
    pool = [t["rejected_text"] for t in triples] + [t["chosen_text"] for t in triples]
    with atomic_dir(out_dir) as tmp:
        (tmp / "regular").mkdir()
        for split, name in (("train", "train"), ("heldout", "val")):
            with (tmp / "regular" / f"{name}.csv").open("w", newline="", encoding="utf-8") as fh:
                writer = csv.writer(fh)
                writer.writerow(SWAG_COLUMNS)
                for i, t in enumerate(x for x in triples if x["split"] == split):
                    label = rng.randrange(4)
                    endings = [t["rejected_text"], *rng.sample(pool, 2)]
                    endings.insert(label, t["chosen_text"])
                    sent2, _, _ = t["prompt_text"].partition(" walked")
                    writer.writerow([f"rehearsal-{i}", i, t["prompt_text"], t["prompt_text"], sent2, "gold",
                                     *endings[:4], label])
    return out_dir


def write_librispeech(out_dir: Path, cutter: SpeechCutter, sentences: list[str], utterances_per_part: int,
                      seed: int) -> dict[str, int]:
    """LibriSpeech parts with two speakers x one chapter each, 3-8 s utterances and transcripts."""
    rng = random.Random(f"rehearsal-librispeech-{seed}")
    counts = {}
    with atomic_dir(out_dir) as tmp:
        for p, part in enumerate(LIBRISPEECH_PARTS):
            n = utterances_per_part if part.startswith("train") else max(2, utterances_per_part // 2)
            for k in range(n):
                speaker, chapter = 100 + 10 * p + k % 2, 2000 + p
                utt = f"{speaker}-{chapter}-{k:04d}"
                chapter_dir = tmp / "LibriSpeech" / part / str(speaker) / str(chapter)
                _write(chapter_dir / f"{utt}.flac", cutter.cut(rng.uniform(3.0, 8.0)))
                with (chapter_dir / f"{speaker}-{chapter}.trans.txt").open("a", encoding="utf-8") as fh:
                    fh.write(f"{utt} {rng.choice(sentences).upper().rstrip('.')}\n")
            counts[part] = n
    return counts


def write_librilight(out_dir: Path, cutter: SpeechCutter, n_files: int, seed: int) -> dict[str, Any]:
    """Libri-Light `small` files of speech runs separated by 0.5-2 s pauses, with the voice-activity JSON the
    release ships (spans of speech in seconds)."""
    rng = random.Random(f"rehearsal-librilight-{seed}")
    total_s = 0.0
    with atomic_dir(out_dir) as tmp:
        for k in range(n_files):
            speaker, book = 500 + k % 2, f"book_{k:03d}"
            pieces, spans, t = [], [], 0.0
            for _ in range(rng.randint(4, 7)):
                gap = np.zeros(int(rng.uniform(0.5, 2.0) * SAMPLE_RATE_HZ), np.float32)
                speech = cutter.cut(rng.uniform(4.0, 12.0))
                t += len(gap) / SAMPLE_RATE_HZ
                spans.append([round(t, 3), round(t + len(speech) / SAMPLE_RATE_HZ, 3)])
                t += len(speech) / SAMPLE_RATE_HZ
                pieces += [gap, speech]
            stem = tmp / LIBRILIGHT_SUBSET / str(speaker) / book / f"{book}_chapter{k:02d}"
            _write(stem.with_suffix(".flac"), np.concatenate(pieces))
            stem.with_suffix(".json").write_text(json.dumps(
                {"voice_activity": spans, "book_meta": {"title": book}, "snr": 20.0}))
            total_s += t
    return {"files": n_files, "audio_seconds": round(total_s, 1)}


def _wav_bytes(wave: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, SAMPLE_RATE_HZ, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _story_pair(cutter: SpeechCutter, seconds: float) -> tuple[np.ndarray, np.ndarray]:
    """(positive, negative): one stretch of speech, and the same start with its last second from elsewhere."""
    positive = cutter.cut(seconds)
    ending = SAMPLE_RATE_HZ
    return positive, np.concatenate([positive[:-ending], cutter.cut(1.0)[:ending]])


def write_eval_sets(out_dir: Path, cutter: SpeechCutter, pairs_per_set: int, words: list[str]) -> dict[str, int]:
    """Every published modelling set in SlamKit's layout, `pairs_per_set` pairs each (SALMon: two parts)."""
    n = pairs_per_set
    with atomic_dir(out_dir) as tmp:
        for i in range(2 * n):  # sBLIMP: '+' separator, two sub-folders of whole pairs, numbered across them
            _write(tmp / "sblimp" / ("a" if i < 2 * (n // 2) else "b") / f"{i}+{words[i % len(words)]}.wav",
                   cutter.cut(0.6 + 0.1 * (i % 5)), "WAV")
        for name in ("swuggy_inter", "swuggy_oov"):
            for i in range(2 * n):
                _write(tmp / name / "words" / f"{i}_{words[(i + 3) % len(words)]}.wav", cutter.cut(0.7), "WAV")
        for folder, seconds in (("sSC", 4.0), ("tSC", 3.0)):
            for i in range(n):
                positive, negative = _story_pair(cutter, seconds)
                _write(tmp / folder / f"{2 * i}_story{i}.wav", positive, "WAV")
                _write(tmp / folder / f"{2 * i + 1}_story{i}.wav", negative, "WAV")
        for i in range(n):
            positive, negative = _story_pair(cutter, 2.5)
            _write(tmp / "salmon" / "bg_alignment" / f"sample_{i}_0.wav", positive, "WAV")
            _write(tmp / "salmon" / "bg_alignment" / f"sample_{i}_1.wav", negative, "WAV")
        audio = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
        rows = [_story_pair(cutter, 2.0) for _ in range(n)]
        table = pa.table({"positive_audio": pa.array([{"bytes": _wav_bytes(p), "path": f"p{i}.wav"}
                                                      for i, (p, _) in enumerate(rows)], audio),
                          "negative_audio": pa.array([{"bytes": _wav_bytes(q), "path": f"n{i}.wav"}
                                                      for i, (_, q) in enumerate(rows)], audio)})
        (tmp / "salmon" / "speaker_consistency").mkdir(parents=True)
        pq.write_table(table, tmp / "salmon" / "speaker_consistency" / "test-00000-of-00001.parquet")
    return {"sblimp": n, "swuggy_inter": n, "swuggy_oov": n, "ssc": n, "tsc": n, "salmon/bg_alignment": n,
            "salmon/speaker_consistency": n}
