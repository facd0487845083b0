"""Hugging Face Hub datasets (sTinyStories, SpokenSwag, SALMon): a snapshot at a pinned commit, or a local
directory already in hub layout; then audio Parquet shards -> SEGMENTS rows that point into the shards (the
audio is read in place, never copied).

Pinning works like a lock file: a commit hash is used as given; a branch or tag is resolved to its commit by
the first fetch and recorded beside the files, and every later fetch into that directory reads that commit.

Offline (or a missing repo/revision) gives one HubUnavailableError naming the repo, the revision and the
`--local-dir` option, never huggingface_hub's traceback.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pyarrow.parquet as pq

from slam_core.atomic import write_text_atomic
from slam_core.audio.io import BadAudioError, cell_audio_bytes, parquet_audio_ref, probe_audio_bytes_s
from slam_core.corpora.local import write_segments

log = logging.getLogger(__name__)


class HubUnavailableError(RuntimeError):
    """A hub dataset could not be fetched; the message says how to provide it locally."""


def list_parquet_files(root: str | Path, subsets: Sequence[str] | None = None) -> list[Path]:
    """Parquet shards of a hub-layout dir (`data/*.parquet`, `<subset>/*.parquet`, ...), sorted."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*.parquet") if ".cache" not in p.parts)
    if subsets:
        files = [p for p in files if any(s in p.relative_to(root).parts for s in subsets)]
    return files


LOCK_FILENAME = "slam-hub-lock.json"
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def _unavailable(repo_id: str, revision: str | None, err: BaseException) -> HubUnavailableError:
    return HubUnavailableError(
        f"cannot fetch dataset '{repo_id}' (revision {revision or 'main'}) from the Hugging Face Hub "
        f"({type(err).__name__}). Download it where the Hub is reachable (`hf download {repo_id} "
        f"--repo-type dataset --local-dir DIR`) and pass --local-dir DIR.")


def read_lock(dest_dir: str | Path) -> dict | None:
    path = Path(dest_dir) / LOCK_FILENAME
    return json.loads(path.read_text()) if path.is_file() else None


def locked_revision(repo_id: str, revision: str | None, dest_dir: str | Path) -> str:
    """The commit to fetch, lock-file style: a full commit hash is used as given; otherwise the commit that
    the first fetch of (repo_id, revision) recorded in `dest_dir`; otherwise the branch/tag is resolved now
    (one API call) and the caller records it, so every later run reads the very same files."""
    if revision is not None and _COMMIT_RE.match(revision):
        return revision
    lock = read_lock(dest_dir)
    if lock and lock.get("repo_id") == repo_id and lock.get("requested") == revision:
        return lock["commit"]
    from huggingface_hub import HfApi

    commit = HfApi().dataset_info(repo_id, revision=revision).sha
    log.warning("%s: revision %s is not a commit; pinned to %s in %s (pass a commit hash to choose one)",
                repo_id, revision or "main", commit, Path(dest_dir) / LOCK_FILENAME)
    return commit


def fetch_hub_dataset(repo_id: str, dest_dir: str | Path, revision: str | None = None,
                      local_dir: str | Path | None = None, allow_patterns: list[str] | None = None) -> Path:
    """A directory holding the dataset's files: `local_dir` if given (checked, nothing downloaded), else a
    `snapshot_download` of `repo_id` at a pinned commit (see `locked_revision`) into `dest_dir`, which re-uses
    the files already there. The commit is recorded in `dest_dir/slam-hub-lock.json` after a complete fetch."""
    if local_dir is not None:
        local = Path(local_dir)
        if not local.is_dir() or not list_parquet_files(local):
            raise FileNotFoundError(f"{local}: not a hub-layout copy of {repo_id} (no *.parquet files found)")
        return local
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        commit = locked_revision(repo_id, revision, dest_dir)
        path = snapshot_download(repo_id, repo_type="dataset", revision=commit, local_dir=str(dest_dir),
                                 allow_patterns=allow_patterns)
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError, OSError) as err:
        raise _unavailable(repo_id, revision, err) from None
    write_text_atomic(Path(dest_dir) / LOCK_FILENAME, json.dumps(
        {"repo_id": repo_id, "requested": revision, "commit": commit}, indent=1) + "\n")
    return Path(path)


def write_hub_audio_shard(parquet_path: str | Path, out_path: str | Path, dataset: str, split: str,
                          audio_column: str = "audio", text_column: str | None = "text") -> dict:
    """One SEGMENTS row per utterance of an audio Parquet shard (whole utterance, text when the column exists),
    pointing at the Parquet cell itself (`<file>#<column>:<row>`, read in place by `read_segment_audio`): the
    audio is not written again. Durations come from each cell's header; rows whose audio is missing or unreadable
    are skipped and listed."""
    parquet_path = Path(parquet_path).resolve()
    pf = pq.ParquetFile(parquet_path)
    names = pf.schema_arrow.names
    if audio_column not in names:
        raise ValueError(f"{parquet_path}: no audio column '{audio_column}' (columns: {', '.join(names)})")
    columns = [audio_column] + ([text_column] if text_column and text_column in names else [])
    rows: list[dict] = []
    bad: list[tuple[str, str, str]] = []
    seconds = 0.0
    index = 0
    for batch in pf.iter_batches(batch_size=256, columns=columns):
        for record in batch.to_pylist():
            ref = parquet_audio_ref(parquet_path, audio_column, index)
            seg_id = f"{parquet_path.stem}-{index:06d}"
            index += 1
            try:
                duration_s = probe_audio_bytes_s(cell_audio_bytes(record[audio_column]) or b"", ref)
            except BadAudioError as err:
                bad.append((ref, err.reason, err.detail))
                continue
            rows.append({"segment_id": seg_id, "dataset": dataset, "split": split, "source_path": ref,
                         "start_s": 0.0, "end_s": round(duration_s, 4), "speaker": dataset,
                         "text": record.get(text_column) if text_column else None})
            seconds += duration_s
    write_segments(rows, out_path)
    return {"path": str(out_path), "rows": len(rows), "audio_seconds": seconds, "bad": bad}
