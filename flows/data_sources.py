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

from slam_core.config import RunConfig, SlamConfig
from slam_core.corpora import hub as hub_lib
from slam_core.corpora.local import list_local_audio, shard
from slam_core.corpora.sources import Source, get_source, select_parts
from slam_core.fingerprint import code_version, fingerprint
from slam_core.paths import stage_dir
from tasks import corpora

# Files per segment shard (one task each): LibriSpeech utterances are short; Libri-Light files are long.
SHARD_FILES = {"librispeech": 2000, "librilight": 200, "local": 64}
CODE_SCOPE = ("corpora", "audio", "schemas.py")


def _fp(stage: str, **config: Any) -> str:
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


def _prepare_http(src: Source, subsets, mirror, local_dir, root: Path, data_root: str) -> dict[str, Any]:
    raw_dir = stage_dir(root, "raw", src.name)
    parts = select_parts(src, subsets)
    fetched = {p.name: corpora.fetch_archive.submit(
        src.name, p.name, str(raw_dir), mirror, local_dir,
        _fp("raw", source=src.name, part=p.name, local_dir=local_dir), data_root) for p in parts}
    shards = []
    for part, future in fetched.items():
        part_dir = Path(future.result()["part_dir"])
        files = [str(f) for f in corpora.FILE_LISTERS[src.name](part_dir)]
        seg_dir = stage_dir(root, "segments", src.name, part)
        for k, chunk in enumerate(shard(files, SHARD_FILES[src.name])):
            shard_fp = _fp("segments", source=src.name, part=part, files=chunk)
            shards.append(corpora.segment_shard.submit(src.name, chunk, str(seg_dir / f"segments-{k:05d}.parquet"),
                                                       part, {}, shard_fp, data_root))
    return _summarise([s.result() for s in shards])


def _prepare_hub(src: Source, subsets, local_dir, root: Path, data_root: str) -> dict[str, Any]:
    raw_dir = stage_dir(root, "raw", src.name)
    allow = [f"{s}/*" for s in subsets] if subsets and src.name == "salmon" else None
    snapshot = Path(corpora.fetch_hub_dataset(src.hub_id, src.revision, str(raw_dir / "hub"), local_dir, allow))
    if "audio_column" not in src.extra:  # preference / eval sets: used as downloaded
        return {"path": str(snapshot), "parquet_files": len(hub_lib.list_parquet_files(snapshot))}
    split = (subsets or ["train"])[0]
    seg_dir = stage_dir(root, "segments", src.name, split)
    futures = []
    for pq_file in hub_lib.list_parquet_files(snapshot):
        shard_fp = _fp("segments", source=src.name, file=pq_file.name, size=pq_file.stat().st_size)
        futures.append(corpora.hub_audio_shard.submit(
            src.name, str(pq_file), str(raw_dir / "audio" / pq_file.stem), str(seg_dir / f"{pq_file.stem}.parquet"),
            split, dict(src.extra), shard_fp, data_root))
    return _summarise([f.result() for f in futures])


def _prepare_local(local_dir: str | None, root: Path, data_root: str) -> dict[str, Any]:
    if not local_dir:
        raise ValueError("source 'local' needs --local-dir DIR (a folder of wav/flac/mp3/ogg files)")
    files = [str(f) for f in list_local_audio(local_dir)]
    seg_dir = stage_dir(root, "segments", "local", "train")
    futures = [corpora.segment_shard.submit("local", chunk, str(seg_dir / f"segments-{k:05d}.parquet"), "train", {},
                                            _fp("segments", source="local", files=chunk), data_root)
               for k, chunk in enumerate(shard(files, SHARD_FILES["local"]))]
    return _summarise([f.result() for f in futures])


def _summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"shards": [r["path"] for r in results], "segments": sum(r["rows"] for r in results),
            "audio_hours": round(sum(r["audio_seconds"] for r in results) / 3600, 4),
            "quarantined": [b for r in results for b in r["bad"]], "reused": sum(r["reused"] for r in results)}


@flow(name="prepare-source", task_runner=ThreadPoolTaskRunner(max_workers=2), log_prints=True)
def prepare_source(source: str, subsets: list[str] | None = None, mirror: str | None = None,
                   local_dir: str | None = None, dry_run: bool = False, data_root: str | None = None,
                   revision: str | None = None) -> dict[str, Any]:
    """Fetch (or find locally) `source`, extract it under raw/<source>/ and write segments/<source>/<split>/."""
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
