"""Corpus tasks: one per archive (download + verify + extract) and one per segment shard, each recorded in the
catalog. Network tasks retry with back-off; a retry resumes the `.part` file where the last attempt stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task

from data_catalog import produce_or_reuse
from slam_core.atomic import DiskFullError
from slam_core.config import VadConfig
from slam_core.corpora.archive import ArchiveError
from slam_core.corpora.download import ChecksumMismatchError
from slam_core.corpora.hub import HubUnavailableError
from slam_core.corpora import eval_sets, hub, librilight, librispeech, local
from tasks.common import CACHED, catalog_at

# Not worth a retry: a wrong checksum (download_file already fetched it afresh once), a corrupt or unsafe
# archive, a full disk, an unreachable hub in offline mode or a missing local copy fail the same way again.
PERMANENT_ERRORS = (ChecksumMismatchError, ArchiveError, DiskFullError, HubUnavailableError, FileNotFoundError)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect retry condition: retry network trouble, not the permanent errors above."""
    try:
        state.result()
    except PERMANENT_ERRORS:
        return False
    except Exception:  # noqa: BLE001 - anything else (timeouts, dropped connections) may pass on a retry
        return True
    return True


NETWORK = {"retries": 3, "retry_delay_seconds": [10, 60, 300], "tags": ["network"],
           "retry_condition_fn": retry_if_transient}
DOWNLOADERS = {"librispeech": librispeech.download_librispeech, "librilight": librilight.download_librilight}
PART_FINDERS = {"librispeech": librispeech.find_part_dir, "librilight": librilight.find_subset_dir}
FILE_LISTERS = {"librispeech": librispeech.list_utterances, "librilight": librilight.list_recordings}


@task(name="fetch-archive", **NETWORK)
def fetch_archive(source: str, part: str, raw_dir: str, mirror: str | None, local_dir: str | None,
                  fingerprint: str, data_root: str) -> dict[str, Any]:
    """Download, verify and extract one archive (or find it in `local_dir`); record raw/<source>/<part>."""
    found: dict[str, Path] = {}

    def produce() -> dict[str, Any]:
        return {"rows": len(FILE_LISTERS[source](found["dir"]))}

    if local_dir:
        found["dir"] = PART_FINDERS[source](local_dir, part)
    else:
        found["dir"] = DOWNLOADERS[source](raw_dir, part, mirror)
    rec = produce_or_reuse(catalog_at(data_root), stage="raw", dataset=source, split=part, out_path=found["dir"],
                           fingerprint=fingerprint, produce=produce)
    return {**rec, "part_dir": str(found["dir"])}


@task(name="segment-corpus-shard", retries=1, **CACHED)
def segment_shard(source: str, files: list[str], out_path: str, split: str, options: dict[str, Any],
                  fingerprint: str, data_root: str) -> dict[str, Any]:
    """Write one SEGMENTS shard for `files` of `source`; bad files are quarantined in the catalog."""
    out = Path(out_path)
    producers = {
        "librispeech": lambda: librispeech.write_librispeech_shard(files, out, split),
        "librilight": lambda: librilight.write_librilight_shard(
            files, out, split, options.get("target_len_s", librilight.DEFAULT_TARGET_LEN_S)),
        "local": lambda: local.prepare_local_shard(files, VadConfig(**options.get("vad", {})), out, "local", split),
    }
    return produce_or_reuse(catalog_at(data_root), stage="segments", dataset=source, split=split, out_path=out,
                            fingerprint=fingerprint, produce=producers[source])


@task(name="fetch-hub-dataset", **NETWORK)
def fetch_hub_dataset(repo_id: str, revision: str | None, dest_dir: str, local_dir: str | None,
                      allow_patterns: list[str] | None) -> str:
    """Snapshot a hub dataset (or check a local copy in hub layout); returns its directory."""
    return str(hub.fetch_hub_dataset(repo_id, dest_dir, revision, local_dir, allow_patterns))


@task(name="hub-audio-shard", retries=1, **CACHED)
def hub_audio_shard(source: str, parquet_path: str, out_path: str, split: str, options: dict[str, Any],
                    fingerprint: str, data_root: str) -> dict[str, Any]:
    """A SEGMENTS shard of one hub audio Parquet shard whose rows point into it (the audio stays where it is)."""
    return produce_or_reuse(
        catalog_at(data_root), stage="segments", dataset=source, split=split, out_path=out_path,
        fingerprint=fingerprint,
        produce=lambda: hub.write_hub_audio_shard(parquet_path, out_path, source, split,
                                                  options.get("audio_column", "audio"), options.get("text_column")))


@task(name="check-eval-set")
def check_eval_set(reference_dir: str, metric: str) -> dict[str, Any]:
    """Validate a published evaluation set in a local directory (pairing and sample rate)."""
    return eval_sets.check_eval_set(reference_dir, metric)
