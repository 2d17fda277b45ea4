"""Schema checks on the prepared splits: the gate before any training time is spent.

Each check returns failures that name the split and the check, so the stage can say exactly
what is wrong and which params key relaxes it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pipeline.datasets.split import Split


@dataclass(frozen=True)
class CheckFailure:
    split: str
    check: str
    message: str

    def __str__(self) -> str:
        return f"split '{self.split}': check '{self.check}' failed: {self.message}"


def check_splits(splits: dict[str, Split], min_images_per_class: int) -> list[CheckFailure]:
    """Run every schema check over every split; an empty list means the data passed."""
    failures: list[CheckFailure] = []
    reference = next(iter(splits.values()))
    for name, split in splits.items():
        failures += _check_arrays(name, split)
        if split.classes != reference.classes:
            failures.append(
                CheckFailure(name, "classes", f"classes {split.classes} != {reference.classes}")
            )
        if (
            split.x.ndim == 4
            and reference.x.ndim == 4
            and split.x.shape[1:] != reference.x.shape[1:]
        ):
            failures.append(
                CheckFailure(
                    name,
                    "image_shape",
                    f"images are {split.x.shape[1:]}, "
                    f"but the first split's are {reference.x.shape[1:]}",
                )
            )
        failures += _check_labels(name, split, min_images_per_class)
    return failures


def _check_arrays(name: str, split: Split) -> list[CheckFailure]:
    failures = []
    # Float arrays saved by mistake would be rescaled twice by the models' uint8 preprocessing.
    if split.x.dtype != np.uint8:
        detail = ""
        if np.issubdtype(split.x.dtype, np.floating):
            nans = int(np.isnan(split.x).sum())
            detail = f" (NaN: {nans}, range {np.nanmin(split.x)}..{np.nanmax(split.x)})"
        failures.append(
            CheckFailure(name, "image_dtype", f"x is {split.x.dtype}, expected uint8{detail}")
        )
    # Models take (height, width, channels) images with 1 or 3 channels.
    if split.x.ndim != 4 or split.x.shape[-1] not in (1, 3):
        failures.append(
            CheckFailure(
                name, "image_shape", f"x has shape {split.x.shape}, expected (N, H, W, 1 or 3)"
            )
        )
    if split.y.dtype != np.int64 or split.y.ndim != 1:
        failures.append(
            CheckFailure(
                name, "label_dtype", f"y is {split.y.dtype} {split.y.shape}, expected int64 (N,)"
            )
        )
    if len(split.x) != len(split.y):
        failures.append(
            CheckFailure(name, "row_count", f"{len(split.x)} images but {len(split.y)} labels")
        )
    return failures


def _check_labels(name: str, split: Split, min_images_per_class: int) -> list[CheckFailure]:
    failures = []
    num_classes = len(split.classes)
    # A label outside the class list would crash training or silently train a wrong head.
    out_of_range = np.flatnonzero((split.y < 0) | (split.y >= num_classes))
    if out_of_range.size:
        failures.append(
            CheckFailure(
                name,
                "label_range",
                f"{out_of_range.size} labels outside 0..{num_classes - 1}, e.g. indices "
                f"{out_of_range[:5].tolist()} with labels {split.y[out_of_range[:5]].tolist()}",
            )
        )
    # An empty class in a split makes its metrics undefined (and hides a broken split).
    counts = np.bincount(split.y[(split.y >= 0) & (split.y < num_classes)], minlength=num_classes)
    for label in np.flatnonzero(counts < min_images_per_class):
        failures.append(
            CheckFailure(
                name,
                "class_present",
                f"class {label} ({split.classes[label]!r}) has {counts[label]} images, fewer than "
                f"validate.min_images_per_class={min_images_per_class}",
            )
        )
    return failures


def summarize(splits: dict[str, Split], failures: list[CheckFailure]) -> dict:
    """The summary the stage writes as DVC metrics: counts, shape and the failures."""
    return {
        "passed": not failures,
        "rows": {name: int(len(split.y)) for name, split in splits.items()},
        "num_classes": len(next(iter(splits.values())).classes),
        "image_shape": list(next(iter(splits.values())).x.shape[1:]),
        "failures": len(failures),
        "failed_checks": [asdict(failure) for failure in failures],
    }
