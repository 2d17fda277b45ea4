"""The Great Expectations suites of the gate. Each expectation carries a comment naming the
failure it guards against, and a `fix` (in its meta) that the gate prints when it fails."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.datasets.split import allowed_deviation
from pipeline.validation.profile import TABLE_COLUMNS


@dataclass(frozen=True)
class GateSettings:
    """What the gate expects, from params (`validate.*`, `data.*`) and the dataset's spec."""

    image_shape: tuple[int, int, int]
    class_names: list[str]
    expected_fractions: dict[str, float]
    split_tolerance: float = 0.05
    min_images_per_class: int = 1
    max_class_imbalance: float = 10.0
    max_blank_fraction: float = 0.01
    near_duplicate_distance: int = 2
    max_drift: float = 0.2
    # Splits drawn by content hash (the stratified and fixed_test schemes) stray from their
    # fractions by chance: their counts may also differ by `allowed_deviation`, which grows
    # with the images moved (`reassigned`) so that small classes reach every split.
    hashed_counts: bool = False
    reassigned: int = 0


def split_count_range(split: str, settings: GateSettings, total: int) -> tuple[int, int]:
    """The fewest and most images `split` may hold out of `total`: its fraction, give or take
    the larger of `split_tolerance` and, for hashed splits, the hash's own bound."""
    fraction = settings.expected_fractions[split]
    slack = settings.split_tolerance * total
    if settings.hashed_counts:
        slack = max(slack, allowed_deviation(total, fraction, settings.reassigned))
    low = int(np.floor(max(fraction * total - slack, 0.0)))
    return low, int(np.ceil(fraction * total + slack))


def image_expectations(split: str, settings: GateSettings, total: int) -> list:
    import great_expectations.expectations as gxe

    height, width, channels = settings.image_shape
    num_classes = len(settings.class_names)
    low, high = split_count_range(split, settings, total)
    count_fix = (
        "check data.val_fraction/data.test_fraction and that no files were lost; if the data "
        "is right, relax validate.split_tolerance"
    )
    if settings.hashed_counts:
        # Beyond the hash's bound by chance happens once in about 16,000 data sets.
        count_fix += " or draw another content-hash split with a different data.seed"
    shape_fix = "check data.image_size and the dataset's reader; rerun the split stage"

    def meta(fix: str) -> dict:
        return {"fix": fix}

    expectations = [
        # Guards against a table built from a changed or broken split file (missing stats).
        gxe.ExpectTableColumnsToMatchSet(
            column_set=TABLE_COLUMNS, exact_match=True, meta=meta("rebuild data/prepared")
        ),
        # Guards against float arrays saved by mistake (rescaled twice by the models).
        gxe.ExpectColumnValuesToBeInSet(
            column="dtype", value_set=["uint8"], meta=meta("store images as uint8 in split")
        ),
        # Guards against NaN pixels, which poison every gradient they touch.
        gxe.ExpectColumnValuesToNotBeNull(
            column="mean", meta=meta("remove or repair the images with NaN pixels")
        ),
        # Guards against pixels outside the uint8 range (a float or int16 array saved raw).
        gxe.ExpectColumnValuesToBeBetween(
            column="min", min_value=0, max_value=255, meta=meta("store pixels in 0..255")
        ),
        gxe.ExpectColumnValuesToBeBetween(
            column="max", min_value=0, max_value=255, meta=meta("store pixels in 0..255")
        ),
        # Guards against images of the wrong size or channel count (a missed resize).
        gxe.ExpectColumnValuesToBeInSet(column="height", value_set=[height], meta=meta(shape_fix)),
        gxe.ExpectColumnValuesToBeInSet(column="width", value_set=[width], meta=meta(shape_fix)),
        gxe.ExpectColumnValuesToBeInSet(
            column="channels", value_set=[channels], meta=meta(shape_fix)
        ),
        # Guards against labels outside the class list (a crash, or a silently wrong head).
        gxe.ExpectColumnValuesToBeBetween(
            column="label",
            min_value=0,
            max_value=num_classes - 1,
            meta=meta("fix the labels in the source data; rerun download and split"),
        ),
        # Guards against a class absent from a split (undefined metrics, a broken split).
        gxe.ExpectColumnDistinctValuesToContainSet(
            column="label",
            value_set=list(range(num_classes)),
            meta=meta("add images of that class, or adjust data.val_fraction/data.test_fraction"),
        ),
        # Guards against a split far from its configured size (wrong fractions, lost files).
        gxe.ExpectTableRowCountToBeBetween(min_value=low, max_value=high, meta=meta(count_fix)),
        # Guards against blank (constant) images: failed decodes, black frames.
        gxe.ExpectColumnValuesToBeBetween(
            column="std",
            min_value=0,
            strict_min=True,
            mostly=1.0 - settings.max_blank_fraction,
            meta=meta("remove the blank images, or raise validate.max_blank_fraction"),
        ),
    ]
    if split != "train":
        # Guards against a data leak: a held-out image identical to a training image.
        expectations.append(
            gxe.ExpectColumnValuesToBeInSet(
                column="in_train",
                value_set=[False],
                meta=meta("deduplicate the source images before splitting"),
            )
        )
    return expectations


def class_expectations(settings: GateSettings) -> list:
    import great_expectations.expectations as gxe

    return [
        # Guards against a split dominated by a few classes (a model that learns the prior).
        gxe.ExpectColumnValuesToBeBetween(
            column="imbalance_ratio",
            max_value=settings.max_class_imbalance,
            meta={"fix": "rebalance the data, or raise validate.max_class_imbalance"},
        ),
        # Guards against classes too small to learn or to measure.
        gxe.ExpectColumnValuesToBeBetween(
            column="count",
            min_value=settings.min_images_per_class,
            meta={"fix": "add images, or lower validate.min_images_per_class"},
        ),
    ]


def drift_expectations(settings: GateSettings) -> list:
    import great_expectations.expectations as gxe

    return [
        # Guards against training on data that no longer looks like the reference.
        gxe.ExpectColumnValuesToBeBetween(
            column="ks_statistic",
            max_value=settings.max_drift,
            meta={"fix": "inspect the new data, or raise validate.max_drift"},
        ),
    ]


LABEL_CONFLICT_FIX = (
    "each is one image filed under several classes: remove or move the wrong copy in the image "
    "folder, or set validate.label_conflicts: drop to leave such images out at split (listed in "
    "reports/data/skipped.csv)"
)


def conflict_expectations() -> list:
    import great_expectations.expectations as gxe

    return [
        # Guards against contradictory labels: identical pixels under two classes teach the
        # model noise and score it against a coin toss (a copy in circle/ and square/).
        gxe.ExpectColumnValuesToBeNull(column="conflict", meta={"fix": LABEL_CONFLICT_FIX}),
    ]
