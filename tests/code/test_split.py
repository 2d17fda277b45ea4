"""Splitting: stratified, seeded, deterministic, disjoint; stored as uint8 without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.datasets.download import fetch_dataset
from pipeline.datasets.readers import read_digits
from pipeline.datasets.sources import DIGITS
from pipeline.datasets.split import load_split, save_split, split_indices
from pipeline.errors import DataError
from tests.conftest import make_split


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    fetch_dataset(DIGITS, raw)
    return read_digits(raw)


def test_digits_are_read_as_uint8_images(digits) -> None:
    assert digits.images.shape == (1797, 8, 8, 1)
    assert digits.images.dtype == np.uint8
    assert digits.labels.dtype == np.int64
    assert digits.images.max() == 255 and digits.images.min() == 0
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
