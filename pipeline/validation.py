"""The data-validation gate: Great Expectations 1.x suites over a per-image table.

Each prepared image becomes a row (split, index, label, class name, shape, dtype, pixel stats,
difference hash, content hash). Suites check the schema, shapes, labels, pixels, split sizes,
class balance, leakage across splits and, against a reference dataset, drift. Every failed
expectation becomes one line naming the split, the column, what was observed against what was
expected, example image indices and the params key that fixes or relaxes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.datasets.split import Split

logger = logging.getLogger(__name__)

TABLE_COLUMNS = [
    "split",
    "index",
    "label",
    "class_name",
    "height",
    "width",
    "channels",
    "dtype",
    "min",
    "max",
    "mean",
    "std",
    "dhash",
    "content_hash",
    "in_train",
]
HASH_SIZE = 8  # an 8x8 difference hash: 64 bits


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


@dataclass
class FailedExpectation:
    split: str
    column: str
    expectation: str
    observed: str
    expected: str
    examples: list[int]
    fix: str

    def __str__(self) -> str:
        kind = "image indices" if self.split in ("train", "val", "test") else "classes"
        examples = f"; example {kind} {self.examples}" if self.examples else ""
        return (
            f"split '{self.split}', column '{self.column}': {self.expectation}: observed "
            f"{self.observed}, expected {self.expected}{examples}. Fix: {self.fix}"
        )


@dataclass
class GateResult:
    failures: list[FailedExpectation]
    warnings: dict[str, int]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.failures


# ---------------------------------------------------------------------------------------------
# The per-image table
# ---------------------------------------------------------------------------------------------


def difference_hashes(images: np.ndarray) -> np.ndarray:
    """64-bit difference hashes (dHash) of a batch, vectorised: gray, area-resize to 8x9 by two
    matrix products, then one bit per horizontally adjacent pair (is the right one brighter)."""
    gray = images.astype(np.float32).mean(axis=3)
    rows = _area_resize_matrix(images.shape[1], HASH_SIZE)
    columns = _area_resize_matrix(images.shape[2], HASH_SIZE + 1).T
    small = rows @ gray @ columns
    bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(images), HASH_SIZE * HASH_SIZE)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _area_resize_matrix(size: int, output: int) -> np.ndarray:
    """(output, size) weights averaging the input pixels that fall in each output bin."""
    edges = np.linspace(0.0, size, output + 1)
    starts, ends = edges[:-1, None], edges[1:, None]
    pixels = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(ends, pixels + 1) - np.maximum(starts, pixels), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def content_hashes(images: np.ndarray) -> list[str]:
    """A digest of each image's bytes: equal digests are exact duplicates."""
    return [hashlib.blake2b(image.tobytes(), digest_size=8).hexdigest() for image in images]


def build_image_table(splits: dict[str, Split]) -> pd.DataFrame:
    """One row per image of every split; `in_train` marks val/test images identical to one in
    train."""
    frames = []
    for name, split in splits.items():
        x = split.x if split.x.ndim == 4 else split.x.reshape(*split.x.shape, 1)
        count = len(x)
        labels = np.asarray(split.y)
        known = (labels >= 0) & (labels < len(split.classes))
        class_names = np.where(
            known, np.array(split.classes + [""])[np.where(known, labels, -1)], ""
        )
        stats = _pixel_stats(x)
        frame = pd.DataFrame(
            {
                "split": name,
                "index": np.arange(count),
                "label": labels,
                "class_name": class_names,
                "height": x.shape[1],
                "width": x.shape[2],
                "channels": x.shape[3],
                "dtype": str(x.dtype),
                **{key: stats[key] for key in ("min", "max", "mean", "std")},
            }
        )
        frame["dhash"] = [format(int(value), "016x") for value in stats["dhash"]]
        frame["content_hash"] = content_hashes(x)
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    train_hashes = set(table.loc[table["split"] == "train", "content_hash"])
    table["in_train"] = (table["split"] != "train") & table["content_hash"].isin(train_hashes)
    return table[TABLE_COLUMNS]


def _pixel_stats(x: np.ndarray, chunk_bytes: int = 64 << 20) -> dict[str, np.ndarray]:
    """Per-image min/max/mean/std and dHash, a chunk of images at a time: float64 copies of a
    whole split (cats-vs-dogs at 150x150 is 1 GB of them) never exist at once."""
    count = len(x)
    pixels = max(1, int(np.prod(x.shape[1:])))
    step = max(1, chunk_bytes // (pixels * 8))
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("min", "max", "mean", "std", "dhash")}
    for start in range(0, count, step):
        block = x[start : start + step]
        numeric = block.reshape(len(block), -1).astype(np.float64)
        # NaN pixels propagate to min/max/mean/std on purpose: the gate must see them.
        parts["min"].append(numeric.min(axis=1))
        parts["max"].append(numeric.max(axis=1))
        parts["mean"].append(numeric.mean(axis=1))
        parts["std"].append(numeric.std(axis=1))
        parts["dhash"].append(difference_hashes(np.nan_to_num(block.astype(np.float32))))
    empty = {"dhash": np.zeros(0, np.uint64)}
    return {
        key: np.concatenate(values) if values else empty.get(key, np.zeros(0))
        for key, values in parts.items()
    }


def count_near_duplicates(table: pd.DataFrame, max_distance: int, chunk: int = 512) -> int:
    """Val/test images within `max_distance` bits (dHash Hamming distance) of a train image,
    exact duplicates excluded: brute force in chunks, popcount in NumPy."""
    train = _hash_values(table.loc[table["split"] == "train", "dhash"])
    held_out = table[(table["split"] != "train") & ~table["in_train"]]
    others = _hash_values(held_out["dhash"])
    if not len(train) or not len(others):
        return 0
    near = 0
    for start in range(0, len(others), chunk):
        distances = np.bitwise_count(others[start : start + chunk, None] ^ train[None, :])
        near += int((distances.min(axis=1) <= max_distance).sum())
    return near


def _hash_values(column: pd.Series) -> np.ndarray:
    return np.array([int(value, 16) for value in column], dtype=np.uint64)


def class_table(table: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """One row per (split, class): its image count and how much larger the split's largest
    class is."""
    rows = []
    for name, group in table.groupby("split", sort=False):
        labels = group["label"].to_numpy()
        valid = labels[(labels >= 0) & (labels < num_classes)]
        counts = np.bincount(valid, minlength=num_classes)
        largest = max(int(counts.max()), 1)
        for label, count in enumerate(counts):
            rows.append(
                {
                    "split": name,
                    "label": label,
                    "count": int(count),
                    "imbalance_ratio": largest / count if count else float("inf"),
                }
            )
    return pd.DataFrame(rows)


def drift_table(table: pd.DataFrame, reference: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """Per class, a two-sample Kolmogorov-Smirnov test of per-image mean and std pixel values,
    current data against the reference; the larger statistic is the class's drift."""
    from scipy.stats import ks_2samp

    rows = []
    for label in range(num_classes):
        current = table[table["label"] == label]
        before = reference[reference["label"] == label]
        if current.empty or before.empty:
            rows.append({"label": label, "ks_statistic": 1.0, "p_value": 0.0})
            continue
        tests = [ks_2samp(current[column], before[column]) for column in ("mean", "std")]
        worst = max(tests, key=lambda test: test.statistic)
        rows.append(
            {"label": label, "ks_statistic": float(worst.statistic), "p_value": float(worst.pvalue)}
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# The suites
# ---------------------------------------------------------------------------------------------


def _image_expectations(split: str, settings: GateSettings, total: int) -> list:
    import great_expectations.expectations as gxe

    height, width, channels = settings.image_shape
    num_classes = len(settings.class_names)
    fraction = settings.expected_fractions[split]
    tolerance = settings.split_tolerance
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
        gxe.ExpectTableRowCountToBeBetween(
            min_value=int(np.floor(max(fraction - tolerance, 0.0) * total)),
            max_value=int(np.ceil((fraction + tolerance) * total)),
            meta=meta(
                "check data.val_fraction/data.test_fraction, or relax validate.split_tolerance"
            ),
        ),
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


def _class_expectations(settings: GateSettings) -> list:
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


def _drift_expectations(settings: GateSettings) -> list:
    import great_expectations.expectations as gxe

    return [
        # Guards against training on data that no longer looks like the reference.
        gxe.ExpectColumnValuesToBeBetween(
            column="ks_statistic",
            max_value=settings.max_drift,
            meta={"fix": "inspect the new data, or raise validate.max_drift"},
        ),
    ]


def run_gate(
    splits: dict[str, Split],
    settings: GateSettings,
    docs_dir: Path | None = None,
    reference: dict[str, Split] | None = None,
) -> GateResult:
    """Build the tables, run every suite in one Checkpoint (Data Docs to `docs_dir`), and
    turn each failed expectation into a FailedExpectation."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx

    table = build_image_table(splits)
    classes = class_table(table, len(settings.class_names))
    # Each batch: its rows, its expectations, and the columns that identify a failing row.
    batches: dict[str, tuple[pd.DataFrame, list, list[str]]] = {}
    for name in splits:
        batches[f"images_{name}"] = (
            table[table["split"] == name].reset_index(drop=True),
            _image_expectations(name, settings, len(table)),
            ["index"],
        )
    batches["class_balance"] = (classes, _class_expectations(settings), ["split", "label"])
    drift = None
    if reference is not None:
        drift = drift_table(table, build_image_table(reference), len(settings.class_names))
        batches["drift"] = (drift, _drift_expectations(settings), ["label"])

    context = gx.get_context(mode="ephemeral")
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="validation",
            site_config={
                "class_name": "SiteBuilder",
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(docs_dir.resolve()),
                },
            },
        )
    source = context.data_sources.add_pandas("prepared")
    failures: list[FailedExpectation] = []
    for name, (frame, expectations, index_columns) in batches.items():
        batch = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = context.suites.add(gx.ExpectationSuite(name=name))
        for expectation in expectations:
            suite.add_expectation(expectation)
        definition = context.validation_definitions.add(
            gx.ValidationDefinition(name=name, data=batch, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"gate_{name}",
                validation_definitions=[definition],
                actions=[gx.checkpoint.UpdateDataDocsAction(name="docs")] if docs_dir else [],
                result_format={
                    "result_format": "COMPLETE",
                    "unexpected_index_column_names": index_columns,
                },
            )
        )
        result = checkpoint.run(batch_parameters={"dataframe": frame})
        for validation in result.run_results.values():
            failures += [
                _describe_failure(name, item) for item in validation.results if not item.success
            ]

    blank = int((table["std"] == 0).sum())
    near = count_near_duplicates(table, settings.near_duplicate_distance)
    warnings = {"near_duplicates": near, "blank_images": blank}
    summary = {
        "passed": not failures,
        "rows": int(len(table)),
        "rows_per_split": {name: int((table["split"] == name).sum()) for name in splits},
        "failures": len(failures),
        "warnings": int(sum(warnings.values())),
        "near_duplicates": near,
        "blank_images": blank,
        "exact_duplicates_across_splits": int(table["in_train"].sum()),
        "failed_expectations": [str(failure) for failure in failures],
    }
    if drift is not None:
        summary["drift_max_ks"] = float(drift["ks_statistic"].max())
    return GateResult(failures, warnings, summary)


def _describe_failure(batch: str, item) -> FailedExpectation:
    """One readable record from a Great Expectations result.

    Image batches give example image indices; class-level batches give class labels, and
    name the splits they were found in.
    """
    config = item.expectation_config
    kwargs = {key: value for key, value in config.kwargs.items() if key != "batch_id"}
    result = item.result or {}
    column = kwargs.pop("column", "(table)")
    if "unexpected_count" in result:
        values = result.get("partial_unexpected_list", [])[:5]
        observed = f"{result['unexpected_count']} unexpected value(s), e.g. {_plain(values)}"
    else:
        observed = _plain(result.get("observed_value"))
    expected = ", ".join(
        f"{key}={_plain(value)}" for key, value in kwargs.items() if value is not None
    )
    rows = [
        entry
        for entry in result.get("partial_unexpected_index_list", [])
        if isinstance(entry, dict)
    ]
    if batch.startswith("images_"):
        split = batch.removeprefix("images_")
        examples = [int(row["index"]) for row in rows[:5]]
    else:
        found_in = sorted({str(row["split"]) for row in rows if "split" in row})
        split = f"{batch}: {', '.join(found_in)}" if found_in else batch
        examples = [int(row["label"]) for row in rows[:5]]
    return FailedExpectation(
        split=split,
        column=str(column),
        expectation=config.type,
        observed=str(observed),
        expected=expected or "(see Data Docs)",
        examples=examples,
        fix=(config.meta or {}).get("fix", "see reports/validation/data_docs/index.html"),
    )


def _plain(value: Any) -> Any:
    """NumPy scalars and containers as plain Python, for readable messages and JSON."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
