"""Fetching a dataset's source files into data/raw/<dataset>/, verified by SHA-256."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from importlib import resources
from pathlib import Path

from pipeline.datasets.sources import DatasetSpec, SourceFile
from pipeline.errors import DataError

logger = logging.getLogger(__name__)

PACKAGE_SCHEME = "package://"


def sha256_of(path: Path, chunk_size: int = 1 << 20) -> str:
    """The hex SHA-256 of a file, read in chunks so large archives stay out of memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def fetch_dataset(spec: DatasetSpec, raw_dir: Path) -> list[Path]:
    """Put every source file of `spec` under `raw_dir`, verified; return their paths."""
    raw_dir.mkdir(parents=True, exist_ok=True)
    return [fetch_file(source, raw_dir) for source in spec.files]


def fetch_file(source: SourceFile, target_dir: Path) -> Path:
    """Copy or download one file to `target_dir/source.filename` and check its SHA-256.

    The file is written under a temporary name and renamed only once verified, so a
    half-written or corrupt file never sits under its final name.
    """
    target = target_dir / source.filename
    if target.is_file() and sha256_of(target) == source.sha256:
        logger.info("%s already present and verified", target)
        return target
    if not source.url.startswith(PACKAGE_SCHEME):
        raise DataError(f"{source.url}: only package resources can be fetched in this version")
    origin = _package_resource(source.url)
    handle, temporary = tempfile.mkstemp(dir=target_dir, prefix=f".{source.filename}.")
    os.close(handle)
    try:
        shutil.copyfile(origin, temporary)
        actual = sha256_of(Path(temporary))
        if actual != source.sha256:
            raise DataError(
                f"checksum mismatch for {source.url}: expected SHA-256 {source.sha256}, "
                f"got {actual}; the file was not kept. Reinstall the package that provides it."
            )
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    logger.info("fetched %s -> %s", source.url, target)
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
