"""Stratified, seeded train/val/test splits: which image goes where (the store is
`pipeline.io`)."""

from __future__ import annotations

import numpy as np

from pipeline.errors import DataError
from pipeline.io import SPLITS


def allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Share `total` among classes in proportion to `counts` (largest remainder), never giving
    a class more than it has: the per-class sizes of a stratified sample."""
    counts = np.asarray(counts, dtype=np.int64)
    if total <= 0 or counts.sum() == 0:
        return np.zeros_like(counts)
    quotas = counts * (total / counts.sum())
    shares = np.minimum(np.floor(quotas).astype(np.int64), counts)
    # Hand out what rounding left, biggest fractional part first; ties go to the lower label.
    order = np.argsort(-(quotas - shares), kind="stable")
    for label in order:
        if shares.sum() >= total:
            break
        if shares[label] < counts[label]:
            shares[label] += 1
    return shares


def _stratified_take(
    labels: np.ndarray, positions: np.ndarray, size: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split `positions` into (taken, rest): `size` of them, stratified by label, at random."""
    classes, counts = np.unique(labels[positions], return_counts=True)
    shares = allocate(counts, size)
    taken, rest = [], []
    for label, share in zip(classes, shares, strict=True):
        members = rng.permutation(positions[labels[positions] == label])
        taken.append(members[:share])
        rest.append(members[share:])
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


def split_indices(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> dict[str, np.ndarray]:
    """Indices of each split, stratified by label so every class keeps its share everywhere.

    Plain NumPy (no scikit-learn) on purpose: importing sklearn.model_selection costs the split
    stage about 190 MB of memory, more than CIFAR-10's whole image array.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    everything = np.arange(len(labels))
    test, rest = _stratified_take(labels, everything, round(test_fraction * len(labels)), rng)
    val, train = _stratified_take(labels, rest, round(val_fraction * len(labels)), rng)
    splits = {"train": train, "val": val, "test": test}
    _check_every_class_everywhere(labels, splits, val_fraction, test_fraction)
    return splits


def _check_every_class_everywhere(
    labels: np.ndarray, splits: dict[str, np.ndarray], val_fraction: float, test_fraction: float
) -> None:
    # Stratification rounds: a class of a handful of images can end up absent from a split.
    for name, chosen in splits.items():
        missing = np.setdiff1d(np.unique(labels), labels[chosen])
        if missing.size:
            reason = f"class(es) {missing.tolist()} would have no image in '{name}'"
            raise DataError(_too_small(labels, val_fraction, test_fraction, reason))


def plan_split(
    labels: np.ndarray,
    pools: np.ndarray | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """The split of every image, and the fractions it aims at (for the data gate).

    Without `pools`, a stratified three-way split by the fractions. With them, the source's
    own assignment: its test set stays the test set; val is the source's own val set if it has
    one, else a stratified `val_fraction` of all images carved from its train set.
    """
    if pools is None:
        splits = split_indices(labels, val_fraction, test_fraction, seed)
        return splits, {
            "train": round(1.0 - val_fraction - test_fraction, 6),
            "val": val_fraction,
            "test": test_fraction,
        }
    splits = {name: np.flatnonzero(pools == name) for name in SPLITS}
    if not splits["val"].size:
        wanted = round(val_fraction * len(labels))
        if wanted >= len(splits["train"]):
            raise DataError(
                f"data.val_fraction={val_fraction} asks for {wanted} validation images, but the "
                f"source's training set holds only {len(splits['train'])}; lower it"
            )
        rng = np.random.default_rng(seed)
        splits["val"], splits["train"] = _stratified_take(labels, splits["train"], wanted, rng)
    _check_every_class_everywhere(labels, splits, val_fraction, test_fraction)
    total = len(labels)
    return splits, {name: round(len(chosen) / total, 6) for name, chosen in splits.items()}


def stratified_subset(
    labels: np.ndarray, pools: np.ndarray | None, max_images: int | None, seed: int
) -> np.ndarray:
    """At most `max_images` indices, stratified by label and by source split, sorted.

    Each source split (e.g. MNIST's train and test) shrinks by the same ratio, so a subset of a
    dataset with a fixed test set still has one.
    """
    everything = np.arange(len(labels))
    if max_images is None or max_images >= len(labels):
        return everything
    rng = np.random.default_rng(seed)
    groups = [everything] if pools is None else [np.flatnonzero(pools == p) for p in SPLITS]
    groups = [group for group in groups if group.size]
    sizes = allocate(np.array([len(group) for group in groups]), max_images)
    taken = [
        _stratified_take(labels, group, int(size), rng)[0]
        for group, size in zip(groups, sizes, strict=True)
    ]
    return np.sort(np.concatenate(taken))


def _too_small(labels: np.ndarray, val_fraction: float, test_fraction: float, reason: str) -> str:
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    return (
        f"cannot split {len(labels)} images (smallest class: {smallest} images) into "
        f"val_fraction={val_fraction} and test_fraction={test_fraction}: {reason}. "
        "Adjust the fractions in params.yaml (data.val_fraction, data.test_fraction) "
        "or add images to the smallest class."
    )
