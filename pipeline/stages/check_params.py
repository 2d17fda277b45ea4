"""Validate params.yaml, and that the chosen dataset can be fetched, before any other stage.

Every stage depends on this stage's output, and DVC deletes a stage's outputs before running
it: checking here, first, means a typo, a missing image folder or a dataset with no known
address stops the pipeline while earlier results are intact.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import DataConfig, load_config
from pipeline.datasets.download import resolve_source, scan_image_folder
from pipeline.datasets.sources import DATASETS
from pipeline.stages._common import PARAMS_FILE, REPORTS_DIR, run_stage, write_json
from pipeline.stages.download import source_overrides

logger = logging.getLogger("pipeline.stages.check_params")


def check_dataset_source(config: DataConfig) -> None:
    """Raise DataError if the configured dataset cannot be fetched as configured."""
    if config.dataset == "image_folder":
        scan_image_folder(Path(config.image_folder))
        return
    spec = DATASETS[config.dataset]
    override = source_overrides(config).get(spec.name)
    for source in spec.files:
        resolve_source(spec, source, config.mirror, override)


def main(argv: list[str]) -> None:
    config = load_config(PARAMS_FILE)
    check_dataset_source(config.data)
    # The content is constant on purpose: re-checking valid params must not re-run anything.
    write_json(REPORTS_DIR / "params_check.json", {"params": "valid"})
    logger.info("params.yaml is valid (dataset=%s)", config.data.dataset)


if __name__ == "__main__":
    run_stage(main)
