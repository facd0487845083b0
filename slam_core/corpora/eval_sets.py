"""Layout checks for the published evaluation sets kept in local directories (sBLIMP, sWUGGY, sSC, tSC, SALMon).

The layouts and pairing rules live in `slam_core/corpora/published_layout.py` (shared with evaluation); this
module checks that a set found under a reference directory forms pairs and that its audio is 16 kHz (SlamKit
does not resample eval audio).
"""

from __future__ import annotations

import logging
from pathlib import Path

import soundfile as sf

from slam_core.corpora.published_layout import EVAL_DIRS, find_set_dir, load_published_pairs, salmon_sets

log = logging.getLogger(__name__)

EXPECTED_SAMPLE_RATE_HZ = 16_000


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
