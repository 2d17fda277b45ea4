"""The one table of dataset sources: where each dataset's files come from and how to check them.

Import-light on purpose: `pipeline.config` reads DATASET_NAMES from here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceFile:
    """One file of a dataset: its name under data/raw/<dataset>/, where to get it, its SHA-256."""

    filename: str
    url: str
    sha256: str


@dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset before reading a byte of it."""

    name: str
    description: str
    files: tuple[SourceFile, ...]
    # (height, width, channels) when every image has it; None when images vary and are
    # resized once, at split, to `data.image_size`.
    native_shape: tuple[int, int, int] | None


# scikit-learn ships the UCI optical digits as a gzipped CSV (64 pixel columns in 0..16, then
# the label). Its "URL" is a package-resource address, resolved by the download stage.
DIGITS = DatasetSpec(
    name="digits",
    description="scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)",
    files=(
        SourceFile(
            filename="digits.csv.gz",
            url="package://sklearn/datasets/data/digits.csv.gz",
            sha256="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
        ),
    ),
    native_shape=(8, 8, 1),
)

DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (DIGITS,)}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)
