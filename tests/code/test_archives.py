"""Safe extraction: nothing lands outside the target, no links, and a size bound holds."""

from __future__ import annotations

import dataclasses
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.datasets.archives import extract_archive
from pipeline.datasets.download import fetch_dataset, sha256_of
from pipeline.datasets.sources import CIFAR10
from pipeline.errors import DataError


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
        ("link", {"type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "is a link"),
        ("hard", {"type": tarfile.LNKTYPE, "linkname": "ok/a.txt"}, "is a link"),
        ("device", {"type": tarfile.CHRTYPE}, "special file"),
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


def test_zip_traversal_and_symlinks_are_refused(tmp_path) -> None:
    traversal = tmp_path / "traversal.zip"
    with zipfile.ZipFile(traversal, "w") as archive:
        archive.writestr("../outside.txt", b"x")
    with pytest.raises(DataError, match="path traversal"):
        extract_archive(traversal, tmp_path / "out")
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


def test_a_member_whose_header_understates_its_size_is_stopped(tmp_path) -> None:
    archive = _tar(tmp_path / "ok.tar.gz", [("a.bin", b"\1" * 2000, {})])
    # A tar member's declared size is what tarfile reads, so a lie cannot expand it; the
    # running count still applies across members.
    with pytest.raises(DataError, match="over the bound"):
        extract_archive(archive, tmp_path / "out", max_bytes=1000)


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
