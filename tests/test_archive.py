"""Safe archive extraction: unsafe members refused by name, corrupt archives refused, atomic replacement."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile

import pytest
from corpus_fixtures import tar_gz

from slam_core.corpora.archive import ArchiveError, extract_archive


def _tar_with(tmp_path, *infos: tuple[tarfile.TarInfo, bytes | None], name: str = "evil.tar") -> object:
    path = tmp_path / name
    with tarfile.open(path, "w") as tar:
        for info, data in infos:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _file(name: str) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), b"hello"


def _link(name: str, target: str, kind: bytes = tarfile.SYMTYPE) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info, None


def test_good_tar_gz_is_extracted(tmp_path):
    archive = tmp_path / "ok.tar.gz"
    archive.write_bytes(tar_gz({"LibriSpeech/dev-clean/a.txt": b"A", "LibriSpeech/dev-clean/b/c.txt": b"C"}))
    result = extract_archive(archive, tmp_path / "out")
    assert result["members"] == 2
    assert (tmp_path / "out/LibriSpeech/dev-clean/b/c.txt").read_bytes() == b"C"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left behind


@pytest.mark.parametrize("member, why", [
    (_file("ok.txt"), None),
    (_file("../escape.txt"), "'..'"),
    (_file("a/../../escape.txt"), "'..'"),
    (_file("/etc/evil.txt"), "absolute"),
    (_link("ln", "../../outside.txt"), "filter"),
    (_link("ln", "/etc/passwd"), "filter"),
    (_link("hard", "/etc/passwd", tarfile.LNKTYPE), "filter"),
])
def test_unsafe_tar_members_are_refused_by_name(tmp_path, member, why):
    archive = _tar_with(tmp_path, _file("fine.txt"), member)
    out = tmp_path / "out"
    if why is None:
        extract_archive(archive, out)
        assert (out / "ok.txt").exists()
        return
    with pytest.raises(ArchiveError) as err:
        extract_archive(archive, out)
    assert member[0].name in str(err.value) and why in str(err.value)
    assert not out.exists()  # nothing of the refused archive is visible
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "outside.txt").exists()


def test_device_member_is_refused(tmp_path):
    dev = tarfile.TarInfo("dev/null-ish")
    dev.type, dev.devmajor, dev.devminor = tarfile.CHRTYPE, 1, 3
    with pytest.raises(ArchiveError, match="dev/null-ish"):
        extract_archive(_tar_with(tmp_path, (dev, None)), tmp_path / "out")


def test_truncated_archive_is_refused_and_previous_extraction_kept(tmp_path):
    data = tar_gz({f"f{i}.bin": bytes(range(256)) * 400 for i in range(5)})
    archive = tmp_path / "cut.tar.gz"
    archive.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("kept")
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        extract_archive(archive, out)
    assert [p.name for p in out.iterdir()] == ["previous.txt"]


def test_garbage_file_is_not_an_archive(tmp_path):
    archive = tmp_path / "x.tar"
    archive.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(ArchiveError, match="x.tar"):
        extract_archive(archive, tmp_path / "out")


def _zip_with(tmp_path, entries: list[tuple[zipfile.ZipInfo, bytes]]):
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def test_zip_extracts_and_refuses_traversal_and_links(tmp_path):
    ok = _zip_with(tmp_path, [(zipfile.ZipInfo("sSC/1_a.wav"), b"x"), (zipfile.ZipInfo("sSC/2_b.wav"), b"y")])
    assert extract_archive(ok, tmp_path / "ok")["members"] == 2
    assert (tmp_path / "ok/sSC/2_b.wav").read_bytes() == b"y"

    bad = _zip_with(tmp_path, [(zipfile.ZipInfo("good.wav"), b"x"), (zipfile.ZipInfo("../../bad.wav"), b"y")])
    with pytest.raises(ArchiveError, match=r"\.\./\.\./bad\.wav"):
        extract_archive(bad, tmp_path / "bad")
    assert not (tmp_path / "bad").exists()

    link = zipfile.ZipInfo("link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    linked = _zip_with(tmp_path, [(link, b"/etc/passwd")])
    with pytest.raises(ArchiveError, match="symbolic link"):
        extract_archive(linked, tmp_path / "linked")


def test_truncated_zip_is_refused(tmp_path):
    path = _zip_with(tmp_path, [(zipfile.ZipInfo("a.wav"), b"x" * 5000)])
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ArchiveError, match="truncated or corrupt"):
        extract_archive(path, tmp_path / "out")
