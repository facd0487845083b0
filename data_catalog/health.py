"""Whether the catalog file can be used, checked once before a run starts, and its last good copy.

- `open_check`: opens `catalog.duckdb` the way every writer does. Another process holding DuckDB's file lock
  for longer than `lock_wait_s` raises `CatalogLockedError` naming that process (DuckDB says which); a file
  DuckDB cannot read as a database (truncated, overwritten, empty) is moved aside, never deleted, and the last
  good copy is put back (`CatalogRecovered` tells what happened), so the rows it held are not lost: their
  files are still checked by size and digest before reuse, and outputs recorded after the copy are redone.
- `save_good_copy`: copies a catalog that just opened and checkpointed to `catalog.duckdb.last-good`
  (atomically, while holding DuckDB's lock, so no writer is half-way). Taken before and after every run.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

log = logging.getLogger(__name__)

GOOD_SUFFIX = ".last-good"
# What DuckDB says when the file is not a (whole) database: the only errors that move a catalog aside.
_CORRUPT = re.compile(r"not a valid DuckDB database|Could not read enough bytes|checksum|corrupt|"
                      r"Serialization Error|INTERNAL Error", re.IGNORECASE)


class CatalogLockedError(RuntimeError):
    """Another process holds the catalog's file lock; `holder` says which (from DuckDB's message)."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path, self.holder = path, holder
        super().__init__(f"{path}: locked by {holder}")


class CatalogUnwritableError(RuntimeError):
    """The catalog file exists but cannot be opened for writing (permissions, read-only file system)."""


@dataclass(frozen=True)
class CatalogRecovered:
    """A corrupt catalog was moved to `moved_to`; `restored_from` is the good copy put back (None: a new catalog)."""
    reason: str
    moved_to: Path
    restored_from: Path | None

    def line(self) -> str:
        back = (f"restored its last good copy ({self.restored_from.name}); outputs recorded after that copy are "
                f"redone" if self.restored_from else "no good copy existed: a new catalog, every output is redone")
        return f"catalog was corrupt ({self.reason}): kept as {self.moved_to}; {back}"


def _holder(message: str) -> str:
    found = re.search(r"held in (\S+) \(PID (\d+)\)", message)
    return f"PID {found.group(2)} ({found.group(1)})" if found else "another process"


def _connect(path: Path, lock_wait_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + lock_wait_s
    while True:
        try:
            return duckdb.connect(str(path))
        except duckdb.IOException as err:
            text = str(err)
            if "lock" in text.lower():
                if time.monotonic() >= deadline:
                    raise CatalogLockedError(path, _holder(text)) from None
                time.sleep(0.2)
                continue
            raise


def _move_aside(path: Path, reason: str) -> CatalogRecovered:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    moved = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, moved)
    wal = path.with_name(path.name + ".wal")
    if wal.exists():
        os.replace(wal, moved.with_name(moved.name + ".wal"))
    good = path.with_name(path.name + GOOD_SUFFIX)
    restored = None
    if good.is_file():
        tmp = path.with_name(f".{path.name}.restore-{os.getpid()}")
        shutil.copyfile(good, tmp)
        os.replace(tmp, path)
        restored = good
    return CatalogRecovered(" ".join(reason.split())[:200], moved, restored)


def open_check(path: str | Path, lock_wait_s: float = 30.0) -> CatalogRecovered | None:
    """Open the catalog once (see the module docstring); None when it was fine (or does not exist yet)."""
    path = Path(path)
    if not path.exists():
        return None
    recovered = None
    for attempt in range(2):  # a restored good copy is checked like the original
        try:
            con = _connect(path, lock_wait_s)
            try:
                con.execute("SELECT count(*) FROM information_schema.tables").fetchall()
            finally:
                con.close()
            return recovered
        except CatalogLockedError:
            raise
        except duckdb.Error as err:
            text = str(err)
            if re.search(r"permission denied|read-only file system", text, re.IGNORECASE):
                raise CatalogUnwritableError(f"{path}: {' '.join(text.split())[:200]}") from None
            if not _CORRUPT.search(text) or attempt:
                raise
            recovered = _move_aside(path, text)
            log.warning(recovered.line())
            if recovered.restored_from is None:
                return recovered
    return recovered


def save_good_copy(path: str | Path, lock_wait_s: float = 30.0) -> Path | None:
    """Copy a catalog that opens to `<catalog>.last-good` (see the module docstring); None when there is none."""
    path = Path(path)
    if not path.exists():
        return None
    good = path.with_name(path.name + GOOD_SUFFIX)
    tmp = path.with_name(f".{good.name}.{os.getpid()}")
    from data_catalog.catalog import _PROCESS_LOCK  # this process's writers wait too

    with _PROCESS_LOCK:
        return _copy_locked(path, good, tmp, lock_wait_s)


def _copy_locked(path: Path, good: Path, tmp: Path, lock_wait_s: float) -> Path:
    con = _connect(path, lock_wait_s)
    try:
        con.execute("CHECKPOINT")  # everything committed is in the main file; the lock keeps writers out meanwhile
        shutil.copyfile(path, tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, good)
    finally:
        con.close()
        tmp.unlink(missing_ok=True)
    return good
