"""LibriSpeech (OpenSLR 12): `download_librispeech()` / `prepare_librispeech()`.

Every utterance is already a short segment (≤ ~35 s), so each becomes one SEGMENTS row covering the
whole file, with its transcript from `<speaker>-<chapter>.trans.txt`. No VAD is run.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from slam_core.audio.io import BadAudioError
from slam_core.corpora.fetch import fetch_extracted
from slam_core.corpora.local import probe_duration_s, shard, write_segments
from slam_core.corpora.sources import SOURCES

log = logging.getLogger(__name__)


def download_librispeech(raw_dir: str | Path, part: str, mirror: str | None = None, retries: int = 5) -> Path:
    """Download and verify `<part>.tar.gz`, extract it to raw_dir/<part>/ and return the part's audio root.

    Nothing is fetched when raw_dir/<part> already holds the extracted part (from here or a local copy).
    """
    return fetch_extracted("librispeech", part, raw_dir, find_part_dir, mirror, retries)


def find_part_dir(root: str | Path, part: str) -> Path:
    """The directory holding `<speaker>/<chapter>/` for `part` under the layouts people keep LibriSpeech in."""
    root = Path(root)
    candidates = (root / part / "LibriSpeech" / part, root / "LibriSpeech" / part, root / part,
                  root if root.name == part else None)
    for cand in candidates:
        if cand is not None and cand.is_dir() and any(cand.glob("*/*/*.trans.txt")):
            return cand
    raise FileNotFoundError(
        f"{root}: no LibriSpeech '{part}' found (expected {root}/LibriSpeech/{part}/<spk>/<chap>/*.trans.txt)")


def read_transcripts(chapter_dir: Path) -> dict[str, str]:
    """utterance id -> text from every *.trans.txt in a chapter directory."""
    texts: dict[str, str] = {}
    for trans in sorted(chapter_dir.glob("*.trans.txt")):
        for line in trans.read_text(encoding="utf-8").splitlines():
            utt, _, text = line.strip().partition(" ")
            if utt:
                texts[utt] = text.strip()
    return texts


def list_utterances(part_dir: str | Path) -> list[Path]:
    """Every utterance flac of a part, sorted (speaker, chapter, utterance)."""
    return sorted(Path(part_dir).glob("*/*/*.flac"))


def write_librispeech_shard(files: Sequence[str | Path], out_path: str | Path, split: str,
                            dataset: str = "librispeech") -> dict:
    """SEGMENTS rows (one per utterance, with text) for `files`; unreadable files are skipped and listed."""
    rows: list[dict] = []
    bad: list[tuple[str, str, str]] = []
    seconds = 0.0
    transcripts: dict[Path, dict[str, str]] = {}
    for f in map(Path, files):
        try:
            duration_s = probe_duration_s(f)
        except BadAudioError as err:
            log.warning("skipping %s", err)
            bad.append((str(f), err.reason, err.detail))
            continue
        texts = transcripts.setdefault(f.parent, read_transcripts(f.parent))
        speaker = f.stem.split("-")[0]
        if f.stem not in texts:
            log.warning("%s: no transcript line for %s", f.parent, f.stem)
        rows.append({"segment_id": f.stem, "dataset": dataset, "split": split, "source_path": str(f),
                     "start_s": 0.0, "end_s": round(duration_s, 4), "speaker": speaker, "text": texts.get(f.stem)})
        seconds += duration_s
    write_segments(rows, out_path)
    return {"path": str(out_path), "rows": len(rows), "audio_seconds": seconds, "bad": bad}


def prepare_librispeech(root: str | Path, out_dir: str | Path, parts: Sequence[str] | None = None,
                        shard_files: int = 2000) -> list[dict]:
    """Write segments/<part>/segments-NNNNN.parquet for each part found under `root` (no catalog)."""
    results = []
    for part in parts or SOURCES["librispeech"].default_parts:
        files = list_utterances(find_part_dir(root, part))
        for k, chunk in enumerate(shard(files, shard_files)):
            results.append(write_librispeech_shard(chunk, Path(out_dir) / part / f"segments-{k:05d}.parquet", part))
    return results
