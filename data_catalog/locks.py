"""Per-output file locks: two runs (threads, processes, or machines on one shared POSIX file system) that want
the same stage output take turns; the second finds the first's committed output in the catalog and reuses it.

A lock is an OS file lock (`filelock`, flock on POSIX) on `<data root>/.locks/<digest of the output path>.lock`;
the OS drops it when its holder dies, so a `kill -9` never leaves a stale lock behind. The holder writes its
host, pid and output path into `<lock>.holder` so that a waiter can say whom it waits for.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"


def lock_path(data_root: str | Path, out_path: str | Path) -> Path:
    digest = hashlib.sha256(str(Path(out_path).resolve()).encode()).hexdigest()[:24]
    return Path(data_root) / LOCK_DIR / f"{digest}.lock"


@contextlib.contextmanager
def output_lock(data_root: str | Path, out_path: str | Path, timeout_s: float | None = None,
                report_every_s: float = 30.0) -> Iterator[float]:
    """Hold the lock of `out_path` (waiting as long as needed, or `timeout_s`); yields the seconds waited.

    Raises `TimeoutError` naming the holder when `timeout_s` passes first.
    """
    path = lock_path(data_root, out_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), thread_local=False, preserve_lock_file=True)
    t0 = time.monotonic()
    while True:
        try:
            lock.acquire(timeout=report_every_s if timeout_s is None else min(report_every_s, timeout_s))
            break
        except Timeout:
            waited = time.monotonic() - t0
            holder = holder_of(path)
            if timeout_s is not None and waited >= timeout_s:
                raise TimeoutError(f"{out_path}: still locked after {waited:.0f} s by {holder}") from None
            log.info("%s: waiting %.0f s for %s, which is producing it", out_path, waited, holder)
    waited_s = time.monotonic() - t0
    try:
        path.with_suffix(".holder").write_text(f"{socket.gethostname()} pid {os.getpid()} since "
                                               f"{time.strftime('%Y-%m-%d %H:%M:%S')}: {out_path}\n")
        yield waited_s
    finally:
        lock.release()


def holder_of(path: Path) -> str:
    try:
        return Path(path).with_suffix(".holder").read_text().strip() or "another process"
    except OSError:
        return "another process"


def remove_stale_temporaries(out_path: str | Path) -> list[Path]:
    """Delete the hidden temporaries a killed writer of `out_path` left beside it (call with its lock held:
    then no live writer of this output exists). Returns what was removed."""
    out_path = Path(out_path)
    if not out_path.parent.is_dir():
        return []
    removed = []
    for stale in out_path.parent.glob(f".{out_path.name}.*"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)
        removed.append(stale)
    if removed:
        log.info("%s: removed %d temporaries left by an interrupted writer", out_path, len(removed))
    return removed
