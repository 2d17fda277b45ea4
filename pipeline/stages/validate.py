"""The data gate: run the Great Expectations suites over the prepared splits.

Writes the summary (DVC metrics) and the Data Docs HTML. On a failed expectation it lists each
one on stderr and exits non-zero, so no downstream stage runs and the previous models and
reports stay as they were.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.config import PipelineConfig, load_config
from pipeline.datasets.sources import DATASETS
from pipeline.entry import log_result, log_start, run_entry
from pipeline.errors import ValidationFailed
from pipeline.store import PLAN_FILE, ImageSplit, open_splits, read_json, write_json
from pipeline.validation.gate import run_gate
from pipeline.validation.suites import GateSettings

logger = logging.getLogger("pipeline.stages.validate")


# Schemes whose split counts come from the content hash and so stray from their fractions by
# chance; "source" keeps the source's own sets, and its fractions are the counts themselves.
HASHED_SCHEMES = ("stratified", "fixed_test")


def gate_settings(
    config: PipelineConfig, splits: Mapping[str, ImageSplit], plan: dict
) -> GateSettings:
    """The gate's expectations: the dataset's declared image shape (variable-size sources are
    decoded to RGB at `data.image_size`), the split's plan (split.json: fractions, scheme,
    images moved) and `validate.*`."""
    gate = config.validation
    return GateSettings(
        image_shape=DATASETS[config.data.dataset].image_shape(config.data.image_size),
        class_names=splits["train"].classes,
        # The fractions the split aimed at: the params' ones, or the source's own test set
        # (MNIST's 10k, cats-vs-dogs' fixed ranges) where it has one.
        expected_fractions=plan["expected_fractions"],
        split_tolerance=gate.split_tolerance,
        min_images_per_class=gate.min_images_per_class,
        max_class_imbalance=gate.max_class_imbalance,
        max_blank_fraction=gate.max_blank_fraction,
        near_duplicate_distance=gate.near_duplicate_distance,
        max_drift=gate.max_drift,
        hashed_counts=plan.get("scheme") in HASHED_SCHEMES,
        # Plans written before content hashing moved no image.
        reassigned=int(plan.get("reassigned", 0)),
    )


def validate_prepared(
    config: PipelineConfig,
    prepared_dir: Path,
    docs_dir: Path,
    summary_file: Path,
    reference_dir: Path | None = None,
) -> dict:
    """Run the gate on `prepared_dir`, testing drift against `reference_dir` (else
    `validate.reference`) only when it holds the same dataset and classes (else a warning and
    the reason in the summary's `drift`); write the summary and Data Docs; raise on failure.

    Both stores are opened, not loaded: the gate reads their images a batch at a time."""
    splits = open_splits(prepared_dir)
    reference = None
    try:
        plan = read_json(prepared_dir / PLAN_FILE)
        if reference_dir is None and config.validation.reference:
            reference_dir = Path(config.validation.reference)
        dataset = plan.get("dataset", config.data.dataset)
        drift_note = None
        if reference_dir:
            drift_note = _dataset_mismatch(dataset, Path(reference_dir))
            if drift_note is None:
                # Same dataset: run_gate still checks the class names before comparing.
                reference = open_splits(Path(reference_dir))
                drift_note = f"the reference holds the same dataset ('{dataset}') and classes"
        shutil.rmtree(docs_dir, ignore_errors=True)
        settings = gate_settings(config, splits, plan)
        result = run_gate(
            splits, settings, docs_dir, reference, drift_note, label_conflicts(config, plan)
        )
    finally:
        # The readers hold a file descriptor per shard they read.
        for split in [*splits.values(), *(reference or {}).values()]:
            split.close()
    write_json(summary_file, result.summary)
    for name, count in result.warnings.items():
        if count:
            logger.warning("%d %s (see %s)", count, name.replace("_", " "), docs_dir / "index.html")
    if not result.passed:
        lines = "\n".join(f"  - {failure}" for failure in result.failures)
        raise ValidationFailed(
            f"{len(result.failures)} expectation(s) failed on {prepared_dir}:\n{lines}\n"
            f"Details: {docs_dir / 'index.html'}"
        )
    return result.summary


def label_conflicts(config: PipelineConfig, plan: dict) -> list[dict]:
    """The identical images the split found under several classes (split.json's
    `label_conflicts`), which fail the gate; none with `validate.label_conflicts: drop`, where
    the split has left them out already (and listed them in reports/data/skipped.csv)."""
    conflicts = list(plan.get("label_conflicts") or [])
    if config.validation.label_conflicts == "drop":
        if conflicts:
            logger.info("%d image(s) under several classes were left out at split", len(conflicts))
        return []
    return conflicts


def _dataset_mismatch(dataset: str, reference_dir: Path) -> str | None:
    """Why the reference is not the same dataset as the data, or None when it is: drift
    between MNIST and digits, say, measures the switch, and would fail every first retrain."""
    plan_path = reference_dir / PLAN_FILE
    if not plan_path.is_file():
        return f"{reference_dir} has no {PLAN_FILE} naming its dataset"
    held = read_json(plan_path).get("dataset")
    if held is None:
        return f"{reference_dir / PLAN_FILE} names no dataset"
    if held != dataset:
        return f"the reference {reference_dir} holds dataset '{held}', the data is '{dataset}'"
    return None


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="validate", description=__doc__)
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument("--docs", type=Path, required=True, help="the Data Docs folder")
    parser.add_argument("--summary", type=Path, required=True, help="the summary JSON (metrics)")
    parser.add_argument(
        "--reference",
        type=Path,
        help="earlier prepared data to test drift against, instead of validate.reference "
        "(`pipeline retrain` passes the data the current models were trained on)",
    )
    args = parser.parse_args(argv)
    if args.reference is not None and not (args.reference / PLAN_FILE).is_file():
        raise ValidationFailed(
            f"--reference {args.reference} is not a prepared-data folder (no {PLAN_FILE})"
        )
    log_start(f"Great Expectations suites on {args.prepared}")
    summary = validate_prepared(
        load_config(), args.prepared, args.docs, args.summary, args.reference
    )
    log_result(
        f"data gate passed: {summary['rows']} images, {summary['warnings']} warning(s), "
        f"drift {'tested' if summary['drift']['compared'] else 'not tested'}"
    )


if __name__ == "__main__":
    run_entry(main, "stage 'validate'")
