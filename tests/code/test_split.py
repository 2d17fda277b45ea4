"""Splitting: stratified, seeded, deterministic, disjoint; stored as uint8 without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets.fetch import fetch_dataset
from pipeline.datasets.readers.arrays import read_digits
from pipeline.datasets.sources import DIGITS
from pipeline.datasets.split import allocate, plan_split, split_indices, stratified_subset
from pipeline.errors import DataError
from pipeline.io import load_split, save_split, write_split
from tests.fixtures import make_split


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    fetch_dataset(DIGITS, raw, cache_dir=raw / "cache")
    return read_digits(raw)


def test_digits_are_read_as_uint8_images(digits) -> None:
    images = digits.load_all()
    assert images.shape == (1797, 8, 8, 1)
    assert images.dtype == np.uint8
    assert digits.labels.dtype == np.int64
    assert images.max() == 255 and images.min() == 0
    assert sorted(set(digits.labels.tolist())) == list(range(10))


def test_split_is_disjoint_complete_and_stratified(digits) -> None:
    indices = split_indices(digits.labels, val_fraction=0.15, test_fraction=0.2, seed=42)
    together = np.concatenate(list(indices.values()))
    assert len(together) == len(set(together.tolist())) == len(digits.labels)
    assert abs(len(indices["test"]) / len(digits.labels) - 0.2) < 0.01
    assert abs(len(indices["val"]) / len(digits.labels) - 0.15) < 0.01
    overall = np.bincount(digits.labels) / len(digits.labels)
    for name, chosen in indices.items():
        share = np.bincount(digits.labels[chosen], minlength=10) / len(chosen)
        assert np.abs(share - overall).max() < 0.02, name


def test_split_is_deterministic_per_seed(digits) -> None:
    first = split_indices(digits.labels, 0.15, 0.2, seed=3)
    again = split_indices(digits.labels, 0.15, 0.2, seed=3)
    other = split_indices(digits.labels, 0.15, 0.2, seed=4)
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["test"], other["test"])


def test_split_too_small_class_names_the_fractions() -> None:
    labels = np.array([0] * 20 + [1] * 2, dtype=np.int64)
    with pytest.raises(DataError, match="smallest class: 2 images.*data.val_fraction"):
        split_indices(labels, val_fraction=0.2, test_fraction=0.2, seed=0)


def test_saved_split_round_trips_without_pickle(tmp_path: Path) -> None:
    split = make_split()
    path = tmp_path / "train.npz"
    save_split(path, split)
    with np.load(path, allow_pickle=False) as data:
        assert data["x"].dtype == np.uint8 and data["y"].dtype == np.int64
    loaded = load_split(path)
    assert np.array_equal(loaded.x, split.x) and loaded.classes == split.classes
    assert [p.name for p in tmp_path.iterdir()] == ["train.npz"]  # no temporary left behind


def test_missing_or_corrupt_split_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run the split stage"):
        load_split(tmp_path / "absent.npz")
    corrupt = tmp_path / "bad.npz"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a valid split file"):
        load_split(corrupt)


def test_allocate_is_proportional_exact_and_bounded() -> None:
    assert allocate(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    shares = allocate(np.array([7, 7, 1]), 5)
    assert shares.sum() == 5 and (shares <= [7, 7, 1]).all()
    assert allocate(np.array([3, 0]), 10).tolist() == [3, 0]


def test_source_test_set_is_kept_and_val_carved_from_train_only() -> None:
    labels = np.tile(np.arange(4), 25)
    pools = np.array(["train"] * 80 + ["test"] * 20)
    splits, fractions = plan_split(labels, pools, val_fraction=0.2, test_fraction=0.5, seed=0)
    assert np.array_equal(splits["test"], np.arange(80, 100))
    assert len(splits["val"]) == 20 and splits["val"].max() < 80
    assert np.bincount(labels[splits["val"]]).tolist() == [5, 5, 5, 5]
    assert fractions == {"train": 0.6, "val": 0.2, "test": 0.2}


def test_source_val_set_is_used_as_it_is() -> None:
    labels = np.array([0, 1] * 6)
    pools = np.array(["train"] * 4 + ["val"] * 4 + ["test"] * 4)
    splits, _ = plan_split(labels, pools, val_fraction=0.15, test_fraction=0.2, seed=0)
    assert splits["val"].tolist() == [4, 5, 6, 7]


def test_val_fraction_larger_than_the_source_train_set_is_refused() -> None:
    labels = np.array([0, 1] * 10)
    pools = np.array(["train"] * 4 + ["test"] * 16)
    with pytest.raises(DataError, match=r"data.val_fraction=0.3 asks for 6 validation images"):
        plan_split(labels, pools, val_fraction=0.3, test_fraction=0.2, seed=0)


def test_subset_is_stratified_per_class_and_per_source_split() -> None:
    labels = np.tile(np.arange(2), 100)
    pools = np.array(["train"] * 150 + ["test"] * 50)
    chosen = stratified_subset(labels, pools, 40, seed=1)
    assert len(chosen) == 40 and (np.diff(chosen) > 0).all()
    assert (pools[chosen] == "test").sum() == 10
    assert np.bincount(labels[chosen]).tolist() == [20, 20]
    assert len(stratified_subset(labels, None, 10_000, seed=1)) == 200


def test_write_split_gathers_rows_without_changing_them(tmp_path: Path) -> None:
    images = np.arange(6 * 4 * 4 * 3, dtype=np.uint8).reshape(6, 4, 4, 3)
    write_split(tmp_path / "s.npz", images, np.array([1, 4]), np.array([0, 1]), ["a", "b"])
    loaded = load_split(tmp_path / "s.npz")
    assert np.array_equal(loaded.x, images[[1, 4]]) and loaded.classes == ["a", "b"]
