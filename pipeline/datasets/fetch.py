"""Fetching a dataset's source files into data/raw/<dataset>/, verified by SHA-256.

Remote files are downloaded with pooch into a cache shared by every run and project
(`PIPELINE_DATA_CACHE`, by default the user's cache folder): with a progress bar, retries, and
under a temporary name until the checksum matches. Archives are then extracted safely into the
raw folder; other files are copied there. The raw folder itself is built beside its final place
and swapped in only when complete, so a failure leaves the previous one as it was.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pipeline.datasets.archives import extract_archive
from pipeline.datasets.sources import DatasetSpec, SourceFile
from pipeline.errors import DataError
from pipeline.store import atomic_directory, atomic_write, copy_file, sha256_of

logger = logging.getLogger(__name__)

PACKAGE_SCHEME = "package://"
FILE_SCHEME = "file://"
CACHE_ENV = "PIPELINE_DATA_CACHE"
DEFAULT_RETRIES = 3
DEFAULT_TIMEOUT = 60.0


@dataclass(frozen=True)
class SourceOverride:
    """A user's replacement for a table entry: another URL (a mirror) and, only where the table
    has none, the checksum."""

    url: str | None = None
    sha256: str | None = None


def source_overrides(sources: Mapping[str, object]) -> dict[str, SourceOverride]:
    """The `data.sources` block (objects with `url` and `sha256`) as plain overrides."""
    return {
        name: SourceOverride(url=source.url, sha256=source.sha256)
        for name, source in sources.items()
    }


def data_cache_dir() -> Path:
    """Where downloads are kept between runs: $PIPELINE_DATA_CACHE, else the user cache."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    import pooch

    return Path(pooch.os_cache("image-pipeline"))


def resolve_source(
    spec: DatasetSpec,
    source: SourceFile,
    mirror: str | None = None,
    override: SourceOverride | None = None,
) -> SourceFile:
    """The source with the user's URL and checksum applied.

    Precedence: `data.sources.<dataset>.url` (a file URL for a one-file dataset, or a folder URL
    ending in "/" to which the file name is appended), then `data.mirror` (a base URL holding
    <dataset>/<file>), then the table's URL.
    """
    url, sha256 = source.url, source.sha256
    if override is not None and override.url:
        url = override.url + source.filename if override.url.endswith("/") else override.url
    elif mirror:
        url = f"{mirror.rstrip('/')}/{spec.name}/{source.filename}"
    if override is not None and override.sha256:
        sha256 = override.sha256
    if url is None:
        raise DataError(
            f"dataset {spec.name!r} has no public address recorded for {source.filename}: set "
            f"data.sources.{spec.name}.url (and .sha256) in params.yaml, or data.mirror"
        )
    if sha256 is None:
        raise DataError(
            f"dataset {spec.name!r}: {source.filename} has no recorded SHA-256, and files are "
            f"never used unverified. Set data.sources.{spec.name}.sha256 in params.yaml to the "
            "checksum published with the file."
        )
    return dataclasses.replace(source, url=url, sha256=sha256)


def fetch_dataset(
    spec: DatasetSpec,
    raw_dir: Path,
    *,
    mirror: str | None = None,
    overrides: Mapping[str, SourceOverride] | None = None,
    cache_dir: Path | None = None,
    retries: int = DEFAULT_RETRIES,
    timeout: float = DEFAULT_TIMEOUT,
) -> list[Path]:
    """Put every source file of `spec` into `raw_dir`, verified, extracted where it is an
    archive; return the paths written. `raw_dir` is replaced only once all of it is ready."""
    override = (overrides or {}).get(spec.name)
    sources = [resolve_source(spec, source, mirror, override) for source in spec.files]
    cache = (cache_dir or data_cache_dir()) / spec.name
    written: list[Path] = []
    with atomic_directory(raw_dir) as staging:
        for source in sources:
            cached = fetch_file(source, cache, retries=retries, timeout=timeout)
            if source.extract:
                written += extract_archive(cached, staging, source.keep, source.max_bytes)
            else:
                written.append(copy_file(cached, staging / source.filename))
        written = [raw_dir / path.relative_to(staging) for path in written]
    return written


def fetch_file(
    source: SourceFile,
    cache_dir: Path,
    *,
    retries: int = DEFAULT_RETRIES,
    timeout: float = DEFAULT_TIMEOUT,
) -> Path:
    """The verified local copy of one source file, downloaded into `cache_dir` if needed.

    A cached copy whose checksum matches is reused; one that does not is downloaded again.
    """
    if source.url is None or source.sha256 is None:
        raise DataError(f"{source.filename}: no URL or checksum (see resolve_source)")
    cache_dir.mkdir(parents=True, exist_ok=True)
    if source.url.startswith(PACKAGE_SCHEME):
        return _fetch_package_resource(source, cache_dir)
    return _download(source, cache_dir, retries, timeout)


def _download(source: SourceFile, cache_dir: Path, retries: int, timeout: float) -> Path:
    import pooch
    import requests

    registry = pooch.create(
        path=cache_dir,
        base_url="",
        registry={source.filename: f"sha256:{source.sha256}"},
        urls={source.filename: source.url},
        retry_if_failed=retries,
    )
    downloader: _HashingDownloader | None = None
    try:
        downloader = _HashingDownloader(_downloader(source.url, timeout))
        return Path(registry.fetch(source.filename, downloader=downloader))
    except ValueError as exc:
        # pooch raises ValueError for a checksum mismatch, among other things; the hash we
        # computed ourselves tells the two apart without parsing pooch's wording.
        actual = downloader.sha256 if downloader is not None else None
        if actual is None or actual == (source.sha256 or "").lower():
            raise DataError(f"{source.url}: {exc}") from None
        raise DataError(
            f"checksum mismatch for {source.url}: expected SHA-256 {source.sha256}, got "
            f"{actual}. The download was deleted. A mirror must serve the identical file; "
            "if this persists, the file at that URL has changed."
        ) from None
    except requests.exceptions.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else "?"
        raise DataError(
            f"{source.url} answered HTTP {status} after {retries + 1} attempt(s): the file is not "
            "there. Check the URL (data.sources.<dataset>.url or data.mirror in params.yaml)."
        ) from None
    except (
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
    ) as exc:
        raise DataError(
            f"the download of {source.url} was cut off before the end (truncated) in each of "
            f"{retries + 1} attempt(s): {_reason(exc)}. Nothing was kept; try again later."
        ) from None
    except requests.exceptions.RequestException as exc:
        raise DataError(
            f"cannot reach {source.url} after {retries + 1} attempt(s): {_reason(exc)}. Check the "
            "network, or point data.mirror / data.sources.<dataset>.url at a reachable copy."
        ) from None
    except OSError as exc:
        raise DataError(f"cannot fetch {source.url}: {exc}") from None


class _HashingDownloader:
    """A pooch downloader that records the SHA-256 of the file the wrapped one wrote, so that a
    checksum mismatch can name the hash actually received."""

    def __init__(self, downloader: Callable[..., object]) -> None:
        self._downloader = downloader
        self.sha256: str | None = None

    def __call__(
        self, url: str, output_file: str, pooch: object, check_only: bool = False
    ) -> object:
        """Run the real download into `output_file`, then hash what it wrote."""
        if check_only:
            return self._downloader(url, output_file, pooch, check_only=True)
        # Cleared first, so a failed attempt never leaves the hash of an earlier one behind.
        self.sha256 = None
        result = self._downloader(url, output_file, pooch)
        self.sha256 = sha256_of(Path(output_file))
        return result


def _downloader(url: str, timeout: float) -> Callable[..., object]:
    import pooch

    if url.startswith(FILE_SCHEME):
        return _copy_download
    if url.startswith(("http://", "https://")):
        return pooch.HTTPDownloader(progressbar=True, chunk_size=1 << 20, timeout=timeout)
    return pooch.downloaders.choose_downloader(url, progressbar=True)


def _copy_download(
    url: str, output_file: str, _pooch: object, check_only: bool = False
) -> bool | None:
    """A pooch downloader for file:// URLs: a mirror on a mounted share."""
    origin = Path(url.removeprefix(FILE_SCHEME))
    if check_only:
        return origin.is_file()
    if not origin.is_file():
        raise DataError(f"{url}: no such file")
    shutil.copyfile(origin, output_file)
    return None


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text if len(text) < 300 else text[:300] + "..."


def _fetch_package_resource(source: SourceFile, cache_dir: Path) -> Path:
    """Copy a file installed with a Python package (package://<package>/<path>), verified."""
    origin = _package_resource(source.url or "")
    target = cache_dir / source.filename
    if target.is_file() and sha256_of(target) == source.sha256:
        return target
    with atomic_write(target, "wb") as sink, open(origin, "rb") as stream:
        shutil.copyfileobj(stream, sink)
        sink.flush()
        actual = sha256_of(Path(sink.name))
        if actual != source.sha256:
            raise DataError(
                f"checksum mismatch for {source.url}: expected SHA-256 {source.sha256}, "
                f"got {actual}; the file was not kept. Reinstall the package that provides it."
            )
    return target


def _package_resource(url: str) -> Path:
    """Resolve package://<package>/<path> to a file installed with that package."""
    package, _, relative = url.removeprefix(PACKAGE_SCHEME).partition("/")
    try:
        path = Path(str(resources.files(package).joinpath(relative)))
    except ModuleNotFoundError as exc:
        raise DataError(f"{url}: package {package!r} is not installed") from exc
    if not path.is_file():
        raise DataError(f"{url}: no such file in the installed package {package!r}")
    return path
