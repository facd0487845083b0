"""The published modelling sets' file layouts (sBLIMP, sWUGGY inter/oov, sSC, tSC, SALMon), in one place.

Used by the corpora stage (layout checks of downloaded sets, `eval_sets.py`) and by evaluation (tokenising
pairs, `slam_core/eval/published.py`). The pairing rules are SlamKit's (`slamkit/metric/modelling_metric.py`):
- sBLIMP / sWUGGY (`subfolder: true` in `config/metric/*.yaml`): in each sub-folder, files sorted by
  `int(name.split(sep)[0])` (sep `+` for sBLIMP, `_` for sWUGGY), pairs (2i, 2i+1). Each sub-folder is paired
  on its own (`ModellingMetricDataset` extends its list one sub-folder at a time), so sub-folders may restart
  their numbering. SlamKit walks sub-folders in `iterdir()` order; here they go by name, which only changes
  the order of the pairs, not which files pair.
- sSC / tSC (`subfolder: false`): the same on the set's own directory.
- SALMon part directory: `<anything>_<sample>_<variant>.wav`, grouped by sample, variant 0 positive
  (`SalmonDataset`), or the hub's Parquet files with one row per pair.
SlamKit falls back to glob order on duplicate sort keys; here duplicates are an error, since glob order can
pair the wrong files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

# slam metric name -> directory name SlamKit uses under the reference path.
EVAL_DIRS = {"sblimp": "sblimp", "swuggy_inter": "swuggy_inter", "swuggy_oov": "swuggy_oov", "ssc": "sSC",
             "tsc": "tSC", "salmon": "salmon"}
# layout, filename separator of the integer sort key, whether files sit in sub-folders (paired per sub-folder)
PUBLISHED_LAYOUTS: dict[str, tuple[str, str, bool]] = {
    "swuggy_inter": ("sorted_pairs", "_", True),
    "swuggy_oov": ("sorted_pairs", "_", True),
    "sblimp": ("sorted_pairs", "+", True),
    "ssc": ("sorted_pairs", "_", False),
    "tsc": ("sorted_pairs", "_", False),
    "salmon": ("salmon", "_", False),
}
# config metric name -> the eval_results rows it produces (salmon: one per part, found on disk, + "salmon")
PUBLISHED_METRICS: dict[str, tuple[str, ...]] = {
    "sblimp": ("sblimp",), "swuggy": ("swuggy_inter", "swuggy_oov"), "swuggy_inter": ("swuggy_inter",),
    "swuggy_oov": ("swuggy_oov",), "ssc": ("ssc",), "tsc": ("tsc",), "salmon": ("salmon",),
}
SALMON_AUDIO_COLUMNS = ("positive_audio", "negative_audio")


@dataclass(frozen=True)
class AudioRef:
    """One utterance: a WAV file, or (`row`, `column`) of a Parquet file holding audio bytes."""

    path: str
    row: int | None = None
    column: str | None = None


@dataclass(frozen=True)
class PairSource:
    """One published pair: an id unique within its set, and the audio of its positive and negative side."""

    pair_id: str
    positive: AudioRef
    negative: AudioRef


def find_set_dir(reference_dir: Path, metric: str) -> Path:
    """The directory of one set under the reference root (SlamKit's name, the metric name, or lower case)."""
    reference_dir = Path(reference_dir)
    if not reference_dir.is_dir():
        raise FileNotFoundError(f"{reference_dir}: eval.reference_path is not a directory")
    for name in (EVAL_DIRS[metric], metric, EVAL_DIRS[metric].lower()):
        if (reference_dir / name).is_dir():
            return reference_dir / name
    if reference_dir.name.lower() in (metric, EVAL_DIRS[metric].lower()):
        return reference_dir  # the user pointed at the set's own directory
    raise FileNotFoundError(f"{reference_dir}: no '{EVAL_DIRS[metric]}/' directory for {metric} (expected "
                            f"{reference_dir}/{EVAL_DIRS[metric]}/ in SlamKit's published layout)")


def load_published_pairs(root: str | Path, metric: str, suffix: str = ".wav") -> list[tuple[Path, Path]]:
    """Ordered (positive, negative) audio paths of a published eval set laid out as SlamKit expects (see the
    module docstring): sub-folder sets are paired within each sub-folder, sub-folders taken by name."""
    if metric not in PUBLISHED_LAYOUTS:
        raise ValueError(f"unknown published eval set '{metric}' (known: {', '.join(PUBLISHED_LAYOUTS)})")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: eval set directory for '{metric}' not found (set eval.reference_path)")
    layout, sep, subfolders = PUBLISHED_LAYOUTS[metric]
    groups = ([sorted(d.glob(f"*{suffix}")) for d in sorted(p for p in root.iterdir() if p.is_dir())]
              if subfolders else [sorted(root.glob(f"*{suffix}"))])
    groups = [g for g in groups if g]
    if not groups:
        raise FileNotFoundError(f"{root}: no '{'*/' if subfolders else ''}*{suffix}' files for '{metric}'")
    if layout == "salmon":
        return _salmon_pairs(groups[0])
    return [pair for files in groups for pair in _sorted_pairs(files, sep)]


def _int_key(path: Path, position: int, sep: str) -> int:
    try:
        return int(path.stem.split(sep)[position])
    except (IndexError, ValueError):
        raise ValueError(f"{path}: file name has no integer at field {position} when split on '{sep}'") from None


def _sorted_pairs(files: list[Path], sep: str) -> list[tuple[Path, Path]]:
    keyed = sorted(files, key=lambda f: _int_key(f, 0, sep))
    keys = [_int_key(f, 0, sep) for f in keyed]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise ValueError(f"{files[0].parent}: duplicate integer prefixes {dupes[:5]}; the pair order is ambiguous")
    if len(keyed) % 2:
        raise ValueError(f"{files[0].parent}: odd number of files ({len(keyed)}); pairs are (2i, 2i+1)")
    return [(keyed[i], keyed[i + 1]) for i in range(0, len(keyed), 2)]


def _salmon_pairs(files: list[Path]) -> list[tuple[Path, Path]]:
    groups: dict[int, dict[int, Path]] = {}
    for f in files:
        groups.setdefault(_int_key(f, 1, "_"), {})[_int_key(f, 2, "_")] = f
    pairs = []
    for sample, members in sorted(groups.items()):
        if sorted(members) != [0, 1]:
            raise ValueError(f"{files[0].parent}: sample {sample} has variants {sorted(members)}, expected [0, 1]")
        pairs.append((members[0], members[1]))
    return pairs


def salmon_part_row(part: str) -> str:
    return f"salmon/{part}"


def set_file_name(row_name: str) -> str:
    """A file-system name for an eval_results row name (`salmon/bg_alignment` -> `salmon-bg_alignment`)."""
    return row_name.replace("/", "-")


def published_sets(reference_path: str | Path, metric: str) -> dict[str, list[PairSource]]:
    """Row name -> ordered pairs for one configured metric (`swuggy` gives swuggy_inter and swuggy_oov; `salmon`
    gives `salmon/<part>` for every part directory). Raises FileNotFoundError/ValueError naming what is wrong."""
    if metric not in PUBLISHED_METRICS:
        raise ValueError(f"unknown published eval set '{metric}' (known: {', '.join(PUBLISHED_METRICS)})")
    root = Path(reference_path).expanduser()
    if metric == "salmon":
        return salmon_sets(find_set_dir(root, "salmon"))
    out = {}
    for name in PUBLISHED_METRICS[metric]:
        set_dir = find_set_dir(root, name)
        out[name] = [PairSource(pos.relative_to(set_dir).as_posix(), AudioRef(str(pos)), AudioRef(str(neg)))
                     for pos, neg in load_published_pairs(set_dir, name)]
    return out


def salmon_sets(salmon_dir: Path) -> dict[str, list[PairSource]]:
    """Every SALMon part under `salmon_dir`: hub Parquet files if the part has any, else the WAV layout."""
    parts = sorted(p for p in Path(salmon_dir).iterdir() if p.is_dir())
    if not parts:
        raise FileNotFoundError(f"{salmon_dir}: no SALMon part directories (e.g. {salmon_dir}/bg_alignment/)")
    out = {}
    for part in parts:
        parquets = sorted(part.rglob("*.parquet"))
        if parquets:
            out[salmon_part_row(part.name)] = salmon_parquet_pairs(parquets)
        else:
            out[salmon_part_row(part.name)] = [
                PairSource(pos.name, AudioRef(str(pos)), AudioRef(str(neg)))
                for pos, neg in load_published_pairs(part, "salmon")]
    return out


def salmon_parquet_pairs(files: Sequence[Path]) -> list[PairSource]:
    """Pairs of SALMon's hub layout (`<part>/*.parquet`, one row per pair). The column names come from the
    dataset card, not from a checked file: anything else fails naming the columns that were found."""
    pairs = []
    for f in files:
        schema = pq.read_schema(f)
        missing = [c for c in SALMON_AUDIO_COLUMNS if c not in schema.names]
        if missing:
            raise ValueError(f"{f}: SALMon Parquet without {missing}; columns found: {schema.names}. Expected one "
                             f"row per pair with {list(SALMON_AUDIO_COLUMNS)} (audio bytes or {{bytes, path}})")
        n_rows = pq.ParquetFile(f).metadata.num_rows
        pairs += [PairSource(f"{f.stem}:{i}", AudioRef(str(f), i, SALMON_AUDIO_COLUMNS[0]),
                             AudioRef(str(f), i, SALMON_AUDIO_COLUMNS[1])) for i in range(n_rows)]
    return pairs
