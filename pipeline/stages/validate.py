"""The data gate: run the Great Expectations suites over the prepared splits.

Writes reports/validation/summary.json (DVC metrics) and the Data Docs HTML beside it. On a
failed expectation it lists each one on stderr and exits non-zero, so no downstream stage runs
and the previous models and reports stay as they were.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from pipeline.config import PipelineConfig, load_config
from pipeline.datasets.sources import DATASETS
from pipeline.datasets.split import Split, load_splits
from pipeline.errors import ValidationFailed
from pipeline.stages._common import PARAMS_FILE, PREPARED_DIR, REPORTS_DIR, run_stage, write_json
from pipeline.validation import GateSettings, run_gate

logger = logging.getLogger("pipeline.stages.validate")

VALIDATION_DIR = REPORTS_DIR / "validation"


def gate_settings(config: PipelineConfig, splits: dict[str, Split]) -> GateSettings:
    """The gate's expectations: the dataset's declared image shape, the configured fractions
    and the `validate.*` bounds."""
    spec = DATASETS[config.data.dataset]
    channels = splits["train"].x.shape[-1] if splits["train"].x.ndim == 4 else 1
    shape = spec.native_shape or (config.data.image_size, config.data.image_size, channels)
    data, gate = config.data, config.validation
    return GateSettings(
        image_shape=shape,
        class_names=splits["train"].classes,
        expected_fractions={
            "train": 1.0 - data.val_fraction - data.test_fraction,
            "val": data.val_fraction,
            "test": data.test_fraction,
        },
        split_tolerance=gate.split_tolerance,
        min_images_per_class=gate.min_images_per_class,
        max_class_imbalance=gate.max_class_imbalance,
        max_blank_fraction=gate.max_blank_fraction,
        near_duplicate_distance=gate.near_duplicate_distance,
        max_drift=gate.max_drift,
    )


def validate_prepared(config: PipelineConfig, prepared_dir: Path, output_dir: Path) -> dict:
    """Run the gate on `prepared_dir`; write the summary and Data Docs; raise on failure."""
    splits = load_splits(prepared_dir)
    reference = (
        load_splits(Path(config.validation.reference)) if config.validation.reference else None
    )
    docs_dir = output_dir / "data_docs"
    shutil.rmtree(docs_dir, ignore_errors=True)
    result = run_gate(splits, gate_settings(config, splits), docs_dir, reference)
    write_json(output_dir / "summary.json", result.summary)
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


def main(argv: list[str]) -> None:
    summary = validate_prepared(load_config(PARAMS_FILE), PREPARED_DIR, VALIDATION_DIR)
    logger.info("data gate passed: %d images, %d warning(s)", summary["rows"], summary["warnings"])


if __name__ == "__main__":
    run_stage(main)
