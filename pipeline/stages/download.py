"""Fetch the configured dataset's source files into data/raw/<dataset>/, verified."""

from __future__ import annotations

import logging

from pipeline.config import load_config
from pipeline.datasets.download import fetch_dataset
from pipeline.datasets.sources import DATASETS
from pipeline.stages._common import PARAMS_FILE, RAW_DIR, run_stage

logger = logging.getLogger("pipeline.stages.download")


def main(argv: list[str]) -> None:
    config = load_config(PARAMS_FILE)
    spec = DATASETS[config.data.dataset]
    paths = fetch_dataset(spec, RAW_DIR / spec.name)
    logger.info("%s: %d file(s) verified under %s", spec.name, len(paths), RAW_DIR / spec.name)


if __name__ == "__main__":
    run_stage(main)
