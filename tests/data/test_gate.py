"""The Great Expectations gate: one test per defect, each building a small prepared dataset
with exactly that defect and asserting the gate fails and names it; a clean dataset passes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from pipeline.io import Split, save_split
from pipeline.validation.gate import run_gate
from pipeline.validation.profile import build_image_table, count_near_duplicates, difference_hashes
from pipeline.validation.suites import GateSettings
from tests.project import run_stage_alone

COUNTS = {"train": 14, "val": 3, "test": 3}  # images per class: fractions 0.7 / 0.15 / 0.15
CLASSES = ["cat", "dog", "fox"]


def clean_splits(
    seed: int = 0, shape=(8, 8, 1), brightness: int = 0, scale: int = 1
) -> dict[str, Split]:
    rng = np.random.default_rng(seed)
    splits = {}
    for name, per_class in COUNTS.items():
        y = np.repeat(np.arange(len(CLASSES), dtype=np.int64), per_class * scale)
        x = rng.integers(brightness, 256, size=(len(y), *shape), dtype=np.uint8)
        splits[name] = Split(x, y, list(CLASSES))
    return splits


def settings(**overrides) -> GateSettings:
    values = dict(
        image_shape=(8, 8, 1),
        class_names=list(CLASSES),
        expected_fractions={"train": 0.7, "val": 0.15, "test": 0.15},
    )
    values.update(overrides)
    return GateSettings(**values)


def failed(result) -> list[tuple[str, str, str]]:
    return [(f.split, f.column, f.expectation) for f in result.failures]


def test_clean_dataset_passes_with_docs(tmp_path: Path) -> None:
    result = run_gate(clean_splits(), settings(), docs_dir=tmp_path / "docs")
    assert result.passed, [str(f) for f in result.failures]
    assert result.summary["rows"] == 60 and result.summary["failures"] == 0
    assert (tmp_path / "docs" / "index.html").is_file()


def test_label_out_of_range_is_named_with_indices() -> None:
    splits = clean_splits()
    splits["train"].y[[2, 9]] = 7
    result = run_gate(splits, settings())
    assert ("train", "label", "expect_column_values_to_be_between") in failed(result)
    failure = next(f for f in result.failures if f.column == "label")
    assert failure.examples == [2, 9] and "max_value=2" in failure.expected
    assert "example image indices [2, 9]" in str(failure)


def test_class_missing_from_test_is_named() -> None:
    splits = clean_splits()
    test = splits["test"]
    keep = test.y != 1
    splits["test"] = Split(test.x[keep], test.y[keep], test.classes)
    result = run_gate(splits, settings())
    assert ("test", "label", "expect_column_distinct_values_to_contain_set") in failed(result)


def test_float_array_with_nan_and_out_of_range_pixels_is_named() -> None:
    splits = clean_splits()
    pixels = splits["val"].x.astype(np.float32)
    pixels[0, 0, 0, 0] = np.nan
    pixels[4, 1, 1, 0] = 300.0
    splits["val"] = Split(pixels, splits["val"].y, list(CLASSES))
    found = failed(run_gate(splits, settings()))
    assert ("val", "dtype", "expect_column_values_to_be_in_set") in found
    assert ("val", "mean", "expect_column_values_to_not_be_null") in found
    assert ("val", "max", "expect_column_values_to_be_between") in found


def test_wrong_shape_is_named() -> None:
    splits = clean_splits()
    splits["test"] = clean_splits(shape=(9, 8, 3))["test"]
    found = failed(run_gate(splits, settings()))
    assert ("test", "height", "expect_column_values_to_be_in_set") in found
    assert ("test", "channels", "expect_column_values_to_be_in_set") in found


def test_image_duplicated_across_train_and_test_is_a_leak() -> None:
    splits = clean_splits()
    splits["test"].x[5] = splits["train"].x[11]
    result = run_gate(splits, settings())
    assert ("test", "in_train", "expect_column_values_to_be_in_set") in failed(result)
    leak = next(f for f in result.failures if f.column == "in_train")
    assert leak.examples == [5] and "deduplicate" in leak.fix
    assert result.summary["exact_duplicates_across_splits"] == 1


def test_heavy_imbalance_is_named_with_the_class() -> None:
    splits = clean_splits()
    train = splits["train"]
    keep = np.concatenate([np.flatnonzero(train.y != 2), np.flatnonzero(train.y == 2)[:1]])
    splits["train"] = Split(train.x[keep], train.y[keep], train.classes)
    result = run_gate(splits, settings(split_tolerance=0.5))
    assert ("class_balance: train", "imbalance_ratio", "expect_column_values_to_be_between") in (
        failed(result)
    )
    failure = next(f for f in result.failures if f.column == "imbalance_ratio")
    assert failure.examples == [2] and "validate.max_class_imbalance" in failure.fix


def test_split_far_from_its_fraction_is_named() -> None:
    found = failed(
        run_gate(
            clean_splits(), settings(expected_fractions={"train": 0.5, "val": 0.25, "test": 0.25})
        )
    )
    assert ("train", "(table)", "expect_table_row_count_to_be_between") in found


def test_blank_images_beyond_the_bound_fail() -> None:
    splits = clean_splits()
    splits["train"].x[:3] = 0
    result = run_gate(splits, settings(max_blank_fraction=0.05))
    assert ("train", "std", "expect_column_values_to_be_between") in failed(result)
    assert result.warnings["blank_images"] == 3


def test_drifted_reference_fails_and_same_distribution_passes() -> None:
    # 200 images per class: enough for the KS statistic of equal distributions to stay small.
    splits = clean_splits(seed=0, scale=10)
    same = run_gate(splits, settings(max_drift=0.3), reference=clean_splits(seed=1, scale=10))
    assert same.passed and same.summary["drift_max_ks"] < 0.3
    brighter = clean_splits(seed=1, brightness=120, scale=10)  # pixels now in 120..255
    drifted = run_gate(splits, settings(max_drift=0.3), reference=brighter)
    assert ("drift", "ks_statistic", "expect_column_values_to_be_between") in failed(drifted)
    assert drifted.summary["drift_max_ks"] > 0.9


def test_difference_hash_is_stable_under_brightness_and_detects_near_duplicates() -> None:
    images = clean_splits()["train"].x
    brighter = np.clip(images.astype(np.int16) + 10, 0, 255).astype(np.uint8)
    assert np.array_equal(difference_hashes(images[:5]), difference_hashes(brighter[:5]))
    splits = clean_splits()
    splits["val"].x[0] = np.clip(splits["train"].x[3].astype(np.int16) + 3, 0, 255)
    table = build_image_table(splits)
    assert count_near_duplicates(table, max_distance=2) >= 1


def test_validate_stage_fails_listing_each_expectation_and_keeps_no_traceback(
    tmp_path: Path,
) -> None:
    splits = clean_splits()
    splits["test"].x[0] = splits["train"].x[0]
    for name, split in splits.items():
        save_split(tmp_path / "data" / "prepared" / f"{name}.npz", split)
    plan = {"expected_fractions": {"train": 0.7, "val": 0.15, "test": 0.15}}
    (tmp_path / "data" / "prepared" / "split.json").write_text(json.dumps(plan))
    result = run_stage_alone(tmp_path, "validate", {"val_fraction": 0.15, "test_fraction": 0.15})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    # digits images are 8x8x1: these are too, but the leak must be named on its own line.
    lines = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert any("split 'test', column 'in_train'" in line and "[0]" in line for line in lines)
    summary = json.loads((tmp_path / "reports" / "validation" / "summary.json").read_text())
    assert summary["passed"] is False and summary["failures"] == len(lines)
    assert (tmp_path / "reports" / "validation" / "data_docs" / "index.html").is_file()
