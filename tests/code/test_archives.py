"""Safe extraction: nothing lands outside the target, no links, and a size bound holds."""

from __future__ import annotations

import dataclasses
import io
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import pytest

from pipeline.datasets import archives
from pipeline.datasets.archives import extract_archive
from pipeline.datasets.fetch import fetch_dataset
from pipeline.datasets.sources import CIFAR10
from pipeline.errors import DataError
from pipeline.store import sha256_of


def _tar(path: Path, members: list[tuple[str, bytes, dict]]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data, fields in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            for key, value in fields.items():
                setattr(info, key, value)
            archive.addfile(info, io.BytesIO(data) if info.isfile() else None)
    return path


@pytest.mark.parametrize(
    ("member", "fields", "reason"),
    [
        ("../../escaped.txt", {}, "path traversal"),
        ("/tmp/absolute.txt", {}, "path traversal"),
        ("ok/../../escaped.txt", {}, "path traversal"),
        ("ok/../inside.txt", {}, "path traversal"),  # the data filter alone would accept it
        ("C:/windows.txt", {}, "path traversal"),
        ("link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "is a link"),
        ("up", {"type": tarfile.SYMTYPE, "linkname": "../../etc/passwd"}, "is a link"),
        ("ok/in", {"type": tarfile.SYMTYPE, "linkname": "a.txt"}, "is a link"),
        ("hard", {"type": tarfile.LNKTYPE, "linkname": "ok/a.txt"}, "is a link"),
        ("hard_out", {"type": tarfile.LNKTYPE, "linkname": "../outside"}, "is a link"),
        ("device", {"type": tarfile.CHRTYPE}, "special file"),
        ("disk", {"type": tarfile.BLKTYPE}, "special file"),
        ("pipe", {"type": tarfile.FIFOTYPE}, "special file"),
    ],
)
def test_malicious_tar_members_are_refused_before_anything_is_written(
    tmp_path, member, fields, reason
) -> None:
    archive = _tar(
        tmp_path / "evil.tar.gz", [("ok/a.txt", b"fine", {}), (member, b"payload", fields)]
    )
    target = tmp_path / "out"
    with pytest.raises(DataError, match=reason) as error:
        extract_archive(archive, target)
    assert repr(member) in str(error.value) and "evil.tar.gz" in str(error.value)
    assert not target.exists()
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_a_malicious_member_refuses_the_archive_even_when_keep_skips_it(tmp_path) -> None:
    archive = _tar(
        tmp_path / "evil.tar.gz",
        [("ok/a.txt", b"fine", {}), ("link", b"", {"type": tarfile.SYMTYPE, "linkname": "/"})],
    )
    with pytest.raises(DataError, match="'link' is a link"):
        extract_archive(archive, tmp_path / "out", keep=r"ok/a\.txt")
    assert not (tmp_path / "out").exists()


def test_every_tar_member_goes_through_the_data_filter_before_writing(
    tmp_path, monkeypatch
) -> None:
    seen = []
    real = tarfile.data_filter

    def spy(member: tarfile.TarInfo, dest_path: str) -> tarfile.TarInfo:
        seen.append((member.name, dest_path, (tmp_path / "out").exists()))
        return real(member, dest_path)

    monkeypatch.setattr(tarfile, "data_filter", spy)
    archive = _tar(
        tmp_path / "a.tar.gz",
        [("d", b"", {"type": tarfile.DIRTYPE}), ("d/a.bin", b"1", {}), ("d/b.txt", b"2", {})],
    )
    extract_archive(archive, tmp_path / "out", keep=r"d/a\.bin")
    target = str(tmp_path / "out")
    assert seen == [(name, target, False) for name in ("d", "d/a.bin", "d/b.txt")]


def test_a_symlink_already_in_the_target_cannot_redirect_a_tar_member(tmp_path) -> None:
    """The data filter resolves each member's path on disk, so a link planted in the target
    beforehand cannot carry a plain-looking member outside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "out"
    target.mkdir()
    (target / "d").symlink_to(outside)
    archive = _tar(tmp_path / "a.tar.gz", [("d/a.txt", b"x", {})])
    with pytest.raises(DataError, match="'d/a.txt' would be written outside"):
        extract_archive(archive, target)
    assert list(outside.iterdir()) == []


def test_zip_traversal_and_symlinks_are_refused(tmp_path) -> None:
    traversal = tmp_path / "traversal.zip"
    with zipfile.ZipFile(traversal, "w") as archive:
        archive.writestr("../outside.txt", b"x")
    with pytest.raises(DataError, match="path traversal"):
        extract_archive(traversal, tmp_path / "out")
    absolute = tmp_path / "absolute.zip"
    with zipfile.ZipFile(absolute, "w") as archive:
        archive.writestr("/tmp/absolute.txt", b"x")
    with pytest.raises(DataError, match="'/tmp/absolute.txt' would be written outside"):
        extract_archive(absolute, tmp_path / "out")
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as archive:
        info = zipfile.ZipInfo("evil")
        info.external_attr = (0o120777) << 16  # a symlink, as `zip --symlinks` stores it
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(DataError, match="is a link"):
        extract_archive(link, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_archive_that_expands_past_the_bound_is_refused(tmp_path) -> None:
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * (4 << 20))  # 4 MiB that compresses to ~4 KiB
    assert bomb.stat().st_size < 64 << 10
    with pytest.raises(DataError, match=r"expand to 4,194,304 bytes, over the bound of 1,048,576"):
        extract_archive(bomb, tmp_path / "out", max_bytes=1 << 20)
    assert not (tmp_path / "out").exists()


def test_a_zip_whose_headers_understate_a_member_yields_only_the_declared_bytes(
    tmp_path,
) -> None:
    """zipfile stops reading a member at the size its central directory declares, so a lying
    header cannot expand past the declared-size check, nor reach the running bound behind it."""
    bomb = tmp_path / "liar.zip"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("zeros.bin", b"\0" * (4 << 20))
    data = bytearray(bomb.read_bytes())
    # Rewrite the CRC and uncompressed size in both the local and the central header.
    for signature, crc_at, size_at in ((b"PK\x03\x04", 14, 22), (b"PK\x01\x02", 16, 24)):
        start = data.index(signature)
        data[start + crc_at : start + crc_at + 4] = struct.pack("<I", zlib.crc32(b"\0" * 10))
        data[start + size_at : start + size_at + 4] = struct.pack("<I", 10)
    bomb.write_bytes(bytes(data))
    paths = extract_archive(bomb, tmp_path / "out", max_bytes=1000)
    assert [p.stat().st_size for p in paths] == [10]


def test_a_member_stream_longer_than_its_header_is_stopped_by_the_running_bound(
    tmp_path, monkeypatch
) -> None:
    """Neither zipfile nor tarfile yields more than a member declares (see the test above), so
    the member opener is replaced by one that does, as a broken or future reader might."""
    archive = _tar(tmp_path / "ok.tar.gz", [("a.bin", b"\1" * 10, {})])
    monkeypatch.setattr(archives, "_tar_member", lambda _handle, _member: io.BytesIO(b"\1" * 5000))
    with pytest.raises(DataError, match=r"passed the bound of 1,000 bytes, more than its headers"):
        extract_archive(archive, tmp_path / "out", max_bytes=1000)
    assert (tmp_path / "out" / "a.bin").stat().st_size <= 1000


def test_only_kept_members_are_extracted(tmp_path) -> None:
    archive = _tar(
        tmp_path / "a.tar.gz",
        [("d/keep_1.bin", b"1", {}), ("d/skip.txt", b"2", {}), ("d/keep_2.bin", b"3", {})],
    )
    paths = extract_archive(archive, tmp_path / "out", keep=r"d/keep_\d\.bin")
    assert sorted(p.name for p in paths) == ["keep_1.bin", "keep_2.bin"]
    assert not (tmp_path / "out" / "d" / "skip.txt").exists()


def test_a_malicious_tar_served_as_cifar10_fails_the_download_and_keeps_old_raw(
    tmp_path, http_server
) -> None:
    served = tmp_path / "served"
    served.mkdir()
    archive = _tar(
        served / "cifar-10-binary.tar.gz",
        [("cifar-10-batches-bin/test_batch.bin", b"x" * 3073, {}), ("../../pwned", b"!", {})],
    )
    base = http_server(served)
    source = dataclasses.replace(
        CIFAR10.files[0], url=f"{base}/cifar-10-binary.tar.gz", sha256=sha256_of(archive)
    )
    raw = tmp_path / "raw" / "cifar10"
    raw.mkdir(parents=True)
    (raw / "previous.bin").write_bytes(b"good")
    spec = dataclasses.replace(CIFAR10, files=(source,))
    with pytest.raises(DataError, match="'../../pwned' would be written outside"):
        fetch_dataset(spec, raw, cache_dir=tmp_path / "cache")
    assert [p.name for p in raw.iterdir()] == ["previous.bin"]
    assert sorted(p.name for p in raw.parent.iterdir()) == ["cifar10"]
    assert not (tmp_path / "pwned").exists()
