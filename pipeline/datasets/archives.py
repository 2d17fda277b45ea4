"""Safe extraction of downloaded archives (.zip, .tar, .tar.gz).

Every member is checked before a byte is written: no absolute path, no `..`, no link or device,
and the kept members together must fit under a size bound. The bound is enforced again while
writing, so a member whose header lies about its size cannot expand past it either.
"""

from __future__ import annotations

import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from pipeline.errors import DataError

_CHUNK = 1 << 20


@dataclass(frozen=True)
class _Member:
    name: str  # the path inside the archive, "/"-separated
    size: int  # the size the archive declares
    handle: object  # the ZipInfo or TarInfo, to open it


def extract_archive(
    archive: Path, target: Path, keep: str | None = None, max_bytes: int | None = None
) -> list[Path]:
    """Extract the regular files of `archive` whose path fully matches `keep` into `target`.

    Raises DataError naming the archive and the offending member when a member would land
    outside `target`, is a link or a device, or when the kept members exceed `max_bytes`.
    """
    pattern = re.compile(keep) if keep else None
    with _open_archive(archive) as (members, open_member):
        chosen = []
        for member in members:
            _check_member_path(archive, member.name)
            if pattern is None or pattern.fullmatch(member.name):
                chosen.append(member)
        declared = sum(member.size for member in chosen)
        if max_bytes is not None and declared > max_bytes:
            raise DataError(
                f"{archive}: the kept members would expand to {declared:,} bytes, over the "
                f"bound of {max_bytes:,}; the archive was not extracted. It is not the file "
                "this pipeline expects (or is an archive bomb)."
            )
        written_total = 0
        paths = []
        for member in chosen:
            destination = target.joinpath(*PurePosixPath(member.name).parts)
            destination.parent.mkdir(parents=True, exist_ok=True)
            with open_member(member) as source, open(destination, "wb") as sink:
                written_total = _bounded_copy(source, sink, written_total, max_bytes, archive)
            paths.append(destination)
    return paths


@contextmanager
def _open_archive(archive: Path) -> Iterator:
    """Yield (members, open_member) for a zip or tar archive, refusing links and devices."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            members = []
            for info in handle.infolist():
                if info.is_dir():
                    continue
                # Unix-made zips keep the file type in the high bits; 0 means "not recorded".
                file_type = (info.external_attr >> 16) & 0o170000
                if file_type not in (0, stat.S_IFREG):
                    raise DataError(
                        f"{archive}: member {info.filename!r} is a link or special file; "
                        "refusing to extract an archive with links"
                    )
                members.append(_Member(info.filename.replace("\\", "/"), info.file_size, info))
            yield members, lambda member: handle.open(member.handle)
        return
    try:
        handle = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{archive}: not a zip or tar archive ({exc})") from None
    with handle:
        members = []
        try:
            for info in handle:
                if info.isdir():
                    continue
                if not info.isfile():
                    kind = "link" if info.issym() or info.islnk() else "special file"
                    raise DataError(
                        f"{archive}: member {info.name!r} is a {kind}; refusing to extract an "
                        "archive with links or devices"
                    )
                members.append(_Member(info.name, info.size, info))
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{archive}: the archive is damaged ({exc})") from None
        yield members, lambda member: _tar_member(handle, member)


@contextmanager
def _tar_member(handle: tarfile.TarFile, member: _Member) -> Iterator[IO[bytes]]:
    stream = handle.extractfile(member.handle)
    if stream is None:  # pragma: no cover - only regular files reach here
        raise DataError(f"cannot read member {member.name!r}")
    with stream:
        yield stream


def _check_member_path(archive: Path, name: str) -> None:
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise DataError(
            f"{archive}: member {name!r} would be written outside the target folder; "
            "refusing to extract this archive (path traversal)"
        )


def _bounded_copy(
    source: IO[bytes], sink: IO[bytes], written: int, max_bytes: int | None, archive: Path
) -> int:
    try:
        while chunk := source.read(_CHUNK):
            written += len(chunk)
            if max_bytes is not None and written > max_bytes:
                raise DataError(
                    f"{archive}: extraction passed the bound of {max_bytes:,} bytes, more than "
                    "its headers declare; the archive was not extracted (an archive bomb?)"
                )
            sink.write(chunk)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise DataError(f"{archive}: the archive is damaged ({exc})") from None
    return written
