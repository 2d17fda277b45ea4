"""What every stage shares: logging, the error boundary and the paths dvc.yaml declares."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

# DVC runs every stage from the project root, where dvc.yaml and params.yaml are.
PROJECT_ROOT = Path.cwd()
PARAMS_FILE = PROJECT_ROOT / "params.yaml"
RAW_DIR = PROJECT_ROOT / "data" / "raw"
PREPARED_DIR = PROJECT_ROOT / "data" / "prepared"
FEATURES_DIR = PROJECT_ROOT / "data" / "features"
MODELS_DIR = PROJECT_ROOT / "models"
REPORTS_DIR = PROJECT_ROOT / "reports"


def run_stage(main: Callable[[list[str]], None]) -> None:
    """Run a stage's main: a PipelineError becomes one clear message and exit status 2."""
    logging.basicConfig(
        level=os.environ.get("PIPELINE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Third-party INFO chatter (MLflow's migrations, alembic) drowns the pipeline's own lines.
    for noisy in ("alembic", "mlflow", "absl", "h5py", "matplotlib", "urllib3", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    stage = Path(sys.argv[0]).stem
    try:
        main(sys.argv[1:])
    except PipelineError as error:
        print(f"error in stage '{stage}': {error}", file=sys.stderr)
        sys.exit(2)


def write_text(path: Path, text: str) -> None:
    """Write a file atomically, so a failed stage never leaves a truncated report behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=path.suffix)
    with os.fdopen(handle, "w", newline="") as stream:
        stream.write(text)
    os.replace(temporary, path)


def write_json(path: Path, payload: Any) -> None:
    """Write JSON atomically (see write_text)."""
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run the stage that writes it (dvc repro)") from None
