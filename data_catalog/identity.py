"""What the catalog records about an artifact's bytes at write time, and the check on reuse that they are the same.

A file: its size, the sha256 of its content, and a stat signature (size, inode, mtime_ns). On reuse the
signature is compared first; if anything differs (another writer replaced the file, a copy, a restore) the
content is hashed again and must equal the recorded sha256. A directory (an extracted archive, a checkpoint run
directory, possibly a user's corpus of millions of files, too large to hash on every lookup): a sha256 over its
manifest (relative path, size, mtime_ns of every file), recorded as both, so any rewritten, added or removed
file shows. Either way a catalog row is never served for bytes it did not record.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

_CHUNK_BYTES = 1 << 20


@dataclass(frozen=True)
class Identity:
    bytes: int
    sha256: str
    stat_sig: str


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def _file_stat_sig(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size}:{st.st_ino}:{st.st_mtime_ns}"


def _dir_manifest(path: Path) -> tuple[int, str]:
    total, digest = 0, hashlib.sha256()
    for root, dirs, files in os.walk(path):
        dirs.sort()
        for name in sorted(files):
            f = Path(root, name)
            st = f.stat()
            total += st.st_size
            digest.update(f"{f.relative_to(path).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return total, digest.hexdigest()


def identity_of(path: str | Path) -> Identity:
    """The identity of the bytes at `path` now (a file is read in full once)."""
    path = Path(path)
    if path.is_dir():
        total, manifest = _dir_manifest(path)
        return Identity(total, manifest, manifest)
    return Identity(path.stat().st_size, file_sha256(path), _file_stat_sig(path))


def mismatch(path: str | Path, recorded_bytes: int | None, recorded_sha256: str | None,
             recorded_stat_sig: str | None) -> str | None:
    """Why the bytes at `path` are not those recorded, or None when they are (or the file is gone: None too,
    the caller checks existence). Rows recorded before content hashes were kept are checked by size only."""
    path = Path(path)
    if path.is_dir():
        if not recorded_sha256:
            return None
        total, manifest = _dir_manifest(path)
        return None if manifest == recorded_sha256 else f"files changed since recording ({total} bytes now)"
    size = path.stat().st_size
    if recorded_bytes and size != recorded_bytes:
        return f"size {size} bytes, {recorded_bytes} recorded"
    if not recorded_sha256 or _file_stat_sig(path) == recorded_stat_sig:
        return None
    now = file_sha256(path)
    return None if now == recorded_sha256 else f"sha256 {now[:12]}…, {recorded_sha256[:12]}… recorded"
