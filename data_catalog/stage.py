"""Commit protocol for stage outputs: skip what the catalog already holds, else produce, then record.

`produce()` must write its output atomically (temp, fsync, rename); only then is the row inserted, so a crash
at any point leaves either nothing recorded or a complete, recorded file.

Production runs under the output's file lock (`data_catalog.locks`): when two runs on one data root reach the
same output, the second waits, then finds the first's row and reuses the output instead of writing it again.
With the lock held, temporaries left beside the output by a killed writer are removed before producing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data_catalog.catalog import Artifact, Catalog
from data_catalog.locks import output_lock, remove_stale_temporaries

log = logging.getLogger(__name__)


def _reused(out_path: Path, fingerprint: str, row: dict[str, Any], waited_s: float = 0.0) -> dict[str, Any]:
    # a resumed run says which outputs it did not redo (the task itself only ends "Completed")
    log.info("reused %s: recorded by %s (fingerprint %s), not redone", out_path.name,
             "the run waited for" if waited_s else "an earlier run", fingerprint)
    return {"path": str(out_path), "fingerprint": fingerprint, "rows": row["rows"], "tokens": row["tokens"],
            "audio_seconds": row["audio_seconds"], "reused": True, "bad": [], "waited_s": round(waited_s, 3)}


def produce_or_reuse(
    catalog: Catalog,
    *,
    stage: str,
    dataset: str,
    split: str,
    out_path: str | Path,
    fingerprint: str,
    produce: Callable[[], dict[str, Any]],
    upstream: Sequence[str] = (),
    lock_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Return the recorded output for (out_path, fingerprint), producing and recording it first if absent.

    `produce` returns counts (`rows`, `tokens`, `audio_seconds`) and optionally `bad`: a list of
    (item, reason, detail) that is quarantined in the catalog under this stage. The artifact row and its
    quarantine rows are committed in one transaction. `lock_timeout_s` None waits for another producer of
    the same output as long as it takes (a training stage can hold it for hours).
    """
    out_path = Path(out_path)
    row = catalog.find_artifact(out_path, fingerprint)
    if row is not None:
        return _reused(out_path, fingerprint, row)
    with output_lock(catalog.path.parent, out_path, lock_timeout_s) as waited_s:
        row = catalog.find_artifact(out_path, fingerprint)  # produced by the run we waited for
        if row is not None:
            return _reused(out_path, fingerprint, row, waited_s)
        remove_stale_temporaries(out_path)
        result = produce()
        bad = [tuple(b) for b in result.get("bad", [])]
        art = Artifact(stage=stage, dataset=dataset, split=split, path=str(out_path), fingerprint=fingerprint,
                       rows=int(result.get("rows", 0)), tokens=int(result.get("tokens", 0)),
                       audio_seconds=float(result.get("audio_seconds", 0.0)), upstream=tuple(upstream))
        catalog.record_output(art, [(stage, dataset, str(item), reason, detail, fingerprint)
                                    for item, reason, detail in bad])
    return {"path": str(out_path), "fingerprint": fingerprint, "rows": art.rows, "tokens": art.tokens,
            "audio_seconds": art.audio_seconds, "reused": False, "bad": [list(b) for b in bad],
            "waited_s": round(waited_s, 3)}
