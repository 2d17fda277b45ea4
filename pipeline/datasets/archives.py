"""Safe extraction of downloaded archives (.zip, .tar, .tar.gz).

Every member is checked before a byte is written: no absolute path, no `..`, no link or device,
and the kept members together must fit under a size bound. Tar members go through the standard
library's `data` extraction filter (PEP 706); zip members through this module's own checks. The
bound is enforced again while writing, so a member whose stream yields more than its header
declares cannot expand past it either.
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
    with _open_archive(archive, target) as (members, open_member):
        chosen = [m for m in members if pattern is None or pattern.fullmatch(m.name)]
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
def _open_archive(archive: Path, target: Path) -> Iterator:
    """Yield (members, open_member) for a zip or tar archive once every member has passed the
    checks; members are the regular files only, directories being skipped."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as handle:
            members = [
                member for info in handle.infolist() if (member := _zip_member(archive, info))
            ]
            yield members, lambda member: handle.open(member.handle)
        return
    try:
        handle = tarfile.open(archive, "r:*")  # noqa: SIM115 - closed by the with below
    except (tarfile.TarError, OSError) as exc:
        raise DataError(f"{archive}: not a zip or tar archive ({exc})") from None
    with handle:
        try:
            members = [member for info in handle if (member := _checked_tar(archive, info, target))]
        except (tarfile.TarError, EOFError, OSError) as exc:
            raise DataError(f"{archive}: the archive is damaged ({exc})") from None
        yield members, lambda member: _tar_member(handle, member)


def _zip_member(archive: Path, info: zipfile.ZipInfo) -> _Member | None:
    """The member for a zip entry that passes the checks, None for a directory."""
    name = info.filename.replace("\\", "/")
    _check_member_path(archive, name)
    if info.is_dir():
        return None
    # Unix-made zips keep the file type in the high bits; 0 means "not recorded".
    file_type = (info.external_attr >> 16) & 0o170000
    if file_type not in (0, stat.S_IFREG):
        raise DataError(
            f"{archive}: member {info.filename!r} is a link or special file; "
            "refusing to extract an archive with links"
        )
    return _Member(name, info.file_size, info)


def _checked_tar(archive: Path, info: tarfile.TarInfo, target: Path) -> _Member | None:
    """The member for a tar entry that passes the `data` filter and the project's stricter
    rules, None for a directory."""
    if not hasattr(tarfile, "data_filter"):  # pragma: no cover - Python 3.11.0 to 3.11.3
        raise DataError(
            f"{archive}: extracting a tar archive safely needs Python 3.11.4 or newer "
            "(tarfile.data_filter, PEP 706)"
        )
    try:
        tarfile.data_filter(info, str(target))
    except (tarfile.AbsolutePathError, tarfile.OutsideDestinationError) as exc:
        raise _outside(archive, info.name, exc) from None
    except (tarfile.AbsoluteLinkError, tarfile.LinkOutsideDestinationError) as exc:
        raise _link(archive, info.name, exc) from None
    except tarfile.SpecialFileError as exc:
        raise DataError(
            f"{archive}: member {info.name!r} is a special file (a device or FIFO); refusing "
            f"to extract an archive with devices ({exc})"
        ) from None
    except tarfile.FilterError as exc:
        raise DataError(
            f"{archive}: member {info.name!r} was refused by the tar data filter ({exc}); "
            "refusing to extract this archive"
        ) from None
    # The filter strips a leading "/" and accepts a `..` that stays inside the target; this
    # project refuses both, as it does for zip files, since no honest dataset archive has them.
    _check_member_path(archive, info.name)
    if info.isdir():
        return None
    # The filter accepts links that stay inside the target; this project refuses every link,
    # since a dataset is plain files and a link could point at a file outside the kept set.
    # Every other type (device, FIFO, or one tarfile does not know) was refused by the filter.
    if info.issym() or info.islnk():
        raise _link(archive, info.name)
    return _Member(info.name, info.size, info)


def _outside(archive: Path, name: str, reason: Exception | None = None) -> DataError:
    detail = f" ({reason})" if reason is not None else ""
    return DataError(
        f"{archive}: member {name!r} would be written outside the target folder; "
        f"refusing to extract this archive (path traversal){detail}"
    )


def _link(archive: Path, name: str, reason: Exception | None = None) -> DataError:
    detail = f" ({reason})" if reason is not None else ""
    return DataError(
        f"{archive}: member {name!r} is a link; refusing to extract an archive with links{detail}"
    )


@contextmanager
def _tar_member(handle: tarfile.TarFile, member: _Member) -> Iterator[IO[bytes]]:
    stream = handle.extractfile(member.handle)
    if stream is None:  # pragma: no cover - only regular files reach here
        raise DataError(f"cannot read member {member.name!r}")
    with stream:
        yield stream


def _check_member_path(archive: Path, name: str) -> None:
    """Refuse absolute names (POSIX, Windows drive or UNC) and any `..` component."""
    path = PurePosixPath(name)
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name) or ".." in path.parts:
        raise _outside(archive, name)


def _bounded_copy(
    source: IO[bytes], sink: IO[bytes], written: int, max_bytes: int | None, archive: Path
) -> int:
    """Copy `source` into `sink`, stopping before the running total passes `max_bytes`."""
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
