"""Validate params.yaml before any other stage runs.

Every stage depends on this stage's output, and DVC deletes a stage's outputs before running
it: checking here, first, means a typo stops the pipeline while earlier results are intact.
"""

from __future__ import annotations

import logging

from pipeline.config import load_config
from pipeline.stages._common import PARAMS_FILE, REPORTS_DIR, run_stage, write_json

logger = logging.getLogger("pipeline.stages.check_params")


def main(argv: list[str]) -> None:
    config = load_config(PARAMS_FILE)
    # The content is constant on purpose: re-checking valid params must not re-run anything.
    write_json(REPORTS_DIR / "params_check.json", {"params": "valid"})
    logger.info("params.yaml is valid (dataset=%s)", config.data.dataset)


if __name__ == "__main__":
    run_stage(main)
