"""Folders of images, one subfolder per class: the user's own dataset, and the layout that the
malaria and cats-vs-dogs archives unpack to."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.sources import IMAGE_EXTENSIONS
from pipeline.errors import DataError
from pipeline.store import atomic_directory, copy_file


@dataclass(frozen=True)
class FolderScan:
    """The images of a class-per-subfolder tree: class names (sorted) and files per class."""

    root: Path
    files: dict[str, list[Path]]
    ignored: int

    @property
    def class_names(self) -> list[str]:
        return list(self.files)


def scan_image_folder(root: Path) -> FolderScan:
    """List the image files of each class subfolder of `root`, checking the layout.

    Classes are the non-hidden subfolders, sorted by name (so label numbers are stable); their
    image files are found at any depth. Raises DataError naming the folder when it is missing,
    has fewer than two classes, or a class holds no image.
    """
    hint = "data.image_folder must be a folder with one subfolder of images per class"
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist ({hint})")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        found = ", ".join(p.name for p in classes) or "none"
        raise DataError(
            f"image folder {root} has {len(classes)} class subfolder(s) (found: {found}); "
            f"a classifier needs at least two ({hint})"
        )
    files: dict[str, list[Path]] = {}
    ignored = 0
    for folder in classes:
        found_files = sorted(
            path
            for path in folder.rglob("*")
            if path.is_file()
            and not any(part.startswith(".") for part in path.relative_to(folder).parts)
        )
        images = [path for path in found_files if path.suffix.lower() in IMAGE_EXTENSIONS]
        ignored += len(found_files) - len(images)
        files[folder.name] = images
    empty = [name for name, images in files.items() if not images]
    if empty:
        raise DataError(
            f"image folder {root}: class subfolder(s) {', '.join(empty)} hold no image "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the subfolder"
        )
    return FolderScan(root=root, files=files, ignored=ignored)


def snapshot_image_folder(root: Path, raw_dir: Path) -> FolderScan:
    """Copy the image files of `root` into `raw_dir`, keeping class/relative paths, so that DVC
    versions exactly what was trained on. Non-image files are left out."""
    scan = scan_image_folder(root)
    with atomic_directory(raw_dir) as staging:
        for class_name, images in scan.files.items():
            for path in images:
                copy_file(path, staging / class_name / path.relative_to(root / class_name))
    return FolderScan(
        root=raw_dir,
        files={
            name: [raw_dir / name / p.relative_to(root / name) for p in images]
            for name, images in scan.files.items()
        },
        ignored=scan.ignored,
    )
