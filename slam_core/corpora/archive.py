"""Safe tar/zip extraction: members are filtered, the archive is unpacked into a temporary directory and
renamed into place only when every member came out, so a crash or a bad archive leaves nothing half-written.

tar uses Python's "data" extraction filter (PEP 706): absolute paths, `..`, links pointing outside the target,
device and FIFO members are refused. zip members are checked the same way before anything is written.
Archives are read as a stream (one pass), which matters for multi-GB LibriSpeech tarballs.
"""

from __future__ import annotations

import logging
import stat
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from slam_core.atomic import atomic_dir

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")


class ArchiveError(RuntimeError):
    """An archive is unsafe (a member escapes the target, is a link out or a device) or truncated/corrupt."""

    def __init__(self, archive: str | Path, reason: str, member: str | None = None) -> None:
        self.archive, self.reason, self.member = str(archive), reason, member
        where = f" member {member!r}:" if member else ""
        super().__init__(f"{archive}:{where} {reason}")


def _check_member_name(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError(archive, "absolute path refused", name)
    if ".." in path.parts:
        raise ArchiveError(archive, "path with '..' refused (would escape the target directory)", name)


def _extract_tar(archive: Path, target: Path) -> int:
    count = 0
    try:
        # "r|*": a streaming read, so a truncated archive fails at the member where the bytes stop.
        with tarfile.open(archive, mode="r|*") as tar:
            for member in tar:
                _check_member_name(archive, member.name)
                try:
                    tar.extract(member, target, filter="data")
                except tarfile.FilterError as err:
                    raise ArchiveError(archive, f"refused by the tar 'data' filter: {type(err).__name__}",
                                       member.name) from None
                count += 1
    except ArchiveError:
        raise
    except (tarfile.ReadError, tarfile.StreamError, EOFError, zlib.error, OSError) as err:
        raise ArchiveError(archive, f"truncated or corrupt archive ({type(err).__name__}: {err})") from None
    return count


def _zip_member_is_link_or_special(info: zipfile.ZipInfo) -> bool:
    file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool stored no Unix type
    return file_type not in (0, stat.S_IFREG, stat.S_IFDIR)


def _extract_zip(archive: Path, target: Path) -> int:
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:  # the central directory is at the end: check everything before writing
                _check_member_name(archive, info.filename)
                if _zip_member_is_link_or_special(info):
                    raise ArchiveError(archive, "symbolic link or special file refused", info.filename)
            for info in infos:
                zf.extract(info, target)
    except ArchiveError:
        raise
    except (zipfile.BadZipFile, EOFError, zlib.error, OSError) as err:
        raise ArchiveError(archive, f"truncated or corrupt archive ({type(err).__name__}: {err})") from None
    return len(infos)


def archive_kind(path: str | Path) -> str:
    """'tar' or 'zip' from the file name (falls back to sniffing the bytes)."""
    name = Path(path).name.lower()
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise ArchiveError(path, "not a tar or zip archive")


def extract_archive(archive: str | Path, dest_dir: str | Path) -> dict:
    """Extract `archive` into `dest_dir` (replacing it) through a temporary sibling directory.

    Returns {"path": dest_dir, "members": n}. Raises ArchiveError naming the archive (and the member)
    for unsafe members or a truncated/corrupt file; `dest_dir` is then left as it was.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise FileNotFoundError(f"{archive}: archive not found")
    kind = archive_kind(archive)
    with atomic_dir(dest_dir) as tmp:
        members = _extract_tar(archive, tmp) if kind == "tar" else _extract_zip(archive, tmp)
    log.info("extracted %d members of %s into %s", members, archive.name, dest_dir)
    return {"path": str(dest_dir), "members": members}
