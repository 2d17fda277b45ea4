"""The Great Expectations gate: one test per defect, each building a small prepared dataset
with exactly that defect and asserting the gate fails and names it; a clean dataset passes."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import PipelineConfig, load_config
from pipeline.errors import DataError, ValidationFailed
from pipeline.stages.validate import validate_prepared
from pipeline.store import ArraySplit, image_digests, open_splits, write_store_from_arrays
from pipeline.validation.gate import run_gate
from pipeline.validation.profile import (
    build_image_table,
    count_near_duplicates,
    difference_hashes,
)
from pipeline.validation.suites import GateSettings, split_count_range
from tests.project import PROJECT_ROOT, run_stage_alone

COUNTS = {"train": 14, "val": 3, "test": 3}  # images per class: fractions 0.7 / 0.15 / 0.15
CLASSES = ["cat", "dog", "fox"]


def clean_splits(
    seed: int = 0, shape=(8, 8, 1), brightness: int = 0, scale: int = 1
) -> dict[str, ArraySplit]:
    rng = np.random.default_rng(seed)
    splits = {}
    for name, per_class in COUNTS.items():
        y = np.repeat(np.arange(len(CLASSES), dtype=np.int64), per_class * scale)
        x = rng.integers(brightness, 256, size=(len(y), *shape), dtype=np.uint8)
        splits[name] = ArraySplit(x, y, list(CLASSES), name)
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


def test_the_gate_draws_no_progress_bars(tmp_path: Path, capfd) -> None:
    """Great Expectations' "Calculating Metrics" bars (one per suite) would leave escape codes
    and carriage returns in DVC's log."""
    assert run_gate(clean_splits(), settings(), docs_dir=tmp_path / "docs").passed
    captured = capfd.readouterr()
    assert "Calculating Metrics" not in captured.err + captured.out
    assert "\r" not in captured.err


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
    splits["test"] = ArraySplit(test.x[keep], test.y[keep], test.classes)
    result = run_gate(splits, settings())
    assert ("test", "label", "expect_column_distinct_values_to_contain_set") in failed(result)


class FloatSplit(ArraySplit):
    """An in-memory split that hands the gate float pixels: what a reader that skipped the
    store's uint8 check would read (the store refuses such a shard itself: see
    test_a_float_shard_in_the_store_is_refused_naming_the_file)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, classes: list[str]) -> None:
        super().__init__(np.zeros(x.shape, dtype=np.uint8), y, classes)
        self.x = x

    def digests(self) -> np.ndarray:
        # The float bytes themselves: casting NaN and 300.0 to uint8 has no meaning.
        return image_digests(self.x.view(np.uint8))


def test_float_array_with_nan_and_out_of_range_pixels_is_named() -> None:
    splits = clean_splits()
    pixels = splits["val"].x.astype(np.float32)
    pixels[0, 0, 0, 0] = np.nan
    pixels[4, 1, 1, 0] = 300.0
    splits["val"] = FloatSplit(pixels, splits["val"].y, list(CLASSES))
    found = failed(run_gate(splits, settings()))
    assert ("val", "dtype", "expect_column_values_to_be_in_set") in found
    assert ("val", "mean", "expect_column_values_to_not_be_null") in found
    assert ("val", "max", "expect_column_values_to_be_between") in found


def test_a_float_shard_in_the_store_is_refused_naming_the_file(tmp_path: Path) -> None:
    prepared = _write_prepared(tmp_path / "prepared", clean_splits())
    shard = open_splits(prepared)["val"].shards[0].path(prepared, "images")
    np.save(shard, np.load(shard).astype(np.float32))
    config = _digits_config()
    with pytest.raises(DataError, match=rf"{re.escape(shard.name)} holds float32 .*expected uint8"):
        validate_prepared(config, prepared, tmp_path / "docs", tmp_path / "summary.json")


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
    splits["train"] = ArraySplit(train.x[keep], train.y[keep], train.classes)
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


def test_hashed_split_inside_the_hash_bound_but_outside_the_tolerance_passes() -> None:
    # 42/9/9 of 60 images against 0.6/0.2/0.2: train is 6 images off, the tolerance allows 3,
    # the hash's bound (4 binomial deviations: 16 for train, 13 for val and test) allows it.
    fractions = {"train": 0.6, "val": 0.2, "test": 0.2}
    fixed = run_gate(clean_splits(), settings(expected_fractions=fractions))
    assert ("train", "(table)", "expect_table_row_count_to_be_between") in failed(fixed)
    hashed = run_gate(clean_splits(), settings(expected_fractions=fractions, hashed_counts=True))
    assert hashed.passed, [str(f) for f in hashed.failures]


def test_hashed_split_far_outside_the_hash_bound_fails_naming_the_split_and_the_fix() -> None:
    # 420/90/90 of 600 images against 0.4/0.3/0.3: 180 and 90 images off, bounds 48 and 45.
    result = run_gate(
        clean_splits(scale=10),
        settings(expected_fractions={"train": 0.4, "val": 0.3, "test": 0.3}, hashed_counts=True),
    )
    found = failed(result)
    for name in ("train", "val", "test"):
        assert (name, "(table)", "expect_table_row_count_to_be_between") in found
    failure = next(f for f in result.failures if f.split == "train" and f.column == "(table)")
    assert "split 'train'" in str(failure) and "observed 420" in str(failure)
    assert "data.seed" in failure.fix and "validate.split_tolerance" in failure.fix


def test_split_count_range_takes_the_wider_of_tolerance_and_hash_bound() -> None:
    fractions = {"train": 0.65, "val": 0.15, "test": 0.2}
    # 1797 digits: the tolerance (0.05 * 1797 = 89.85) is wider than the hash bound (61).
    assert split_count_range("val", settings(expected_fractions=fractions), 1797) == (179, 360)
    hashed = settings(expected_fractions=fractions, hashed_counts=True, split_tolerance=0.0)
    assert split_count_range("val", hashed, 1797) == (208, 331)  # 269.55 -+ 61
    moved = settings(
        expected_fractions=fractions, hashed_counts=True, split_tolerance=0.0, reassigned=5
    )
    assert split_count_range("val", moved, 1797) == (203, 336)


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
    assert same.summary["drift"]["compared"] is True
    brighter = clean_splits(seed=1, brightness=120, scale=10)  # pixels now in 120..255
    drifted = run_gate(splits, settings(max_drift=0.3), reference=brighter)
    assert ("drift", "ks_statistic", "expect_column_values_to_be_between") in failed(drifted)
    assert drifted.summary["drift_max_ks"] > 0.9


def _write_prepared(
    folder: Path, splits: dict[str, ArraySplit], shard_bytes: int | None = None, **plan
) -> Path:
    """A prepared-data folder as the split stage writes it: the store and split.json."""
    classes = next(iter(splits.values())).classes
    arrays = {name: (split.x, split.y) for name, split in splits.items()}
    options = {} if shard_bytes is None else {"shard_bytes": shard_bytes}
    write_store_from_arrays(folder, arrays, classes, **options)
    plan = {
        "dataset": "digits",
        "scheme": "stratified",
        "expected_fractions": {"train": 0.7, "val": 0.15, "test": 0.15},
    } | plan
    (folder / "split.json").write_text(json.dumps(plan))
    return folder


def _digits_config() -> PipelineConfig:
    """The project's params on digits, with no reference of their own and max_drift 0.3."""
    config: PipelineConfig = load_config(PROJECT_ROOT / "params.yaml")
    return config.model_copy(
        update={
            "data": config.data.model_copy(update={"dataset": "digits"}),
            "validation": config.validation.model_copy(
                update={"max_drift": 0.3, "reference": None}
            ),
        }
    )


def _validate(tmp_path: Path, reference: Path) -> dict:
    """The validate stage's core, in process: the summary it wrote, passed or not."""
    config = _digits_config()
    prepared = _write_prepared(tmp_path / "prepared", clean_splits(seed=0, scale=10))
    summary_file = tmp_path / "summary.json"
    with contextlib.suppress(ValidationFailed):
        validate_prepared(config, prepared, tmp_path / "docs", summary_file, reference)
    return json.loads(summary_file.read_text())


@pytest.mark.parametrize(
    ("plan", "classes", "reason"),
    [
        ({"dataset": "mnist"}, CLASSES, "holds dataset 'mnist', the data is 'digits'"),
        ({}, ["ant", "bee", "cow"], "the reference's classes ['ant', 'bee', 'cow'] differ"),
    ],
)
def test_drift_against_unlike_data_is_skipped_with_the_reason(
    tmp_path: Path, caplog, plan, classes, reason
) -> None:
    # Brighter pixels: compared with the data, this reference would fail the drift check.
    brighter = clean_splits(seed=1, brightness=120, scale=10)
    brighter = {name: ArraySplit(s.x, s.y, list(classes)) for name, s in brighter.items()}
    reference = _write_prepared(tmp_path / "reference", brighter, **plan)
    with caplog.at_level(logging.WARNING, logger="pipeline.validation.gate"):
        summary = _validate(tmp_path, reference)
    assert summary["passed"], summary["failed_expectations"]
    assert summary["drift"]["compared"] is False and reason in summary["drift"]["reason"]
    assert "drift_max_ks" not in summary
    assert caplog.text.count("no comparable reference") == 1 and reason in caplog.text


def test_drift_against_the_same_dataset_and_classes_still_runs(tmp_path: Path) -> None:
    brighter = clean_splits(seed=1, brightness=120, scale=10)
    summary = _validate(tmp_path, _write_prepared(tmp_path / "reference", brighter))
    assert (
        summary["drift"]["compared"] is True
        and "same dataset ('digits')" in (summary["drift"]["reason"])
    )
    assert summary["passed"] is False and summary["drift_max_ks"] > 0.9
    assert any("ks_statistic" in line for line in summary["failed_expectations"])


def test_without_a_reference_the_summary_says_drift_was_not_compared(tmp_path: Path) -> None:
    result = run_gate(clean_splits(), settings())
    assert result.summary["drift"] == {"compared": False, "reason": "no reference given"}


def test_the_profile_reads_a_sharded_store_in_batches_and_matches_the_images_in_memory(
    tmp_path: Path,
) -> None:
    # 600 images of 64 bytes in shards of 50 and batches of 16: batches cross shard ends.
    splits = clean_splits(scale=10)
    splits["test"].x[5] = splits["train"].x[11]  # a leak, so in_train is not all False
    splits["val"].x[:3] = 0  # blank images: std 0, one dHash
    prepared = _write_prepared(tmp_path / "prepared", splits, shard_bytes=50 * 64)
    stored = open_splits(prepared)
    assert all(len(split.shards) > 1 for split in stored.values())
    reads: dict[str, list[int]] = {name: [] for name in stored}
    for name, split in stored.items():

        def recorded(rows, name=name, read=split.read):
            reads[name].append(len(rows))
            return read(rows)

        split.read = recorded
    table = build_image_table(stored, batch_bytes=16 * 64)
    assert {name: max(sizes) for name, sizes in reads.items()} == dict.fromkeys(stored, 16)
    assert {name: sum(sizes) for name, sizes in reads.items()} == {
        name: len(split) for name, split in splits.items()
    }
    in_memory = build_image_table(splits)
    pd.testing.assert_frame_equal(table, in_memory)
    assert table["in_train"].sum() == 1 and (table["std"] == 0).sum() == 3
    # The gate's verdict and messages are the same whichever way the images are held.
    from_store = run_gate(stored, settings(), reference=stored)
    from_memory = run_gate(splits, settings(), reference=splits)
    assert [str(f) for f in from_store.failures] == [str(f) for f in from_memory.failures]
    assert from_store.summary == from_memory.summary and not from_store.passed


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
    prepared = tmp_path / "data" / "prepared"
    write_store_from_arrays(prepared, {n: (s.x, s.y) for n, s in splits.items()}, CLASSES)
    plan = {"expected_fractions": {"train": 0.7, "val": 0.15, "test": 0.15}}
    (prepared / "split.json").write_text(json.dumps(plan))
    result = run_stage_alone(tmp_path, "validate", {"val_fraction": 0.15, "test_fraction": 0.15})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    # digits images are 8x8x1: these are too, but the leak must be named on its own line.
    lines = [line for line in result.stderr.splitlines() if line.startswith("  - ")]
    assert any("split 'test', column 'in_train'" in line and "[0]" in line for line in lines)
    summary = json.loads((tmp_path / "reports" / "validation" / "summary.json").read_text())
    assert summary["passed"] is False and summary["failures"] == len(lines)
    assert (tmp_path / "reports" / "validation" / "data_docs" / "index.html").is_file()


def _conflict(digest: str, *files: tuple[str, str]) -> dict:
    return {"digest": digest, "files": [{"path": path, "class": name} for path, name in files]}


def test_identical_images_under_two_classes_fail_naming_both_files(tmp_path: Path) -> None:
    """split.json's `label_conflicts` (one image in circle/ and square/) fail the gate: the
    message names both copies and their classes, the count, and both fixes."""
    conflicts = [
        _conflict("ab12", ("circle/a.png", "circle"), ("square/a.png", "square")),
        *(_conflict(f"cd{i}", (f"cat/{i}.png", "cat"), (f"dog/{i}.png", "dog")) for i in range(6)),
    ]
    prepared = _write_prepared(tmp_path / "prepared", clean_splits(), label_conflicts=conflicts)
    summary_file = tmp_path / "summary.json"
    with pytest.raises(ValidationFailed) as error:
        validate_prepared(_digits_config(), prepared, tmp_path / "docs", summary_file)
    line = next(line for line in str(error.value).splitlines() if "label_conflicts" in line)
    assert "7 image(s) filed under more than one class" in line
    assert "circle/a.png (circle) and square/a.png (square)" in line
    assert "cat/0.png (cat) and dog/0.png (dog)" in line and line.count(" and ") >= 5
    assert "remove or move the wrong copy" in line and "validate.label_conflicts: drop" in line
    summary = json.loads(summary_file.read_text())
    assert summary["passed"] is False and summary["label_conflicts"] == 7
    assert summary["failures"] == 1


def test_label_conflicts_pass_when_the_split_dropped_them_or_found_none(tmp_path: Path) -> None:
    conflicts = [_conflict("ab12", ("circle/a.png", "circle"), ("square/a.png", "square"))]
    config = _digits_config()
    dropping = config.model_copy(
        update={"validation": config.validation.model_copy(update={"label_conflicts": "drop"})}
    )
    prepared = _write_prepared(tmp_path / "dropped", clean_splits(), label_conflicts=conflicts)
    summary = validate_prepared(dropping, prepared, tmp_path / "docs", tmp_path / "s1.json")
    assert summary["passed"] and summary["label_conflicts"] == 0
    for plan in ({"label_conflicts": []}, {}):
        prepared = _write_prepared(tmp_path / f"none{len(plan)}", clean_splits(), **plan)
        assert validate_prepared(config, prepared, tmp_path / "docs", tmp_path / "s2.json")[
            "passed"
        ]


def test_class_level_failures_name_the_class_not_only_its_label() -> None:
    splits = clean_splits()
    train = splits["train"]
    keep = np.concatenate([np.flatnonzero(train.y != 2), np.flatnonzero(train.y == 2)[:1]])
    splits["train"] = ArraySplit(train.x[keep], train.y[keep], train.classes)
    result = run_gate(splits, settings(split_tolerance=0.5))
    failure = next(f for f in result.failures if f.column == "imbalance_ratio")
    assert "example classes [2 'fox']" in str(failure)
