"""Check the prepared splits; fail the pipeline, naming split and check, on any violation."""

from __future__ import annotations

import logging

from pipeline.config import load_config
from pipeline.datasets.split import load_splits
from pipeline.errors import ValidationFailed
from pipeline.stages._common import PARAMS_FILE, PREPARED_DIR, REPORTS_DIR, run_stage, write_json
from pipeline.validation import check_splits, summarize

logger = logging.getLogger("pipeline.stages.validate")


def main(argv: list[str]) -> None:
    config = load_config(PARAMS_FILE).validation
    splits = load_splits(PREPARED_DIR)
    failures = check_splits(splits, config.min_images_per_class)
    write_json(REPORTS_DIR / "validation" / "summary.json", summarize(splits, failures))
    if failures:
        lines = "\n".join(f"  - {failure}" for failure in failures)
        raise ValidationFailed(
            f"{len(failures)} check(s) failed on {PREPARED_DIR}:\n{lines}\n"
            "Fix the data (or the split fractions) and run dvc repro again."
        )
    logger.info("all checks passed: %s", {name: len(s.y) for name, s in splits.items()})


if __name__ == "__main__":
    run_stage(main)
