"""HTTP download that survives dropped connections: stream to `<name>.part`, resume with a Range request,
retry with exponential back-off, verify the published checksum, then move atomically into place.

A checksum mismatch deletes the partial file and downloads once more from scratch (a resumed file can be
corrupt in a way no Range request repairs); a second mismatch fails, naming the file, expected and actual hash.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from slam_core.atomic import raise_if_disk_full

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
USER_AGENT = "slam-corpora/0.1 (+https://github.com/slp-rl/slamkit)"
# Errors after which resuming from the bytes on disk makes sense.
TRANSIENT_ERRORS = (urllib.error.URLError, http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError)


class DownloadError(RuntimeError):
    """A file could not be fetched after all retries; the message names the URL and the last error."""


class ChecksumMismatchError(RuntimeError):
    """A downloaded file does not match its published checksum (after one fresh re-download)."""

    def __init__(self, path: Path, algorithm: str, expected: str, actual: str) -> None:
        self.path, self.algorithm, self.expected, self.actual = Path(path), algorithm, expected, actual
        super().__init__(f"{path}: {algorithm} mismatch: expected {expected}, got {actual}")


class _IncompleteBody(Exception):
    """The server closed the connection before Content-Length bytes arrived (resumable)."""


def file_digest(path: str | Path, algorithm: str) -> str:
    """Hex digest of a file with hashlib `algorithm` ('md5', 'sha256', ...)."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            h.update(block)
    return h.hexdigest()


def _expected_checksum(sha256: str | None, md5: str | None) -> tuple[str, str] | None:
    if sha256:
        return "sha256", sha256.lower()
    if md5:
        return "md5", md5.lower()
    return None


def _verify(path: Path, expected: tuple[str, str] | None) -> str | None:
    """None when the file matches (or nothing is published), else the actual digest."""
    if expected is None:
        return None
    algorithm, digest = expected
    actual = file_digest(path, algorithm)
    return None if actual == digest else actual


def _stream_once(url: str, part: Path, timeout_s: float, progress: Callable[[int, int | None], None] | None) -> None:
    """One HTTP request that appends to `part` from its current size (Range) or restarts it."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and have:  # nothing left to send: the part file already holds every byte
            return
        raise
    with response:
        if have and response.status != 206:  # server ignored Range: start over
            log.info("%s: server does not resume, restarting from byte 0", url)
            have = 0
        length = response.headers.get("Content-Length")
        expected_end = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as fh:
            got = have
            while True:
                try:
                    block = response.read(CHUNK_BYTES)
                except http.client.IncompleteRead as err:
                    fh.write(err.partial)
                    got += len(err.partial)
                    raise _IncompleteBody(f"connection dropped at byte {got}") from None
                if not block:
                    break
                fh.write(block)
                got += len(block)
                if progress:
                    progress(got, expected_end)
            fh.flush()
            os.fsync(fh.fileno())
        if expected_end is not None and got < expected_end:
            raise _IncompleteBody(f"connection closed at byte {got} of {expected_end}")


def _fetch_with_retries(url: str, part: Path, retries: int, backoff_s: float, timeout_s: float,
                        progress: Callable[[int, int | None], None] | None) -> None:
    for attempt in range(retries + 1):
        try:
            _stream_once(url, part, timeout_s, progress)
            return
        except urllib.error.HTTPError as err:
            if 400 <= err.code < 500 and err.code not in (408, 429):
                raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
            last = f"HTTP {err.code} {err.reason}"
        except (_IncompleteBody, *TRANSIENT_ERRORS) as err:
            last = f"{type(err).__name__}: {err}"
        except OSError as err:  # a full disk is not transient: stop, keeping the bytes so far for a resume
            raise_if_disk_full(err, part)
            raise
        if attempt < retries:
            delay_s = backoff_s * (2 ** attempt)
            log.warning("%s: %s; resuming from byte %d in %.1f s (attempt %d/%d)", url, last,
                        part.stat().st_size if part.exists() else 0, delay_s, attempt + 1, retries)
            time.sleep(delay_s)
    raise DownloadError(f"{url}: failed after {retries + 1} attempts ({last}); rerun to resume from {part}")


def download_file(
    url: str,
    dest: str | Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60.0,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """Download `url` to `dest` unless a verified copy is already there; returns `dest`.

    Partial bytes live in `dest + '.part'` and are resumed by the next call (or retry). sha256 wins over md5
    when both are given; with neither, the file is accepted as downloaded.
    """
    dest = Path(dest)
    expected = _expected_checksum(sha256, md5)
    if dest.exists():
        if _verify(dest, expected) is None:
            log.info("%s: already present and verified", dest)
            return dest
        log.warning("%s: present but its checksum does not match; downloading again", dest)
        dest.unlink()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for fresh_try in range(2):
        _fetch_with_retries(url, part, retries, backoff_s, timeout_s, progress)
        actual = _verify(part, expected)
        if actual is None:
            os.replace(part, dest)
            dir_fd = os.open(dest.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return dest
        part.unlink()
        if fresh_try == 0:
            log.warning("%s: %s mismatch (got %s); downloading once more from scratch", url, expected[0], actual)
    raise ChecksumMismatchError(dest, expected[0], expected[1], actual)


def remote_size_bytes(url: str, timeout_s: float = 20.0) -> int | None:
    """Content-Length from a HEAD request, or None when the server does not say (or is unreachable)."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            length = response.headers.get("Content-Length")
    except (urllib.error.URLError, *TRANSIENT_ERRORS):
        return None
    return int(length) if length is not None else None
