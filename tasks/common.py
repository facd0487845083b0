"""What every slam task shares: fingerprint-keyed caching, the catalog, progress artifacts.

Cache keys are `<task>-<fingerprint>-<data root digest>`: the fingerprint already covers the stage config,
the upstream fingerprints and the code version, and the root digest keeps two data roots apart even when
they share one Prefect result store. The catalog stays the record of truth: a task is served from Prefect's
cache only when the catalog still holds its output, so the first rerun after a crash goes through the
catalog check inside the task (fast) and later reruns are plain cache hits.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.context import TaskRunContext
from tqdm import tqdm

from data_catalog import Catalog
from slam_core.paths import catalog_path

log = logging.getLogger(__name__)


def stage_cache_key(ctx: TaskRunContext, params: dict[str, Any]) -> str | None:
    """The cache key, or None (run, don't cache) when the catalog does not hold this work: Prefect's result
    store can outlive a deleted or moved data root, and a hit would then hand out paths that are gone."""
    data_root = Path(params["data_root"]).resolve()
    if not catalog_path(data_root).exists() or not catalog_at(data_root).has_fingerprint(params["fingerprint"]):
        return None
    root = hashlib.sha256(str(data_root).encode()).hexdigest()[:8]
    return f"{ctx.task.name}-{params['fingerprint']}-{root}"


def not_bad_input(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failure unless it is bad input (`InputError`: the same input would
    fail the same way, so the user gets the line at once instead of after every retry)."""
    from slam_core.errors import InputError

    return not isinstance(getattr(state, "data", None), InputError)


# Keyword arguments shared by every cached stage task.
CACHED = {"cache_key_fn": stage_cache_key, "persist_result": True, "result_serializer": "json"}


def catalog_at(data_root: str | Path) -> Catalog:
    return Catalog(catalog_path(Path(data_root)))


def eta_text(seconds: float) -> str:
    """'ETA 1h02m', 'ETA 3m20s' or 'ETA 12s'."""
    seconds = max(0, int(round(seconds)))
    if seconds >= 3600:
        return f"ETA {seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"ETA {seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"ETA {seconds}s"


def progress_reporter(description: str, min_interval_s: float = 2.0, log_every: float = 0.1,
                      log_interval_s: float = 60.0, artifact_every: float = 0.05,
                      artifact_interval_s: float = 30.0) -> Callable[[float, str], None]:
    """A callback `(fraction, message)` that updates one Prefect progress artifact and the log, both coalesced.
    The artifact moves per `artifact_every` of the work (5 %) or per `artifact_interval_s`, whichever comes first,
    and at the end: each update is an event that `prefect deployment run --watch` prints and the server stores.
    The log has one INFO line per `log_every` (10 %, 20 %, ...) or per `log_interval_s`, and the end; every
    update at DEBUG (`slam -v`). Nothing is reported more often than `min_interval_s`, except the end."""
    try:
        artifact_id = create_progress_artifact(progress=0.0, description=description)
    except Exception as err:  # no API (e.g. `.fn()` in a notebook): progress stays in the log
        log.debug("no progress artifact: %s", err)
        artifact_id = None
    last = [0.0]
    logged = [time.monotonic(), 0.0]  # time and fraction of the last INFO line
    shown = [time.monotonic(), 0.0]  # time and fraction of the last artifact update
    started = [None]  # (time, fraction) of the first report: the ETA extrapolates from there
    # A live bar (with tqdm's own ETA) only where a person watches a terminal; logs and the artifact always.
    bar = tqdm(total=100, desc=description, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}]",
               leave=False) if sys.stderr.isatty() else None

    def report(fraction: float, message: str = "") -> None:
        now = time.monotonic()
        if bar is not None:
            bar.update(100.0 * min(1.0, fraction) - bar.n)
            if fraction >= 1.0:
                bar.close()
        if started[0] is None:
            started[0] = (now, fraction)
        if fraction < 1.0 and now - last[0] < min_interval_s:
            return
        last[0] = now
        t0, f0 = started[0]
        eta = eta_text((now - t0) * (1.0 - fraction) / (fraction - f0)) if 0 < fraction - f0 and fraction < 1 else ""
        message = f"{message} {eta}".strip()
        milestone = int(fraction / log_every + 1e-9) > int(logged[1] / log_every + 1e-9)
        if fraction >= 1.0 or milestone or now - logged[0] >= log_interval_s:
            logged[:] = [now, fraction]
            log.info("%s: %.0f%% %s", description, 100 * fraction, message)
        else:
            log.debug("%s: %.0f%% %s", description, 100 * fraction, message)
        if artifact_id is not None and (fraction >= 1.0 or fraction - shown[1] >= artifact_every - 1e-9
                                        or now - shown[0] >= artifact_interval_s):
            shown[:] = [now, fraction]
            try:
                update_progress_artifact(artifact_id, progress=min(100.0, 100.0 * fraction),
                                         description=f"{description}: {message}" if message else description)
            except Exception as err:
                log.debug("progress update failed: %s", err)

    return report
