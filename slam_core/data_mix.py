"""The pre-training data mix of the paper (Table 4): which speech sets a config trains and validates on, how big
they are expected to be, and which Libri-Light files are held out.

Sizes before anything is prepared come from the paper's Table 8 (hours, tokens at 25 Hz after dedup):
Libri-Light 50K h / 3.5B, LibriSpeech 960 h / 67M, sTinyStories 30K h / 2.2B; SpokenSwag (Appendix C) 47k
pairs / ~4.5M tokens. The set names are the dataset names of the unit shards (units/<name>/<split>/), which the
packed loader mixes by `train.dataset_weights`.

Reads only: nothing here creates a directory or opens the catalog for writing (`slam plan` relies on it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from slam_core.config import SlamConfig
from slam_core.corpora.sources import SOURCES

# Table 8: hours and tokens of each pre-training set.
TABLE8 = {"librilight": (50_000.0, 3.5e9), "librispeech": (960.0, 67e6), "stinystories": (30_000.0, 2.2e9)}
# Appendix C: SpokenSwag after the auto-BLEU filter.
SPOKENSWAG_PAIRS, SPOKENSWAG_TOKENS = 47_000, 4.5e6
# Deduplicated units per second of speech on the smoke preset (README "Measured": 156,610 units in 1.889 h).
SMOKE_UNITS_PER_S = 23.0
# 16 kHz mono FLAC of synthetic speech: 29 MB on the drill config, estimated at 0.48 h (hours of a shard from
# its bytes; the preflight's disk estimate uses it too).
FLAC_BYTES_PER_S = 17_000
# Measured on the smoke preset (espeak en-us, 165 wpm): 400 stories -> 1.889 h of speech (2026-11-30).
SPEECH_S_PER_STORY = 17.0
VALIDATION_SPLIT = "validation"


@dataclass
class PlannedSet:
    """One dataset of the run: its unit-shard name, role (train | validation | preference), split and size."""

    name: str
    role: str
    split: str
    source: str
    hours: float
    tokens: float
    estimate: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def tokens_per_hour(name: str) -> float:
    hours, tokens = TABLE8[name]
    return tokens / hours


def configured_path(cfg: SlamConfig, value: str) -> Path:
    """A `corpus.*_dir` value: absolute as given, else relative to the data root (no directory is created)."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else cfg.data_root / path


def _librispeech_sets(cfg: SlamConfig) -> list[PlannedSet]:
    where = (f"local copy {cfg.corpus.librispeech_dir}" if cfg.corpus.librispeech_dir
             else "OpenSLR 12 (downloaded, checksums checked)")
    rate = tokens_per_hour("librispeech")
    out = []
    for role, parts in (("train", cfg.corpus.librispeech_train_parts), ("validation", cfg.corpus.librispeech_val_parts)):
        for part in parts:
            hours = SOURCES["librispeech"].part(part).approx_hours or 0.0
            out.append(PlannedSet("librispeech", role, part, where, hours, hours * rate,
                                  "part hours (OpenSLR 12) x Table 8 tokens/hour"))
    return out


def _librilight_sets(cfg: SlamConfig) -> list[PlannedSet]:
    where = (f"local copy {cfg.corpus.librilight_dir}" if cfg.corpus.librilight_dir
             else "dl.fbaipublicfiles.com/librilight (downloaded)")
    all_hours = sum(p.approx_hours or 0.0 for p in SOURCES["librilight"].parts)
    used = sum(SOURCES["librilight"].part(s).approx_hours or 0.0 for s in cfg.corpus.librilight_subsets)
    hours, tokens = (x * used / all_hours for x in TABLE8["librilight"])  # Table 8 is all three subsets
    frac = cfg.corpus.librilight_val_fraction
    basis = f"Table 8 x {used:,.0f}/{all_hours:,.0f} h of subsets ({', '.join(cfg.corpus.librilight_subsets)})"
    return [PlannedSet("librilight", "train", "train", where, hours * (1 - frac), tokens * (1 - frac), basis),
            PlannedSet("librilight", "validation", VALIDATION_SPLIT, where, hours * frac, tokens * frac,
                       f"{basis}, {frac:.0%} of files held out")]


def _stinystories_set(cfg: SlamConfig) -> PlannedSet:
    root = configured_path(cfg, cfg.corpus.stinystories_dir or "synth/stinystories/train")
    files = sorted(root.rglob("*.parquet")) if root.is_dir() else []
    if files:
        hours = sum(f.stat().st_size for f in files) / FLAC_BYTES_PER_S / 3600
        return PlannedSet("stinystories", "train", "train", f"{len(files)} shards in {root} (read in place)", hours,
                          hours * tokens_per_hour("stinystories"), "shard bytes / 17 kB per s x Table 8 tokens/hour")
    hours, tokens = TABLE8["stinystories"]
    return PlannedSet("stinystories", "train", "train", f"not there yet: `slam synth stinystories` writes {root}",
                      hours, tokens, "Table 8")


def planned_sets(cfg: SlamConfig) -> list[PlannedSet]:
    """Every dataset the run pre-trains, validates and preference-tunes on, with expected hours and tokens."""
    sets: list[PlannedSet] = []
    chosen = cfg.corpus.pretrain_sets
    if "librilight" in chosen:
        sets += _librilight_sets(cfg)
    if "librispeech" in chosen:
        sets += _librispeech_sets(cfg)
    if "stinystories" in chosen or (not chosen and cfg.corpus.stinystories_dir):
        sets.append(_stinystories_set(cfg))
    if not chosen and not cfg.corpus.stinystories_dir:
        hours = cfg.corpus.n_train_stories * SPEECH_S_PER_STORY / 3600
        source = f"{cfg.corpus.source} stories spoken by {cfg.synth.backend}, cut by VAD"
        sets.append(PlannedSet("stories", "train", "train", source, hours, hours * 3600 * SMOKE_UNITS_PER_S,
                               f"stories x {SPEECH_S_PER_STORY} s x 23 units/s (smoke measurement)"))
    if cfg.train.val_fraction > 0:
        f = cfg.train.val_fraction
        for s in [s for s in sets if s.role == "train"]:
            sets.append(PlannedSet(s.name, "validation", f"val ({f:.0%} of train documents by id hash)", s.source,
                                   s.hours * f, s.tokens * f, s.estimate))
            s.hours, s.tokens = s.hours * (1 - f), s.tokens * (1 - f)
    if cfg.dpo.enabled:
        if cfg.corpus.spokenswag_dir:
            sets.append(PlannedSet("spokenswag", "preference", "train", str(configured_path(cfg, cfg.corpus.spokenswag_dir)),
                                   0.0, SPOKENSWAG_TOKENS, f"Appendix C: {SPOKENSWAG_PAIRS:,} pairs"))
        else:
            hours = cfg.corpus.n_swag_train * SPEECH_S_PER_STORY / 3600
            sets.append(PlannedSet("preferences", "preference", "train", "corpus triples spoken", hours,
                                   hours * 3600 * SMOKE_UNITS_PER_S, f"triples x {SPEECH_S_PER_STORY} s x 23 units/s"))
    return sets


def pending_downloads(cfg: SlamConfig) -> list[dict[str, Any]]:
    """Archives the pre-training sets still need: {source, part, bytes}; none for a local copy or a part
    already extracted under raw/<source>/<part>."""
    wanted = []
    if "librispeech" in cfg.corpus.pretrain_sets and not cfg.corpus.librispeech_dir:
        wanted += [("librispeech", p) for p in [*cfg.corpus.librispeech_train_parts, *cfg.corpus.librispeech_val_parts]]
    if "librilight" in cfg.corpus.pretrain_sets and not cfg.corpus.librilight_dir:
        wanted += [("librilight", s) for s in cfg.corpus.librilight_subsets]
    return [{"source": src, "part": part, "bytes": SOURCES[src].part(part).approx_bytes or 0}
            for src, part in wanted if not (cfg.data_root / "raw" / src / part).is_dir()]


def librilight_validation_files(files: Sequence[Path], fraction: float, seed: int) -> set[Path]:
    """The held-out Libri-Light files: the round(fraction x n) files (at least one when fraction > 0 and there are
    two or more) with the smallest seeded hash of `<speaker>/<book>/<file>`, so the choice is random, seeded and
    independent of where the corpus lies or how it is listed."""
    files = list(files)
    if fraction <= 0 or len(files) < 2:
        return set()
    n_val = min(len(files) - 1, max(1, round(fraction * len(files))))

    def key(f: Path) -> bytes:
        return hashlib.sha256(f"{seed}:{f.parent.parent.name}/{f.parent.name}/{f.stem}".encode()).digest()

    return set(sorted(files, key=key)[:n_val])
