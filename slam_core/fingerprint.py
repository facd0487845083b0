"""Stage fingerprints: hash(stage name, stage config, upstream fingerprints, code version).

The same fingerprint keys the catalog (skip a shard already recorded) and Prefect's task cache.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import slam_core


@lru_cache(maxsize=None)
def code_version(scope: tuple[str, ...] = ()) -> str:
    """slam_core version plus a digest of the source a stage runs.

    `scope` names files or sub-packages of slam_core (e.g. ("units", "audio/io.py")); empty means all of it.
    Scoping keeps an edit to, say, the report code from invalidating hours of cached unit extraction.
    """
    root = Path(slam_core.__file__).parent
    targets = [root / s for s in scope] or [root]
    files = sorted({f for t in targets for f in ([t] if t.is_file() else t.rglob("*.py"))})
    if not files:
        raise ValueError(f"code scope {scope} matches no slam_core source")
    h = hashlib.sha256(slam_core.__version__.encode())
    for src in files:
        h.update(src.relative_to(root).as_posix().encode())
        h.update(src.read_bytes())
    return f"{slam_core.__version__}+{h.hexdigest()[:12]}"


def fingerprint(stage: str, config: Any, upstream: list[str] | tuple[str, ...] = (), code: str | None = None) -> str:
    """16-hex digest identifying one stage output. `code` defaults to the version of all of slam_core; pass
    `code_version(scope)` to narrow it."""
    payload = json.dumps(
        {"stage": stage, "config": config, "upstream": list(upstream), "code": code or code_version()},
        sort_keys=True, default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def file_sha256(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_bytes):
            h.update(block)
    return h.hexdigest()
