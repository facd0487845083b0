"""The paper's pre-training sets in prepare-data (Table 4): each becomes SEGMENTS shards, one task per archive and
one per shard, grouped by (dataset, split) with a role (train | validation).

- LibriSpeech: every part of corpus.librispeech_train_parts and _val_parts is fetched (or found in
  corpus.librispeech_dir) and cut one utterance per segment. Paths and fingerprints are those of
  `slam data prepare librispeech`, so segments it made are reused.
- Libri-Light: the subsets are fetched (or found in corpus.librilight_dir); corpus.librilight_val_fraction of
  the files (seeded, `data_mix.librilight_validation_files`) are held out before cutting by the shipped voice
  activity, so the shards are segments/librilight/{train,validation}/.
- sTinyStories: its audio Parquet shards, listed in place (`flows.prepare_data.submit_stinystories_segments`).

A part whose download or archive is bad is quarantined and the others go on, as in `slam data prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.data_sources import SHARD_FILES, quarantine_part_failure, source_fp
from slam_core.config import SlamConfig
from slam_core.corpora.local import shard
from slam_core.data_mix import VALIDATION_SPLIT, librilight_validation_files
from slam_core.paths import stage_dir
from tasks import corpora


@dataclass
class SegmentGroup:
    """The segment shards of one (dataset, split): futures and fingerprints, then the shard paths."""

    dataset: str
    split: str
    role: str
    shards: list[tuple[Any, str]]
    paths: list[str] = field(default_factory=list)

    @property
    def fingerprints(self) -> list[str]:
        return [k for _, k in self.shards]

    @property
    def name(self) -> str:
        """The set's name in metrics (`val_loss/<name>`): dataset/split."""
        return f"{self.dataset}/{self.split}"


def fetch_parts(source: str, parts: list[str], local_dir: str | None, root: str) -> dict[str, Path]:
    """part -> extracted directory, one fetch task per part; a bad part is quarantined and left out (every part
    failing is an error)."""
    raw_dir = stage_dir(Path(root), "raw", source)
    fps = {p: source_fp("raw", source=source, part=p, local_dir=local_dir) for p in parts}
    futures = {p: corpora.fetch_archive.submit(source, p, str(raw_dir), None, local_dir, fps[p], root) for p in parts}
    found: dict[str, Path] = {}
    for part, future in futures.items():
        try:
            found[part] = Path(future.result()["part_dir"])
        except Exception as err:  # a bad archive is quarantined; the other parts go on
            reason = quarantine_part_failure(root, source, part, f"{source}/{part}", err, fps[part])
            if reason is None:
                raise
            print(f"{source}/{part}: quarantined ({reason}): {err}")
    if parts and not found:
        raise RuntimeError(f"{source}: every part failed ({', '.join(parts)}); see `slam catalog summary`")
    return found


def _submit_segment_shards(source: str, files: list[str], seg_dir: Path, split: str, root: str,
                           key: dict[str, str]) -> list[tuple[Any, str]]:
    """(future, fingerprint) per shard of SHARD_FILES[source] files; `key` completes the fingerprint."""
    out = []
    for k, chunk in enumerate(shard(files, SHARD_FILES[source])):
        shard_fp = source_fp("segments", source=source, **key, files=chunk)
        out.append((corpora.segment_shard.submit(source, chunk, str(seg_dir / f"segments-{k:05d}.parquet"), split, {},
                                                 shard_fp, root), shard_fp))
    return out


def librispeech_groups(cfg: SlamConfig, root: str) -> list[SegmentGroup]:
    train, val = cfg.corpus.librispeech_train_parts, cfg.corpus.librispeech_val_parts
    found = fetch_parts("librispeech", list(dict.fromkeys([*train, *val])), cfg.corpus.librispeech_dir, root)
    groups = []
    for part, part_dir in found.items():
        files = [str(f) for f in corpora.FILE_LISTERS["librispeech"](part_dir)]
        seg_dir = stage_dir(Path(root), "segments", "librispeech", part)
        shards = _submit_segment_shards("librispeech", files, seg_dir, part, root, {"part": part})  # = slam data prepare
        groups.append(SegmentGroup("librispeech", part, "validation" if part in val else "train", shards))
    return groups


def librilight_groups(cfg: SlamConfig, root: str) -> list[SegmentGroup]:
    found = fetch_parts("librilight", list(cfg.corpus.librilight_subsets), cfg.corpus.librilight_dir, root)
    files = [f for d in found.values() for f in corpora.FILE_LISTERS["librilight"](d)]
    held_out = librilight_validation_files(files, cfg.corpus.librilight_val_fraction, cfg.run.seed)
    groups = []
    for split, role, chosen in (("train", "train", [f for f in files if f not in held_out]),
                                (VALIDATION_SPLIT, "validation", [f for f in files if f in held_out])):
        if chosen:
            seg_dir = stage_dir(Path(root), "segments", "librilight", split)
            shards = _submit_segment_shards("librilight", [str(f) for f in chosen], seg_dir, split, root,
                                            {"split": split})
            groups.append(SegmentGroup("librilight", split, role, shards))
    return groups


def corpus_groups(cfg: SlamConfig, root: str) -> list[SegmentGroup]:
    """Segment groups of the real-speech sets in corpus.pretrain_sets (Libri-Light, then LibriSpeech)."""
    groups = []
    if "librilight" in cfg.corpus.pretrain_sets:
        groups += librilight_groups(cfg, root)
    if "librispeech" in cfg.corpus.pretrain_sets:
        groups += librispeech_groups(cfg, root)
    return groups
