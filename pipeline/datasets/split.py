"""Stratified, seeded train/val/test splits, stored as uint8 .npz files."""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from pipeline.errors import DataError

SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class Split:
    """One split as stored on disk: `x` uint8 (N, H, W, C), `y` int64 (N,), class names."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]


def split_indices(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Indices of each split, stratified by label so every class keeps its share everywhere."""
    indices = np.arange(len(labels))
    try:
        rest, test = train_test_split(
            indices, test_size=test_fraction, stratify=labels, random_state=seed
        )
        relative_val = val_fraction / (1.0 - test_fraction)
        train, val = train_test_split(
            rest, test_size=relative_val, stratify=labels[rest], random_state=seed
        )
    except ValueError as exc:
        raise DataError(_too_small(labels, val_fraction, test_fraction, str(exc))) from None
    splits = {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
    # Stratification rounds: a class of a handful of images can end up absent from a split.
    for name, chosen in splits.items():
        missing = np.setdiff1d(np.unique(labels), labels[chosen])
        if missing.size:
            reason = f"class(es) {missing.tolist()} would have no image in '{name}'"
            raise DataError(_too_small(labels, val_fraction, test_fraction, reason))
    return splits


def _too_small(labels: np.ndarray, val_fraction: float, test_fraction: float, reason: str) -> str:
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    return (
        f"cannot split {len(labels)} images (smallest class: {smallest} images) into "
        f"val_fraction={val_fraction} and test_fraction={test_fraction}: {reason}. "
        "Adjust the fractions in params.yaml (data.val_fraction, data.test_fraction) "
        "or add images to the smallest class."
    )


def save_split(path: Path, split: Split) -> None:
    """Write a split atomically: a reader never sees a half-written .npz."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    os.close(handle)
    try:
        # Class names as a fixed-width unicode array, so loading never needs pickle.
        np.savez(temporary, x=split.x, y=split.y, classes=np.array(split.classes, dtype=str))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def load_split(path: Path) -> Split:
    """Read a split written by `save_split`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return Split(x=data["x"], y=data["y"], classes=[str(c) for c in data["classes"]])
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the split stage first (dvc repro)") from None
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(
            f"{path} is not a valid split file ({exc}); rerun the split stage"
        ) from None


def load_splits(directory: Path) -> dict[str, Split]:
    """All three splits under `directory`."""
    return {name: load_split(directory / f"{name}.npz") for name in SPLITS}
