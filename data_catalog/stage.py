"""Commit protocol for stage outputs: skip what the catalog already holds, else produce, then record.

`produce()` must write its output atomically (temp, fsync, rename); only then is the row inserted, so a crash
at any point leaves either nothing recorded or a complete, recorded file.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from data_catalog.catalog import Artifact, Catalog


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
) -> dict[str, Any]:
    """Return the recorded output for (out_path, fingerprint), producing and recording it first if absent.

    `produce` returns counts (`rows`, `tokens`, `audio_seconds`) and optionally `bad`: a list of
    (item, reason, detail) that is quarantined in the catalog under this stage.
    """
    out_path = Path(out_path)
    row = catalog.find_artifact(out_path, fingerprint)
    if row is not None:
        return {"path": str(out_path), "fingerprint": fingerprint, "rows": row["rows"], "tokens": row["tokens"],
                "audio_seconds": row["audio_seconds"], "reused": True, "bad": []}
    result = produce()
    bad = [tuple(b) for b in result.get("bad", [])]
    for item, reason, detail in bad:
        catalog.record_quarantine(stage, dataset, str(item), reason, detail, fingerprint)
    size = sum(f.stat().st_size for f in out_path.rglob("*") if f.is_file()) if out_path.is_dir() else out_path.stat().st_size
    art = Artifact(stage=stage, dataset=dataset, split=split, path=str(out_path), fingerprint=fingerprint,
                   rows=int(result.get("rows", 0)), tokens=int(result.get("tokens", 0)),
                   audio_seconds=float(result.get("audio_seconds", 0.0)), bytes=size, upstream=tuple(upstream))
    catalog.record_artifact(art)
    return {"path": str(out_path), "fingerprint": fingerprint, "rows": art.rows, "tokens": art.tokens,
            "audio_seconds": art.audio_seconds, "reused": False, "bad": [list(b) for b in bad]}
