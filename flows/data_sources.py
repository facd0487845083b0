"""prepare-source: fetch one real speech source (or use a local copy) and cut it into SEGMENTS shards.

    slam data prepare librispeech --subsets dev-clean train-clean-100 [--mirror URL] [--local-dir DIR] [--dry-run]

HTTP sources: one task per archive (download, resume, verify, extract), then one task per segment shard.
Hub sources: one snapshot task, then one task per audio Parquet shard. `local`: VAD over a folder of audio.
Eval sets (sblimp, swuggy_*, ssc, tsc, salmon_local): layout check of a local directory.
Every shard is recorded in the catalog; a rerun skips what is recorded.
"""

from __future__ import annotations

from dataclasses import replace

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from flows.common import gather_with_progress, rerun_with_configured_runner
from flows.entry import user_facing
from slam_core.config import ParallelConfig, RunConfig, SlamConfig
from slam_core.corpora.archive import ArchiveError
from slam_core.corpora.download import ChecksumMismatchError, DownloadError
from slam_core.corpora import hub as hub_lib
from slam_core.corpora.local import list_local_audio, shard
from slam_core.corpora.sources import Source, get_source, select_parts
from slam_core.fingerprint import code_version, fingerprint
from slam_core.paths import stage_dir
from tasks import corpora
from tasks.common import catalog_at

# Files per segment shard (one task each): LibriSpeech utterances are short; Libri-Light files are long.
SHARD_FILES = {"librispeech": 2000, "librilight": 200, "local": 64}
CODE_SCOPE = ("corpora", "audio", "schemas.py")


def source_fp(stage: str, **config: Any) -> str:
    """Fingerprint of a source stage (raw part, segment shard) from its keys and the corpora code version."""
    return fingerprint(stage, config, code=code_version(CODE_SCOPE))


def plan_source(src: Source, subsets: list[str] | None, mirror: str | None, local_dir: str | None,
                root: Path) -> list[dict[str, Any]]:
    """What `prepare_source` would fetch: one entry per part with URL (or hub id) and approximate size."""
    plan = []
    for part in select_parts(src, subsets) if src.kind != "eval" else []:
        entry: dict[str, Any] = {"source": src.name, "part": part.name, "approx_bytes": part.approx_bytes,
                                 "approx_hours": part.approx_hours}
        if local_dir:
            entry["from"] = f"local dir {local_dir} (nothing downloaded)"
        elif src.kind == "http":
            entry["from"] = src.url(part.name, mirror)
            entry["checksum"] = "sha256" if part.sha256 else ("md5" if part.md5 else "none published")
            entry["already_extracted"] = (root / "raw" / src.name / part.name).is_dir()
        elif src.kind == "hub":
            lock = hub_lib.read_lock(root / "raw" / src.name / "hub") or {}
            pinned = src.revision or lock.get("commit") or "main (resolved to a commit and recorded on first fetch)"
            entry["from"] = f"hf://datasets/{src.hub_id}@{pinned}"
        plan.append(entry)
    return plan


def archive_failure_reason(err: BaseException) -> str | None:
    """The quarantine reason of a part that cannot be used, or None for an error that is not about the input."""
    if isinstance(err, ChecksumMismatchError):
        return "checksum_mismatch"
    if isinstance(err, ArchiveError):
        return "unsafe_archive_member" if err.member else "corrupt_archive"
    if isinstance(err, DownloadError):
        return "download_failed"
    return None


def quarantine_part_failure(data_root: str, source: str, part: str, where: str, err: BaseException,
                            fingerprint: str) -> str | None:
    """Record a part whose download or archive is bad (stage 'raw') and return its reason; None (nothing
    recorded) when the error is not a bad-input one and should propagate."""
    reason = archive_failure_reason(err)
    if reason is not None:
        catalog_at(data_root).record_quarantine("raw", source, part, reason, f"{where}: {err}"[:2000], fingerprint)
    return reason


def _prepare_http(src: Source, subsets, mirror, local_dir, root: Path, data_root: str) -> dict[str, Any]:
    raw_dir = stage_dir(root, "raw", src.name)
    parts = select_parts(src, subsets)
    part_fps = {p.name: source_fp("raw", source=src.name, part=p.name, local_dir=local_dir) for p in parts}
    fetched = {p.name: corpora.fetch_archive.submit(src.name, p.name, str(raw_dir), mirror, local_dir,
                                                    part_fps[p.name], data_root) for p in parts}
    shards, failed = [], []
    for part, future in fetched.items():
        try:
            part_dir = Path(future.result()["part_dir"])
        except Exception as err:  # a bad archive is quarantined; the other parts go on
            reason = quarantine_part_failure(data_root, src.name, part, src.url(part, mirror), err, part_fps[part])
            if reason is None:
                raise
            print(f"{src.name}/{part}: quarantined ({reason}): {err}")
            failed.append([part, reason, str(err)])
            continue
        files = [str(f) for f in corpora.FILE_LISTERS[src.name](part_dir)]
        seg_dir = stage_dir(root, "segments", src.name, part)
        for k, chunk in enumerate(shard(files, SHARD_FILES[src.name])):
            shard_fp = source_fp("segments", source=src.name, part=part, files=chunk)
            shards.append(corpora.segment_shard.submit(src.name, chunk, str(seg_dir / f"segments-{k:05d}.parquet"),
                                                       part, {}, shard_fp, data_root))
    if failed and len(failed) == len(fetched):
        raise RuntimeError(f"{src.name}: every part failed: {failed}")
    summary = _summarise(gather_with_progress(shards, f"{src.name} segments"))
    summary["quarantined"] += failed
    return summary


def _prepare_hub(src: Source, subsets, local_dir, root: Path, data_root: str) -> dict[str, Any]:
    raw_dir = stage_dir(root, "raw", src.name)
    folders = subsets or (list(src.default_parts) if src.extra.get("subsets_are_folders") else None)
    allow = [f"{s}/*" for s in folders] if folders and src.extra.get("subsets_are_folders") else None
    snapshot = Path(corpora.fetch_hub_dataset(src.hub_id, src.revision, str(raw_dir / "hub"), local_dir, allow))
    if "audio_column" not in src.extra:  # preference / eval sets: used as downloaded
        return {"path": str(snapshot), "parquet_files": len(hub_lib.list_parquet_files(snapshot))}
    split = (subsets or list(src.default_parts) or ["train"])[0]
    seg_dir = stage_dir(root, "segments", src.name, split)
    futures = []
    for pq_file in hub_lib.list_parquet_files(snapshot):
        shard_fp = source_fp("segments", source=src.name, file=pq_file.name, size=pq_file.stat().st_size)
        futures.append(corpora.hub_audio_shard.submit(
            src.name, str(pq_file), str(seg_dir / f"{pq_file.stem}.parquet"), split, dict(src.extra), shard_fp,
            data_root))
    return _summarise(gather_with_progress(futures, f"{src.name} audio shards"))


def _prepare_local(local_dir: str | None, root: Path, data_root: str) -> dict[str, Any]:
    if not local_dir:
        raise ValueError("source 'local' needs --local-dir DIR (a folder of wav/flac/mp3/ogg files)")
    files = [str(f) for f in list_local_audio(local_dir)]
    seg_dir = stage_dir(root, "segments", "local", "train")
    futures = [corpora.segment_shard.submit("local", chunk, str(seg_dir / f"segments-{k:05d}.parquet"), "train", {},
                                            source_fp("segments", source="local", files=chunk), data_root)
               for k, chunk in enumerate(shard(files, SHARD_FILES["local"]))]
    return _summarise(gather_with_progress(futures, "local segments"))


def _summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"shards": [r["path"] for r in results], "segments": sum(r["rows"] for r in results),
            "audio_hours": round(sum(r["audio_seconds"] for r in results) / 3600, 4),
            "quarantined": [b for r in results for b in r["bad"]], "reused": sum(r["reused"] for r in results)}


@flow(name="prepare-source", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
@user_facing
def prepare_source(source: str, subsets: list[str] | None = None, mirror: str | None = None,
                   local_dir: str | None = None, dry_run: bool = False, data_root: str | None = None,
                   revision: str | None = None, task_runner: str = "threads", dask_address: str | None = None,
                   max_workers: int = 2) -> dict[str, Any]:
    """Fetch (or find locally) `source`, extract it under raw/<source>/ and write segments/<source>/<split>/.

    task_runner 'dask' runs the archive and shard tasks on the Dask scheduler at `dask_address` (or on a local
    cluster of `max_workers` processes); 'threads' on a pool of `max_workers` threads.
    """
    parallel = ParallelConfig(task_runner=task_runner, dask_address=dask_address, max_workers=max_workers)
    if (on_runner := rerun_with_configured_runner(prepare_source, parallel)) is not None:
        return on_runner(source, subsets, mirror, local_dir, dry_run, data_root, revision, task_runner,
                         dask_address, max_workers)
    src = get_source(source)
    root = SlamConfig(run=RunConfig(data_root=data_root)).data_root
    if dry_run:
        return {"source": source, "dry_run": True, "plan": plan_source(src, subsets, mirror, local_dir, root)}
    root_str = str(root)
    if src.kind == "http":
        return _prepare_http(src, subsets, mirror, local_dir, root, root_str)
    if src.kind == "hub":
        return _prepare_hub(replace(src, revision=revision) if revision else src, subsets, local_dir, root, root_str)
    if src.kind == "local":
        return _prepare_local(local_dir, root, root_str)
    if not local_dir:
        raise ValueError(f"eval set '{source}' is read from a local directory: pass --local-dir DIR")
    return corpora.check_eval_set(local_dir, source.replace("_local", ""))
