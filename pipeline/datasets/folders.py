"""Folders of images, one subfolder per class: the user's own dataset, and the layout that the
malaria and cats-vs-dogs archives unpack to.

A folder is read as found, except where it would leak or hang: a symlink (to a file or a
folder) that resolves outside the folder is skipped unless `follow_links`, a link that resolves
to nothing (broken, or a loop) is skipped, and a folder already being walked is not entered
again (a link to a parent). The snapshot copies a file only once its first bytes say it is an
image, and writes what it skipped beside the images (SNAPSHOT_SKIPPED_FILE), where the split
stage reads it into reports/data/skipped.csv.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.columns import class_name_problems
from pipeline.datasets.sources import IMAGE_EXTENSIONS, IMAGE_SIGNATURES
from pipeline.errors import DataError
from pipeline.store import atomic_directory, atomic_write

logger = logging.getLogger(__name__)

LINK_OUTSIDE = "link outside the folder"
"""The reason a symlink that resolves outside the image folder is skipped."""
BROKEN_LINK = "link to nothing (broken, or a loop)"
NOT_AN_IMAGE = "not an image (its first bytes are not those of a PNG, JPEG, GIF, BMP or WebP)"
SNAPSHOT_SKIPPED_FILE = ".skipped.csv"
"""Written at the top of a snapshot: the files of the user's folder it left out and why, in the
columns of reports/data/skipped.csv. Hidden, so it is never taken for a class."""
SKIPPED_HEADER = ("path", "reason")
_SIGNATURE_BYTES = 16


@dataclass(frozen=True)
class FolderScan:
    """The images of a class-per-subfolder tree: class names (sorted), files per class (paths
    as found under `root`), how many non-image files were ignored, and what was skipped:
    (path relative to `root`, reason)."""

    root: Path
    files: dict[str, list[Path]]
    ignored: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        return list(self.files)


def check_class_names(classes: Sequence[str], folder: Path) -> None:
    """Raise DataError naming every class subfolder of `folder` whose name no model could
    answer with (see pipeline.columns): otherwise the whole pipeline would run before the
    registration refused it."""
    problems = class_name_problems(classes)
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise DataError(
            f"image folder {folder} (data.image_folder) has class subfolder names a model "
            f"cannot answer with; rename these folders:\n{lines}"
        )


def scan_image_folder(root: Path, follow_links: bool = False) -> FolderScan:
    """List the image files of each class subfolder of `root`, checking the layout.

    Classes are the non-hidden subfolders, sorted by name (so label numbers are stable); their
    image files are found at any depth. Symlinks that resolve outside `root` are skipped (and
    listed) unless `follow_links`. Raises DataError naming the folder when it is missing, has
    fewer than two classes, or a class holds no image.
    """
    root = Path(root)
    hint = "data.image_folder must be a folder with one subfolder of images per class"
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist ({hint})")
    real_root = os.path.realpath(root)
    skipped: list[tuple[str, str]] = []
    classes = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_symlink():
            reason = _link_problem(entry, real_root, follow_links)
            if reason is not None:
                # Only a link to a folder would have been a class; other files are ignored.
                if entry.is_dir():
                    skipped.append((entry.name, reason))
                continue
        if entry.is_dir():
            classes.append(entry)
    if len(classes) < 2:
        found = ", ".join(p.name for p in classes) or "none"
        raise DataError(
            f"image folder {root} has {len(classes)} class subfolder(s) (found: {found}); "
            f"a classifier needs at least two ({hint})" + _skipped_note(skipped)
        )
    # Here rather than only in check_params: DVC re-runs check_params when params.yaml changes,
    # not when a folder named `error` is added, and download, split and every training would
    # run before the registration refused the name.
    check_class_names([folder.name for folder in classes], root)
    files: dict[str, list[Path]] = {}
    ignored = 0
    for folder in classes:
        found_files = _walk_files(folder, root, real_root, follow_links, skipped)
        images = [path for path in found_files if path.suffix.lower() in IMAGE_EXTENSIONS]
        ignored += len(found_files) - len(images)
        files[folder.name] = images
    empty = [name for name, images in files.items() if not images]
    if empty:
        raise DataError(
            f"image folder {root}: class subfolder(s) {', '.join(empty)} hold no image "
            f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the subfolder"
            + _skipped_note([item for item in skipped if item[0].split("/")[0] in empty])
        )
    return FolderScan(root=root, files=files, ignored=ignored, skipped=sorted(skipped))


def _walk_files(
    folder: Path,
    root: Path,
    real_root: str,
    follow_links: bool,
    skipped: list[tuple[str, str]],
) -> list[Path]:
    """The non-hidden files under the class `folder`, sorted; links checked on the way.

    A folder whose real path is one of the folders being walked (a link to a parent) is not
    entered again, and no real folder is walked twice for one class, so links can neither loop
    nor multiply the walk; a file reached under two names is listed under both."""
    found: list[Path] = []
    seen: set[tuple[int, int]] = set()
    pending = [folder]
    while pending:
        directory = pending.pop()
        try:
            info = directory.stat()
        except OSError:
            continue
        identity = (info.st_dev, info.st_ino)
        if identity in seen:
            continue
        seen.add(identity)
        try:
            # iterdir, not scandir and `/`: it builds child paths without parsing (and
            # interning) every name again, which matters on folders of 100,000 files.
            entries = sorted(directory.iterdir())
        except OSError as exc:
            skipped.append((_relative(directory, root), f"folder not readable ({exc.strerror})"))
            continue
        for path in entries:
            if path.name.startswith("."):
                continue
            if path.is_symlink():
                reason = _link_problem(path, real_root, follow_links)
                if reason is not None:
                    # A broken link whose name is no image's is as ignorable as any other file.
                    if reason != BROKEN_LINK or path.name.lower().endswith(IMAGE_EXTENSIONS):
                        skipped.append((_relative(path, root), reason))
                    continue
            try:
                mode = path.stat().st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                pending.append(path)
            elif stat.S_ISREG(mode):
                found.append(path)
    return sorted(found)


def _link_problem(path: Path, real_root: str, follow_links: bool) -> str | None:
    """Why the symlink `path` is skipped, or None when it may be followed."""
    target = os.path.realpath(path)
    if not os.path.exists(target):
        return BROKEN_LINK
    if follow_links:
        return None
    inside = target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep)
    return None if inside else LINK_OUTSIDE


def _relative(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _skipped_note(skipped: list[tuple[str, str]]) -> str:
    if not skipped:
        return ""
    shown = "; ".join(f"{path}: {reason}" for path, reason in skipped[:5])
    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
    links = any(reason == LINK_OUTSIDE for _, reason in skipped)
    return f". Skipped: {shown}{more}" + (
        "; set data.follow_links: true to read links that lead outside it" if links else ""
    )


def is_image_signature(head: bytes) -> bool:
    """Whether the first bytes of a file are those of an image type the folder reader reads."""
    return any(head.startswith(signature) for signature in IMAGE_SIGNATURES) or (
        head[:4] == b"RIFF" and head[8:12] == b"WEBP"
    )


def snapshot_image_folder(root: Path, raw_dir: Path, *, follow_links: bool = False) -> FolderScan:
    """Copy the image files of `root` into `raw_dir`, keeping class/relative paths, so that DVC
    versions exactly what was trained on. Non-image files are left out; a file is copied only
    after its first bytes, read from the handle it is copied from, say it is an image. What was
    skipped is written to `raw_dir`/SNAPSHOT_SKIPPED_FILE."""
    root = Path(root)
    scan = scan_image_folder(root, follow_links=follow_links)
    real_root = os.path.realpath(root)
    skipped = list(scan.skipped)
    copied: dict[str, list[Path]] = {name: [] for name in scan.files}
    with atomic_directory(raw_dir) as staging:
        for class_name, images in scan.files.items():
            for path in images:
                relative = path.relative_to(root / class_name)
                reason = _copy_image(path, staging / class_name / relative, real_root, follow_links)
                if reason is None:
                    copied[class_name].append(raw_dir / class_name / relative)
                else:
                    skipped.append((_relative(path, root), reason))
        _check_no_class_emptied(root, copied, skipped)
        skipped.sort()
        # Written as they are (the split stage escapes cells when it writes skipped.csv).
        with atomic_write(staging / SNAPSHOT_SKIPPED_FILE) as stream:
            writer = csv.writer(stream, lineterminator="\n")
            writer.writerow(SKIPPED_HEADER)
            writer.writerows(skipped)
    if skipped:
        logger.warning(
            "%d file(s) of %s left out of the snapshot, e.g. %s: %s (all in %s)",
            len(skipped),
            root,
            *skipped[0],
            Path(raw_dir) / SNAPSHOT_SKIPPED_FILE,
        )
    return FolderScan(root=raw_dir, files=copied, ignored=scan.ignored, skipped=skipped)


def _copy_image(origin: Path, target: Path, real_root: str, follow_links: bool) -> str | None:
    """Copy `origin` to `target` if it is an image; else return why not. The real path is
    checked again and opened without following a last link, so a link swapped since the scan
    cannot slip an outside file in."""
    real = os.path.realpath(origin)
    if not follow_links and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        return LINK_OUTSIDE
    try:
        descriptor = os.open(real, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        return f"not readable ({exc.strerror})"
    with os.fdopen(descriptor, "rb") as source:
        if not stat.S_ISREG(os.fstat(source.fileno()).st_mode):
            return "not a regular file"
        head = source.read(_SIGNATURE_BYTES)
        if not is_image_signature(head):
            return NOT_AN_IMAGE
        with atomic_write(target, "wb") as sink:
            sink.write(head)
            shutil.copyfileobj(source, sink, 8 << 20)
    return None


def _check_no_class_emptied(
    root: Path, copied: dict[str, list[Path]], skipped: list[tuple[str, str]]
) -> None:
    """A class whose every file was left out would vanish from the snapshot and renumber the
    others: refuse, naming it and what was skipped."""
    empty = [name for name, files in copied.items() if not files]
    if empty:
        ours = [item for item in skipped if item[0].split("/")[0] in empty]
        raise DataError(
            f"image folder {root}: class(es) {', '.join(empty)} have no readable image; "
            f"{len(ours)} unreadable file(s) were left out"
            + _skipped_note(ours)
            + ". Add images to them or remove the class."
        )


def read_snapshot_skipped(raw_dir: Path) -> list[tuple[str, str]]:
    """What the snapshot of an image folder left out, as (path, reason) rows (none when the
    snapshot predates the list)."""
    path = Path(raw_dir) / SNAPSHOT_SKIPPED_FILE
    if not path.is_file():
        return []
    with open(path, newline="") as stream:
        rows = list(csv.reader(stream))
    if not rows or tuple(rows[0]) != SKIPPED_HEADER or any(len(row) != 2 for row in rows[1:]):
        raise DataError(f"{path} is not the snapshot's list of skipped files; rerun download")
    return [(path_cell, reason) for path_cell, reason in rows[1:]]
