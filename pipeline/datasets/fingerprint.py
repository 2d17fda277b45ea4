"""What a dataset's source is right now, to tell whether there is new data to retrain on.

A downloaded dataset is identified by its resolved source files (URL and SHA-256): a new
release, a mirror with another checksum, or an edited `data.sources` entry changes it. A folder
of images is identified by the content hash of each image file, so files added, removed or
modified count, and a mere `touch` does not.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipeline.datasets.fetch import resolve_source, source_overrides
from pipeline.datasets.folders import scan_image_folder
from pipeline.datasets.sources import DATASETS
from pipeline.store import sha256_of


@dataclass(frozen=True)
class DataChange:
    """How the current source differs from the one last trained on."""

    changed: bool
    summary: str
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    modified: tuple[str, ...] = ()


def fingerprint_dataset(
    dataset: str,
    image_folder: Path,
    mirror: str | None,
    sources: dict,
    follow_links: bool = False,
) -> dict:
    """The source's identity: {"dataset", "files": {name: sha256}} (see the module docstring).

    `follow_links` is data.follow_links: the files the download stage would snapshot."""
    if dataset == "image_folder":
        scan = scan_image_folder(image_folder, follow_links=follow_links)
        files = {
            str(path.relative_to(image_folder)): sha256_of(path)
            for images in scan.files.values()
            for path in images
        }
        return {"dataset": dataset, "folder": str(image_folder), "files": files}
    spec = DATASETS[dataset]
    override = source_overrides(sources).get(dataset)
    files = {}
    for source in spec.files:
        resolved = resolve_source(spec, source, mirror, override)
        files[resolved.filename] = resolved.sha256
    return {"dataset": dataset, "files": files}


def compare_fingerprints(previous: dict | None, current: dict) -> DataChange:
    """What changed between the data last trained on and the data there now."""
    if previous is None:
        return DataChange(True, "no record of the data last trained on")
    if previous.get("dataset") != current["dataset"]:
        return DataChange(
            True, f"the dataset changed from {previous.get('dataset')} to {current['dataset']}"
        )
    old, new = previous.get("files", {}), current["files"]
    added = tuple(sorted(set(new) - set(old)))
    removed = tuple(sorted(set(old) - set(new)))
    modified = tuple(sorted(name for name in set(old) & set(new) if old[name] != new[name]))
    if not (added or removed or modified):
        return DataChange(
            False, f"{current['dataset']}: no new data ({len(new)} file(s) unchanged)"
        )
    parts = [
        f"{len(names)} {label}"
        for names, label in ((added, "added"), (removed, "removed"), (modified, "modified"))
        if names
    ]
    noun = "image(s)" if current["dataset"] == "image_folder" else "source file(s)"
    return DataChange(
        True, f"{current['dataset']}: {', '.join(parts)} {noun}", added, removed, modified
    )
