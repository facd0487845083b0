"""Download-verify-extract of one part of a registered HTTP source, skipped when it is already on disk."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from slam_core.corpora.archive import extract_archive
from slam_core.corpora.download import download_file
from slam_core.corpora.sources import SOURCES


def fetch_extracted(source: str, part: str, raw_dir: str | Path, locate: Callable[[Path, str], Path],
                    mirror: str | None = None, retries: int = 5) -> Path:
    """Return `locate(raw_dir, part)`, downloading and extracting `<part>` first only if it is not found."""
    raw_dir = Path(raw_dir)
    try:
        return locate(raw_dir, part)
    except FileNotFoundError:
        pass
    meta = SOURCES[source].part(part)
    archive = download_file(SOURCES[source].url(part, mirror), raw_dir / "archives" / meta.filename,
                            sha256=meta.sha256, md5=meta.md5, retries=retries)
    extract_archive(archive, raw_dir / part)
    return locate(raw_dir, part)
