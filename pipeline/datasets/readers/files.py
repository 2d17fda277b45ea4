"""Readers of datasets stored as image files in class folders: malaria, cats-vs-dogs and the
user's own folder. Pixels are decoded only for the images asked for, with a progress bar."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.datasets.folders import scan_image_folder
from pipeline.datasets.images import decode_many
from pipeline.datasets.readers.base import ImageFiles, ReadOptions, SourceIndex
from pipeline.errors import DataError


def _files_index(
    files: dict[str, list[Path]],
    root: Path,
    options: ReadOptions,
    class_names: list[str] | None = None,
    pool_of: Callable[[Path], str] | None = None,
) -> SourceIndex:
    paths = [path for images in files.values() for path in images]
    labels = np.concatenate(
        [np.full(len(images), label) for label, images in enumerate(files.values())]
    )
    pools = np.array([pool_of(path) for path in paths]) if pool_of else None

    def describe(index: int) -> str:
        return str(paths[index].relative_to(root))

    def load(indices: np.ndarray, out: np.ndarray) -> dict[int, str]:
        # The split stage calls this a chunk at a time and shows one progress bar for all.
        chosen = [paths[i] for i in indices]
        return decode_many(
            chosen,
            out,
            options.image_size,
            options.resize,
            lambda count: None,
            max_pixels=options.max_pixels,
        )

    return SourceIndex(
        labels,
        class_names or list(files),
        (options.image_size, options.image_size, 3),
        pools,
        describe,
        load,
        ImageFiles(paths, options),
    )


def read_image_folder(raw_dir: Path, options: ReadOptions | None = None) -> SourceIndex:
    """A snapshot of the user's folder: one subfolder per class, images at any depth."""
    scan = scan_image_folder(raw_dir)
    return _files_index(scan.files, raw_dir, options or ReadOptions())


def read_malaria(raw_dir: Path, options: ReadOptions | None = None) -> SourceIndex:
    """NIH cell images: cell_images/Parasitized and cell_images/Uninfected PNGs."""
    root = raw_dir / "cell_images"
    scan = scan_image_folder(root)
    return _files_index(scan.files, raw_dir, options or ReadOptions())


def read_cats_vs_dogs(raw_dir: Path, options: ReadOptions | None = None) -> SourceIndex:
    """PetImages/Cat and PetImages/Dog: numbers 0-999 train, 1000-1499 val, 1500-1999 test."""
    root = raw_dir / "PetImages"
    scan = scan_image_folder(root)
    if scan.class_names != ["Cat", "Dog"]:
        raise DataError(f"{root}: expected the subfolders Cat and Dog, found {scan.class_names}")

    def pool_of(path: Path) -> str:
        number = int(path.stem) if path.stem.isdigit() else -1
        if not 0 <= number < 2000:
            raise DataError(
                f"{path}: not one of the course's images 0.jpg-1999.jpg; rerun the download stage"
            )
        return "train" if number < 1000 else "val" if number < 1500 else "test"

    return _files_index(scan.files, raw_dir, options or ReadOptions(), ["cat", "dog"], pool_of)
