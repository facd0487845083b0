"""Libri-Light (unlabelled LibriVox audiobooks): `download_librilight()` / `prepare_librilight()`.

Each `<subset>/<speaker>/<book>/<file>.flac` ships with `<file>.json` whose "voice_activity" lists
[start_s, end_s] speech spans. Segments follow the official cut rule of libri-light's
`data_preparation/cut_by_vad.py`: walk the spans in order, accumulating speech time; when adding the next
span would exceed `target_len_s` (and something is accumulated), close the segment; a single span longer
than the target forms its own segment. Libri-Light stitches the spans' audio; slam keeps the source file and
records the segment as [first span start, last span end] (the short pauses between spans stay in).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from slam_core.audio.io import BadAudioError
from slam_core.corpora.fetch import fetch_extracted
from slam_core.corpora.local import probe_duration_s, shard, write_segments
from slam_core.corpora.sources import SOURCES

log = logging.getLogger(__name__)
# cut_by_vad.py: cut(target_len_sec=30) (its CLI default is 60); 30 s matches slam's VAD max_segment_s.
DEFAULT_TARGET_LEN_S = 30.0


def download_librilight(raw_dir: str | Path, subset: str, mirror: str | None = None, retries: int = 5) -> Path:
    """Download `<subset>.tar` (unverified: no published checksum), extract to raw_dir/<subset>/, return the
    subset root. Nothing is fetched when the subset is already there."""
    return fetch_extracted("librilight", subset, raw_dir, find_subset_dir, mirror, retries)


def find_subset_dir(root: str | Path, subset: str) -> Path:
    """The directory holding `<speaker>/<book>/*.flac` for `subset` (raw_dir/<subset>/<subset> or root/<subset>)."""
    root = Path(root)
    for cand in (root / subset / subset, root / subset, root if root.name == subset else None):
        if cand is not None and cand.is_dir() and any(cand.glob("*/*/*.json")):
            return cand
    raise FileNotFoundError(f"{root}: no Libri-Light '{subset}' found (expected {root}/{subset}/<spk>/<book>/*.json)")


def list_recordings(subset_dir: str | Path) -> list[Path]:
    """Every flac of a subset that has a VAD json beside it, sorted."""
    return sorted(f for f in Path(subset_dir).glob("*/*/*.flac") if f.with_suffix(".json").is_file())


def merge_voice_activity(spans: Sequence[Sequence[float]], target_len_s: float = DEFAULT_TARGET_LEN_S
                         ) -> list[tuple[float, float]]:
    """Group consecutive VAD spans into segments of at most `target_len_s` of speech (cut_by_vad.py rule)."""
    segments: list[tuple[float, float]] = []
    group_start: float | None = None
    group_end = 0.0
    speech_s = 0.0
    for start_s, end_s in spans:
        if end_s <= start_s:
            continue
        if speech_s + (end_s - start_s) > target_len_s and speech_s > 0:
            segments.append((group_start, group_end))
            group_start, speech_s = None, 0.0
        group_start = start_s if group_start is None else group_start
        group_end = end_s
        speech_s += end_s - start_s
    if group_start is not None:
        segments.append((group_start, group_end))
    return segments


def read_voice_activity(json_path: Path) -> list[list[float]]:
    """The "voice_activity" spans of one Libri-Light json; BadAudioError('bad_vad_json') when unusable."""
    try:
        spans = json.loads(json_path.read_text(encoding="utf-8"))["voice_activity"]
        return [[float(s), float(e)] for s, e in spans]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BadAudioError(json_path, "bad_vad_json", f"{type(err).__name__}: {err}") from None


def _segment_rows(flac: Path, split: str, dataset: str, target_len_s: float) -> tuple[list[dict], float]:
    duration_s = probe_duration_s(flac)
    spans = read_voice_activity(flac.with_suffix(".json"))
    speaker, book = flac.parent.parent.name, flac.parent.name
    rows = [{"segment_id": f"{speaker}-{book}-{flac.stem}-{k:04d}", "dataset": dataset, "split": split,
             "source_path": str(flac), "start_s": round(s, 4), "end_s": round(min(e, duration_s), 4),
             "speaker": speaker, "text": None}
            for k, (s, e) in enumerate(merge_voice_activity(spans, target_len_s)) if s < duration_s]
    return rows, duration_s


def write_librilight_shard(files: Sequence[str | Path], out_path: str | Path, split: str,
                           target_len_s: float = DEFAULT_TARGET_LEN_S, dataset: str = "librilight") -> dict:
    """SEGMENTS rows for `files` from their VAD json; bad audio/json files are skipped and listed."""
    rows: list[dict] = []
    bad: list[tuple[str, str, str]] = []
    seconds = 0.0
    for flac in map(Path, files):
        try:
            file_rows, duration_s = _segment_rows(flac, split, dataset, target_len_s)
        except BadAudioError as err:
            log.warning("skipping %s", err)
            bad.append((str(flac), err.reason, err.detail))
            continue
        if not file_rows:
            bad.append((str(flac), "no_speech", "voice_activity is empty"))
        rows.extend(file_rows)
        seconds += duration_s
    write_segments(rows, out_path)
    return {"path": str(out_path), "rows": len(rows), "audio_seconds": seconds, "bad": bad}


def prepare_librilight(root: str | Path, out_dir: str | Path, subsets: Sequence[str] | None = None,
                       target_len_s: float = DEFAULT_TARGET_LEN_S, shard_files: int = 200) -> list[dict]:
    """Write segments/<subset>/segments-NNNNN.parquet for each subset found under `root` (no catalog)."""
    results = []
    for subset in subsets or SOURCES["librilight"].default_parts:
        files = list_recordings(find_subset_dir(root, subset))
        for k, chunk in enumerate(shard(files, shard_files)):
            out = Path(out_dir) / subset / f"segments-{k:05d}.parquet"
            results.append(write_librilight_shard(chunk, out, subset, target_len_s))
    return results
