"""Atomic file output: write to a temporary name beside the target, fsync, then rename.

A reader (or the catalog) never sees a half-written file: either the old state or the complete new file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Out of space, over quota, or over the process's file-size limit: retrying cannot help.
_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(OSError):
    """A write failed for lack of space; the message names the file, the free space and what to do."""


def free_bytes(path: str | os.PathLike) -> int:
    """Free bytes for an unprivileged user on the file system holding `path` (or its nearest existing parent)."""
    probe = Path(path)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def raise_if_disk_full(err: BaseException, path: str | os.PathLike) -> None:
    """Re-raise a no-space OSError as DiskFullError naming `path`; any other error is left to the caller."""
    if isinstance(err, OSError) and not isinstance(err, DiskFullError) and err.errno in _DISK_FULL_ERRNOS:
        raise DiskFullError(
            err.errno, f"{path}: {os.strerror(err.errno)} while writing ({free_bytes(path) / 1e9:.2f} GB free "
            f"there). Nothing was recorded; free space or point run.data_root at a larger disk, then rerun "
            f"(finished work is kept)."
        ) from err


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; on success fsync it and rename it over `final`.

    On an exception the temporary file is removed and `final` is untouched; running out of space raises
    DiskFullError naming `final`.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or ".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except OSError as err:
        raise_if_disk_full(err, final)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes_atomic(final: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return Path(final)


def write_text_atomic(final: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(final, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success fsync its files and rename it to `final` (replacing it)."""
    final = Path(final)
    if final.exists() and not final.is_dir():  # never move a user's file aside to put a directory there
        raise FileExistsError(f"a file is in the way of an output directory (left untouched) — {final} — move it "
                              f"away or choose another output path")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    try:
        try:
            yield tmp
        except OSError as err:
            raise_if_disk_full(err, final)
            raise
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        if final.exists():
            old = final.with_name(f".{final.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(final.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
