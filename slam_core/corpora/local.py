"""Local audio folders -> SEGMENTS shards, plus the shard helpers every corpus module shares.

`prepare_local(root)`: any folder of wav/flac/mp3/ogg (recursive), cut by silero-vad through
`slam_core.audio.vad.segment_audio_files`; a same-stem `.txt` beside a file is its transcript, kept on the
segment when the file yields exactly one segment (a transcript cannot be split across VAD cuts).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from slam_core.atomic import atomic_path
from slam_core.audio.io import list_audio_files, probe_audio
from slam_core.audio.vad import segment_audio_files
from slam_core.config import VadConfig
from slam_core.schemas import SEGMENTS

log = logging.getLogger(__name__)


def probe_duration_s(path: str | Path) -> float:
    """Duration from the file header (no decoding); BadAudioError('unreadable'|'empty') when unusable."""
    info = probe_audio(path)
    return info.frames / info.samplerate


def write_segments(rows: list[dict], out_path: str | Path) -> Path:
    """Write SEGMENTS rows atomically (deterministic bytes for the same rows)."""
    with atomic_path(out_path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows, schema=SEGMENTS), tmp, compression="zstd")
    return Path(out_path)


def shard(items: Sequence, size: int) -> list[list]:
    """Consecutive chunks of at most `size` items (stable order, so shard k is the same on every run)."""
    if size < 1:
        raise ValueError("shard size must be >= 1")
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def list_local_audio(root: str | Path) -> list[Path]:
    """Audio files under `root`, recursively, sorted; a clear error if the folder is missing or has none."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: local audio folder not found")
    files = list_audio_files(root)
    if not files:
        raise FileNotFoundError(f"{root}: no .wav/.flac/.mp3/.ogg files found (searched recursively)")
    return files


def _attach_transcripts(out_path: Path) -> None:
    table = pq.read_table(out_path)
    rows = table.to_pylist()
    per_file: dict[str, int] = {}
    for row in rows:
        per_file[row["source_path"]] = per_file.get(row["source_path"], 0) + 1
    changed = False
    for row in rows:
        txt = Path(row["source_path"]).with_suffix(".txt")
        if per_file[row["source_path"]] == 1 and txt.is_file():
            row["text"] = " ".join(txt.read_text(encoding="utf-8", errors="replace").split())
            changed = True
    if changed:
        write_segments(rows, out_path)


def prepare_local_shard(files: Sequence[str | Path], cfg: VadConfig, out_path: str | Path, dataset: str = "local",
                        split: str = "train") -> dict:
    """VAD-segment one shard of local files into `out_path`; returns {path, rows, audio_seconds, bad}."""
    out_path = Path(out_path)
    result = segment_audio_files([Path(f) for f in files], cfg, out_path, dataset, split)
    _attach_transcripts(out_path)
    return result


def prepare_local(root: str | Path, out_dir: str | Path, cfg: VadConfig | None = None, dataset: str = "local",
                  split: str = "train", shard_files: int = 64) -> list[dict]:
    """Segment every audio file under `root` into out_dir/segments-NNNNN.parquet (no catalog; see tasks/)."""
    cfg = cfg or VadConfig()
    shards = shard(list_local_audio(root), shard_files)
    return [prepare_local_shard(files, cfg, Path(out_dir) / f"segments-{k:05d}.parquet", dataset, split)
            for k, files in enumerate(shards)]
