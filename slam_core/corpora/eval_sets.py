"""Layout checks for the published evaluation sets kept in local directories (sBLIMP, sWUGGY, sSC, tSC, SALMon).

The pairing rules live in `slam_core.eval.pairs.load_published_pairs`; this module finds each set under a
reference directory (SlamKit's names: sblimp/, swuggy_inter/, swuggy_oov/, sSC/, tSC/, salmon/<part>/) and
checks that pairs can be formed and that the audio is 16 kHz (SlamKit does not resample eval audio).
"""

from __future__ import annotations

import logging
from pathlib import Path

import soundfile as sf

from slam_core.eval.pairs import load_published_pairs

log = logging.getLogger(__name__)

# slam metric name -> directory name SlamKit uses under the reference path.
EVAL_DIRS = {"sblimp": "sblimp", "swuggy_inter": "swuggy_inter", "swuggy_oov": "swuggy_oov", "ssc": "sSC",
             "tsc": "tSC", "salmon": "salmon"}
EXPECTED_SAMPLE_RATE_HZ = 16_000


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


def _check_rates(pairs: list[tuple[Path, Path]], where: Path, sample: int = 8) -> None:
    for pos, neg in pairs[:sample]:
        for f in (pos, neg):
            rate = sf.info(str(f)).samplerate
            if rate != EXPECTED_SAMPLE_RATE_HZ:
                raise ValueError(f"{f}: {rate} Hz, but {where.name} audio must be 16 kHz (it is not resampled)")


def check_eval_set(reference_dir: str | Path, metric: str, suffix: str = ".wav") -> dict:
    """Validate one set; returns {"metric", "path", "pairs"} (SALMon: pairs per part under "parts")."""
    if metric not in EVAL_DIRS:
        raise ValueError(f"unknown eval set '{metric}' (known: {', '.join(EVAL_DIRS)})")
    root = find_set_dir(Path(reference_dir), metric)
    if metric == "salmon":
        from slam_core.eval.published import salmon_sets  # wav parts and hub Parquet parts

        sets = salmon_sets(root)
        parts = {name.split("/", 1)[1]: pairs for name, pairs in sets.items()}
        for part, pairs in parts.items():
            wavs = [(Path(p.positive.path), Path(p.negative.path)) for p in pairs if p.positive.row is None]
            _check_rates(wavs, root / part)
        return {"metric": metric, "path": str(root), "pairs": sum(map(len, parts.values())),
                "parts": {k: len(v) for k, v in parts.items()}}
    pairs = load_published_pairs(root, metric, suffix)
    _check_rates(pairs, root)
    log.info("%s: %d pairs in %s", metric, len(pairs), root)
    return {"metric": metric, "path": str(root), "pairs": len(pairs)}


def check_eval_sets(reference_dir: str | Path, metrics: list[str] | None = None) -> dict[str, dict]:
    """Check every requested set (default: those present); a missing or malformed set is reported, not raised."""
    reference_dir = Path(reference_dir)
    results: dict[str, dict] = {}
    for metric in metrics or list(EVAL_DIRS):
        try:
            results[metric] = check_eval_set(reference_dir, metric)
        except (FileNotFoundError, ValueError) as err:
            if metrics:
                results[metric] = {"metric": metric, "error": str(err)}
    return results
