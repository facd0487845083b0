"""Synthesis jobs for `slam synth` and the synthesize flow: input resolution, sharding, fingerprints.

    stinystories: STORIES Parquet, or TinyStories text (hub-layout dir, .txt or text Parquet)
                  -> <out>/<split>/data-NNNNN.parquet (slprl/sTinyStories layout)
    spokenswag:   TRIPLES Parquet, or SWAG (hub-layout dir) -> <out>/<split>/preferences-NNNNN.parquet;
                  or a published slprl/SpokenSwag dir -> the same PREFERENCE_AUDIO shards, converted
                  (SWAG and the published set both pass SlamKit's repetition filter, `max_auto_bleu`: the
                  published pairs it drops are quarantined as 'repetitive' with their shard)
A job is {"kind", "args", "out_path", "fingerprint", "dataset", "split"}: one shard, one catalog record;
`SHARD_FUNCTIONS[kind](*args)` writes it; the runners (`shards.run_recorded_shards`, the synthesize task) are
handed this table rather than importing it. `run_synthesis` is the one entry both `slam synth` and the
synthesize flow use: plan, quarantine what planning skipped, run the jobs (their own way), summarise.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from data_catalog import Catalog
from slam_core.config import SynthConfig
from slam_core.corpora import text_hub
from slam_core.corpora.hub import list_parquet_files
from slam_core.fingerprint import code_version, fingerprint
from slam_core.paths import catalog_path, stage_dir
from slam_core.synth import spokenswag, stinystories
from slam_core.synth.shards import SYNTH_CODE_SCOPE, shard_fingerprint, split_into_shards

log = logging.getLogger(__name__)

KINDS = ("stinystories", "spokenswag")
# Shard functions by job kind: jobs name them by string, so a job is plain data (Prefect task parameters).
SHARD_FUNCTIONS = {
    "stinystories": stinystories.synthesize_stinystories_shard,
    "spokenswag": spokenswag.synthesize_spokenswag_shard,
    "convert-spokenswag": spokenswag.convert_published_spokenswag,
}


def _parquet_names(path: Path) -> list[str]:
    return pq.ParquetFile(path).schema_arrow.names


def _first_parquet(path: Path) -> Path | None:
    if path.is_file():
        return path if path.suffix == ".parquet" else None
    files = list_parquet_files(path) if path.is_dir() else []
    return files[0] if files else None


def input_kind(kind: str, input_path: str | Path) -> str:
    """What `input_path` holds: 'stories', 'tinystories', 'triples', 'swag' or 'published_spokenswag'."""
    path = Path(input_path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    first = _first_parquet(path)
    names = set(_parquet_names(first)) if first else set()
    if kind == "stinystories":
        return "stories" if {"story_id", "sentences"} <= names else "tinystories"
    if kind != "spokenswag":
        raise ValueError(f"unknown synthesis kind {kind!r} (known: {', '.join(KINDS)})")
    if {"pair_id", "prompt_text", "chosen_text", "rejected_text"} <= names and "prompt_audio" not in names:
        return "triples"
    if set(text_hub.SWAG_COLUMNS) <= names or path.suffix == ".csv" or (path.is_dir() and any(path.rglob("*.csv"))):
        return "swag"
    if first is not None:
        spokenswag.published_columns(sorted(names), str(first))  # raises naming the columns found
        return "published_spokenswag"
    raise ValueError(f"{path}: neither TRIPLES Parquet, SWAG files nor a published SpokenSwag copy; give the "
                     "official SWAG train.csv / val.csv, a folder of them (or the hub's Parquet), TRIPLES Parquet "
                     "or a published SpokenSwag folder")


def text_table(kind: str, input_path: str | Path, work_dir: str | Path, seed: int, limit: int | None = None,
               max_auto_bleu: float = 0.3) -> tuple[str, Path, list[tuple[str, str, str]]]:
    """(input kind, STORIES/TRIPLES Parquet to speak, text rows refused as (where, reason, detail)) - text sources
    are prepared into `work_dir` first (a SWAG CSV row that is not UTF-8 is refused with its line number)."""
    found = input_kind(kind, input_path)
    work_dir = Path(work_dir)
    if found == "tinystories":
        return found, Path(text_hub.prepare_tinystories(input_path, work_dir / "stories.parquet", limit)["path"]), []
    if found == "swag":
        out = text_hub.prepare_swag(input_path, work_dir / "triples.parquet", seed, max_auto_bleu, limit)
        return found, Path(out["path"]), [(q["path"], q["reason"], q["detail"]) for q in out["quarantined"]]
    return found, Path(input_path), []


def _shard_jobs(kind: str, rows: list[dict], file_prefix: str, cfg: SynthConfig, voices: list[str], seed: int,
                out_dir: str | Path, split: str) -> list[dict[str, Any]]:
    """One job per `cfg.shard_rows` rows, each with its output path and shard fingerprint."""
    jobs = []
    for k, shard in enumerate(split_into_shards(rows, cfg.shard_rows)):
        out_path = Path(out_dir) / split / f"{file_prefix}-{k:05d}.parquet"
        jobs.append({"kind": kind, "args": (shard, cfg, voices, seed, str(out_path)),
                     "out_path": str(out_path), "dataset": kind, "split": split,
                     "fingerprint": shard_fingerprint(kind, cfg, voices, seed, shard)})
    return jobs


def stinystories_jobs(stories: list[dict], cfg: SynthConfig, voices: list[str], seed: int, out_dir: str | Path,
                      split: str) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]]]:
    """One job per `cfg.shard_rows` utterances; also the stories skipped while planning."""
    utterances, bad = stinystories.plan_utterances(stories, cfg.max_utterance_chars)
    return _shard_jobs("stinystories", utterances, "data", cfg, voices, seed, out_dir, split), bad


def spokenswag_jobs(triples: list[dict], cfg: SynthConfig, voices: list[str], seed: int, out_dir: str | Path,
                    split: str) -> list[dict[str, Any]]:
    """One job per `cfg.shard_rows` SWAG triples."""
    return _shard_jobs("spokenswag", triples, "preferences", cfg, voices, seed, out_dir, split)


def published_spokenswag_jobs(root: str | Path, out_dir: str | Path,
                               max_auto_bleu: float = 0.3) -> list[dict[str, Any]]:
    """One conversion job per published Parquet shard (keyed by its name, size and the repetition threshold)."""
    root = Path(root)
    files = [root] if root.is_file() else list_parquet_files(root)
    jobs = []
    for f in files:
        out_path = Path(out_dir) / "train" / f"preferences-{f.stem}.parquet"
        fp = fingerprint("convert-spokenswag", {"file": f.name, "bytes": f.stat().st_size,
                                                "max_auto_bleu": max_auto_bleu}, code=code_version(SYNTH_CODE_SCOPE))
        jobs.append({"kind": "convert-spokenswag", "args": (str(f), str(out_path), max_auto_bleu),
                     "out_path": str(out_path), "dataset": "spokenswag", "split": "train", "fingerprint": fp})
    return jobs


def plan_jobs(kind: str, input_path: str | Path, cfg: SynthConfig, seed: int, out_dir: str | Path,
              split: str = "train", voices: list[str] | None = None, limit: int | None = None,
              max_auto_bleu: float = 0.3) -> tuple[list[dict[str, Any]], list[tuple[str, str, str]], dict[str, Any]]:
    """(jobs, items skipped while planning, info) for `slam synth <kind> --input ...`.

    `split` picks the rows of a STORIES/TRIPLES table ('all' keeps every split); `max_auto_bleu` is the
    repetition filter's threshold for SWAG and the published SpokenSwag (`corpus.swag_max_auto_bleu`)."""
    out_dir = Path(out_dir)
    found, table, refused = text_table(kind, input_path, out_dir / "text", seed, limit, max_auto_bleu)
    info: dict[str, Any] = {"input_kind": found, "text": str(table)}
    if found == "published_spokenswag":
        return published_spokenswag_jobs(table, out_dir, max_auto_bleu), [], info
    wanted = None if split == "all" else split
    if kind == "stinystories":
        voices = list(voices or cfg.voices)
        stories = stinystories.read_stories(table, wanted, limit)
        if not stories:
            raise ValueError(f"{table}: no stories of split {split!r}")
        jobs, bad = stinystories_jobs(stories, cfg, voices, seed, out_dir, split)
    else:
        voices = list(voices or spokenswag.spokenswag_voices(cfg))
        triples = spokenswag.read_triples(table, wanted, limit)
        if not triples:
            raise ValueError(f"{table}: no triples of split {split!r}")
        jobs, bad = spokenswag_jobs(triples, cfg, voices, seed, out_dir, split), refused
    info["voices"] = voices
    return jobs, bad, info


def default_voices(backend: str) -> list[str]:
    """The one voice of a single-speaker set (sTinyStories) when the backend is chosen on the command line."""
    return ["af_heart"] if backend == "kokoro" else ["en-us"]


def default_out_dir(data_root: str | Path, kind: str) -> Path:
    """Where `slam synth <kind>` and the synthesize flow write when no output dir is given: <data root>/synth/<kind>
    (so the paper preset's `corpus.stinystories_dir` / `corpus.spokenswag_dir` find the shards there)."""
    return stage_dir(Path(data_root), "synth", kind)


def summarise_shards(records: list[dict[str, Any]], planning_bad: list, wall_s: float) -> dict[str, Any]:
    """Shards, rows, hours, reuse, quarantine counts by reason and the speed of what was made this call."""
    quarantined = Counter(b[1] for b in planning_bad) + Counter(b[1] for r in records for b in r["bad"])
    audio_s = sum(r["audio_seconds"] for r in records)
    made_s = sum(r["audio_seconds"] for r in records if not r["reused"])
    return {"shards": [r["path"] for r in records], "rows": sum(r["rows"] for r in records),
            "audio_hours": round(audio_s / 3600, 4), "reused_shards": sum(r["reused"] for r in records),
            "quarantined": dict(quarantined), "wall_s": round(wall_s, 2),
            "x_realtime": round(made_s / wall_s, 1) if made_s else None}


def run_synthesis(kind: str, input_path: str | Path, cfg: SynthConfig, seed: int, data_root: str | Path,
                  run_jobs: Callable[[list[dict[str, Any]]], list[dict[str, Any]]], out_dir: str | Path | None = None,
                  split: str = "train", voices: list[str] | None = None, limit: int | None = None,
                  max_auto_bleu: float = 0.3) -> dict[str, Any]:
    """Plan the shards of `input_path`, quarantine what planning skipped (stage 'synth', fingerprint 'plan'),
    run the jobs with `run_jobs` (worker processes, or Prefect tasks) and summarise their records."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir) if out_dir else default_out_dir(data_root, kind)
    jobs, bad, info = plan_jobs(kind, input_path, cfg, seed, out_dir, split, voices=voices, limit=limit,
                                max_auto_bleu=max_auto_bleu)
    if bad:  # stories with nothing speakable: counted before any shard runs
        catalog = Catalog(catalog_path(Path(data_root)))
        for item, reason, detail in bad:
            catalog.record_quarantine("synth", kind, str(item), reason, detail, "plan")
    records = run_jobs(jobs)
    return {**info, "seed": seed, "backend": cfg.backend, "workers": cfg.workers, "out": str(out_dir),
            **summarise_shards(records, bad, time.perf_counter() - t0)}
