"""Train/val/test splits that stay put: an image's split is a keyed hash of its content and
`data.seed` (the store is `pipeline.store`).

Adding, removing or editing other images never moves an image, and exact duplicates always
share a split. The one exception: an image of a class too small to reach every split by chance
may be moved into the split that lacks it, so only images of such tiny classes can ever move.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.errors import DataError
from pipeline.store import SPLITS, keyed_position

_TRAIN, _VAL, _TEST = (SPLITS.index(name) for name in ("train", "val", "test"))


@dataclass(frozen=True)
class SplitPlan:
    """Which images go where (sorted indices per split), the fractions the split aimed at (for
    the data gate) and how many images were moved so that small classes reach every split."""

    indices: dict[str, np.ndarray]
    fractions: dict[str, float]
    reassigned: int = 0


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


def allowed_deviation(total: int, fraction: float, reassigned: int = 0) -> int:
    """How far a split's count may stray from `fraction * total` under hashing: 4 binomial
    standard deviations (a data set outside has probability about 6e-5; another `data.seed`
    fixes it) plus the images moved to give small classes a place in every split."""
    spread = math.sqrt(max(total, 0) * fraction * (1.0 - fraction))
    return math.ceil(4.0 * spread) + int(reassigned)


def hash_positions(digests: np.ndarray, seed: int) -> np.ndarray:
    """Each image's keyed position in [0, 1) (`pipeline.store.keyed_position`), hashed once per
    distinct digest: duplicates get the same position, hence the same split."""
    distinct, inverse = np.unique(np.asarray(digests, dtype=str), return_inverse=True)
    positions = np.array([keyed_position(str(digest), seed) for digest in distinct])
    return positions[inverse.reshape(-1)] if len(distinct) else np.zeros(0)


def split_indices(
    labels: np.ndarray,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    digests: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Indices of each split by the content-keyed rule of `plan_split` (no source split).

    Without `digests` an image is known by its index alone: stable only while the order of the
    images is, which suits callers that hold labels but no images (tests, quick experiments).
    """
    labels = np.asarray(labels)
    if digests is None:
        digests = np.array([f"index:{index}" for index in range(len(labels))])
    plan = plan_split(labels, None, val_fraction, test_fraction, seed, digests=digests)
    return plan.indices


def plan_split(
    labels: np.ndarray,
    pools: np.ndarray | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    *,
    digests: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> SplitPlan:
    """The split of every image, and the fractions it aims at (for the data gate).

    An image's position u (a keyed hash of its digest and `seed`) decides: without `pools`,
    test if u < test_fraction, val if u < test_fraction + val_fraction, else train, the same
    thresholds for every class (stratified in expectation). With `pools`, the source's test
    set stays the test set and its val set, if any, the val set; else val is carved from its
    train pool: val if u < val_fraction * total / n_train_pool (val_fraction stays the share of
    all images; the threshold, and so each image's place, holds while the source's share of
    train images does). Only images of classes too small to reach every split can move.
    Errors name a class by its name in `class_names` (by its label without them).
    """
    labels = np.asarray(labels)
    digests = np.asarray(digests, dtype=str)
    if len(digests) != len(labels):
        raise DataError(
            f"plan_split got {len(digests)} digests for {len(labels)} labels; the split stage "
            "must hash every kept image once"
        )
    positions = hash_positions(digests, seed)
    total = len(labels)
    where = np.full(total, _TRAIN, dtype=np.int64)
    # The [low, high) interval of positions each split draws from, for splits the hash decides.
    intervals: dict[int, tuple[float, float]] = {}
    movable = np.ones(total, dtype=bool)
    if pools is None:
        edges = (test_fraction, test_fraction + val_fraction)
        intervals = {_TEST: (0.0, edges[0]), _VAL: (edges[0], edges[1]), _TRAIN: (edges[1], 1.0)}
        where[positions < edges[1]] = _VAL
        where[positions < edges[0]] = _TEST
    else:
        pools = np.asarray(pools)
        for code, name in enumerate(SPLITS):
            where[pools == name] = code
        train_pool = pools == "train"
        movable = train_pool.copy()
        if not (pools == "val").any():
            n_train = int(train_pool.sum())
            wanted = round(val_fraction * total)
            if wanted >= n_train:
                raise DataError(
                    f"data.val_fraction={val_fraction} asks for {wanted} validation images, "
                    f"but the source's training set holds only {n_train}; lower it"
                )
            cut = val_fraction * total / n_train
            intervals = {_VAL: (0.0, cut), _TRAIN: (cut, 1.0)}
            where[train_pool & (positions < cut)] = _VAL
        else:
            movable[:] = False
    name_of = _namer(class_names)
    reassigned = _reach_every_split(
        labels, digests, positions, where, movable, intervals, val_fraction, test_fraction, name_of
    )
    indices = {name: np.flatnonzero(where == code) for code, name in enumerate(SPLITS)}
    _check_every_class_everywhere(labels, indices, val_fraction, test_fraction, name_of)
    if pools is None:
        fractions = {
            "train": round(1.0 - val_fraction - test_fraction, 6),
            "val": val_fraction,
            "test": test_fraction,
        }
    else:
        fractions = {name: round(len(chosen) / total, 6) for name, chosen in indices.items()}
    return SplitPlan(indices, fractions, reassigned)


def _reach_every_split(
    labels: np.ndarray,
    digests: np.ndarray,
    positions: np.ndarray,
    where: np.ndarray,
    movable: np.ndarray,
    intervals: dict[int, tuple[float, float]],
    val_fraction: float,
    test_fraction: float,
    name_of: Callable[[int], str],
) -> int:
    """Move, in place, one image (all copies of its digest) of each class into each hashed
    split that lacks the class; return how many images moved.

    The image moved is the one whose position is nearest the split's interval, taken only from
    a split where the class keeps another distinct image, so the least hash order is undone.
    """
    moved = 0
    for label in np.unique(labels):
        of_class = (labels == label) & movable
        for target, (low, high) in intervals.items():
            if (of_class & (where == target)).any():
                continue
            donors = [
                code
                for code in intervals
                if code != target and len(np.unique(digests[of_class & (where == code)])) > 1
            ]
            candidates = of_class & np.isin(where, donors)
            if not candidates.any():
                names = [f"'{SPLITS[code]}'" for code in sorted(intervals)]
                shared = f"{', '.join(names[:-1])} and {names[-1]}"
                distinct = len(np.unique(digests[of_class]))
                reason = (
                    f"class {name_of(int(label))} would have no image in '{SPLITS[target]}': "
                    f"it has {distinct} distinct image(s) to share among {shared}, and each "
                    "needs one"
                )
                raise DataError(_too_small(labels, val_fraction, test_fraction, reason))
            rows = np.flatnonzero(candidates)
            # Distance of each candidate's position to the target interval; ties go to the
            # smaller digest, so the choice depends on the content alone.
            distance = np.maximum(low - positions[rows], positions[rows] - high)
            best = min(zip(distance.tolist(), digests[rows].tolist(), strict=True))[1]
            copies = movable & (digests == best)
            where[copies] = target
            moved += int(copies.sum())
    return moved


def _check_every_class_everywhere(
    labels: np.ndarray,
    splits: dict[str, np.ndarray],
    val_fraction: float,
    test_fraction: float,
    name_of: Callable[[int], str],
) -> None:
    # A source's own split can leave a class out of a split, which no hash decides and so no
    # move repairs; so can a digest shared by images of two classes, moved together.
    for name, chosen in splits.items():
        missing = np.setdiff1d(np.unique(labels), labels[chosen])
        if missing.size:
            names = ", ".join(name_of(int(label)) for label in missing)
            reason = f"class(es) {names} would have no image in '{name}'"
            raise DataError(_too_small(labels, val_fraction, test_fraction, reason))


def stratified_subset(
    labels: np.ndarray, pools: np.ndarray | None, max_images: int | None, seed: int
) -> np.ndarray:
    """At most `max_images` indices, stratified by label and by source split, sorted.

    Each source split (e.g. MNIST's train and test) shrinks by the same ratio, so a subset of a
    dataset with a fixed test set still has one. Unlike the split, the subset is drawn by index
    with `seed`: it changes when images are added, while each kept image's split does not.
    """
    everything = np.arange(len(labels))
    if max_images is None or max_images >= len(labels):
        return everything
    rng = np.random.default_rng(seed)
    groups = [everything] if pools is None else [np.flatnonzero(pools == p) for p in SPLITS]
    groups = [group for group in groups if group.size]
    sizes = allocate(np.array([len(group) for group in groups]), max_images)
    taken = [
        _stratified_take(labels, group, int(size), rng)
        for group, size in zip(groups, sizes, strict=True)
    ]
    return np.sort(np.concatenate(taken))


def _stratified_take(
    labels: np.ndarray, positions: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """`size` of `positions`, stratified by label, at random."""
    classes, counts = np.unique(labels[positions], return_counts=True)
    shares = allocate(counts, size)
    taken = [
        rng.permutation(positions[labels[positions] == label])[:share]
        for label, share in zip(classes, shares, strict=True)
    ]
    return np.sort(np.concatenate(taken))


def _namer(class_names: Sequence[str] | None) -> Callable[[int], str]:
    """How messages name a class: its name, or its label when no names were given."""
    if class_names is None:
        return str
    return lambda label: str(class_names[label]) if 0 <= label < len(class_names) else str(label)


def _too_small(labels: np.ndarray, val_fraction: float, test_fraction: float, reason: str) -> str:
    counts = np.bincount(labels)
    smallest = int(counts[counts > 0].min())
    return (
        f"cannot split {len(labels)} images (smallest class: {smallest} images) into "
        f"val_fraction={val_fraction} and test_fraction={test_fraction}: {reason}. "
        "Add distinct images to that class (every split needs one of each class) or remove "
        "it; data.val_fraction and data.test_fraction only set how many each split gets."
    )
