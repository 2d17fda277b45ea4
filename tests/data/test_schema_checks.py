"""The validate gate's schema checks: one test per defect, each naming the split and check."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.datasets.split import Split
from pipeline.validation import check_splits, summarize
from tests.conftest import make_split


def _splits(**overrides: Split) -> dict[str, Split]:
    splits = {name: make_split(seed=i) for i, name in enumerate(("train", "val", "test"))}
    splits.update(overrides)
    return splits


def _failed(splits: dict[str, Split]) -> set[tuple[str, str]]:
    return {(f.split, f.check) for f in check_splits(splits, min_images_per_class=1)}


def test_clean_splits_pass() -> None:
    splits = _splits()
    assert check_splits(splits, 1) == []
    summary = summarize(splits, [])
    assert summary["passed"] and summary["rows"] == {"train": 12, "val": 12, "test": 12}


def test_label_out_of_range_is_named() -> None:
    bad = make_split()
    bad.y[[1, 5]] = [3, -1]
    failures = check_splits(_splits(val=bad), 1)
    assert ("val", "label_range") in {(f.split, f.check) for f in failures}
    message = next(str(f) for f in failures if f.check == "label_range")
    assert "indices [1, 5]" in message and "0..2" in message


def test_class_missing_from_test_is_named() -> None:
    bad = make_split()
    keep = bad.y != 2
    failures = check_splits(_splits(test=Split(bad.x[keep], bad.y[keep], bad.classes)), 1)
    assert [(f.split, f.check) for f in failures] == [("test", "class_present")]
    assert "class 2 ('class_2') has 0 images" in str(failures[0])


def test_float_pixels_saved_by_mistake_are_named_with_nan_count() -> None:
    bad = make_split()
    pixels = bad.x.astype(np.float32) / 255.0
    pixels[0, 0, 0, 0] = np.nan
    failures = check_splits(_splits(train=Split(pixels, bad.y, bad.classes)), 1)
    dtype = [f for f in failures if f.check == "image_dtype"]
    assert dtype and "float32" in dtype[0].message and "NaN: 1" in dtype[0].message


@pytest.mark.parametrize(
    ("x_shape", "check"),
    [((12, 8, 8, 2), "image_shape"), ((12, 8, 8), "image_shape"), ((12, 9, 9, 1), "image_shape")],
)
def test_wrong_shape_is_named(x_shape, check) -> None:
    bad = make_split()
    x = np.zeros(x_shape, dtype=np.uint8)
    assert ("val", check) in _failed(_splits(val=Split(x, bad.y, bad.classes)))


def test_label_count_mismatch_and_class_list_mismatch() -> None:
    bad = make_split()
    assert ("train", "row_count") in _failed(_splits(train=Split(bad.x[:-1], bad.y, bad.classes)))
    renamed = Split(bad.x, bad.y, ["a", "b", "c"])
    assert ("test", "classes") in _failed(_splits(test=renamed))


def test_min_images_per_class_is_enforced() -> None:
    failures = check_splits(_splits(), min_images_per_class=5)
    assert {f.check for f in failures} == {"class_present"}
    assert "validate.min_images_per_class=5" in str(failures[0])
