"""Which model `pipeline predict` uses: the one asked for (`--model`), else the registry's
`champion`, else the best strategy's `model.keras` by the evaluate stage's test accuracy.

A models:/ or runs:/ URI is resolved through the project's tracking store; a store that is
absent or does not answer is named, or (while looking for a champion) passed over.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError, TrackingUnavailable
from pipeline.store import MODEL_FILE, read_json

logger = logging.getLogger(__name__)

MODEL_URI_PREFIXES: tuple[str, ...] = ("models:/", "runs:/")
"""Model sources that MLflow resolves through the tracking store."""


@dataclass(frozen=True)
class ModelChoice:
    """Where the model comes from (a models:/ or runs:/ URI, or a path) and why it was chosen."""

    source: str
    reason: str


def is_model_uri(source: str) -> bool:
    """Whether `source` is a models:/ or runs:/ URI (else a path)."""
    return source.startswith(MODEL_URI_PREFIXES)


def _missing_sqlite_store(store_uri: str) -> Path | None:
    """The database file of a SQLite store that does not exist yet (MLflow would create an
    empty one just to find nothing in it), else None."""
    if not store_uri.startswith("sqlite:///"):
        return None
    database = Path(store_uri.removeprefix("sqlite:///"))
    return None if database.is_file() else database


def use_tracking_store(store_uri: str, source: str) -> None:
    """Point MLflow at the store that resolves `source` (a models:/ or runs:/ URI); raise
    TrackingUnavailable, naming the store, when it does not exist or does not answer."""
    from pipeline.tracking.server import check_tracking_server

    missing = _missing_sqlite_store(store_uri)
    if missing is not None:
        raise TrackingUnavailable(
            f"{source} needs a tracking store, and {missing} does not exist: run from the "
            "project root (or pass --root), or set MLFLOW_TRACKING_URI to the store that holds it"
        )
    check_tracking_server(store_uri)
    import mlflow

    mlflow.set_tracking_uri(store_uri)


def find_champion(store_uri: str, registered_name: str) -> str | None:
    """`models:/<registered_name>@champion` when the tracking store at `store_uri` has that
    alias, else None. A store that is absent or does not answer is reported (a warning) and
    passed over, so predict falls back to the project's own models."""
    # A SQLite file that does not exist holds no registry: nothing to create, nothing to warn.
    if _missing_sqlite_store(store_uri) is not None:
        return None
    try:
        use_tracking_store(store_uri, f"models:/{registered_name}@champion")
    except TrackingUnavailable as error:
        logger.warning("%s Looking for a local model instead.", error)
        return None
    from mlflow.exceptions import MlflowException

    from pipeline.registry import CHAMPION, champion_version

    try:
        version = champion_version(registered_name)
    except MlflowException as error:
        logger.warning(
            "cannot read the champion of %s from %s (%s); looking for a local model instead",
            registered_name,
            store_uri,
            str(error).splitlines()[0],
        )
        return None
    if version is None:
        return None
    logger.info("%s@%s is version %s", registered_name, CHAMPION, version.version)
    return f"models:/{registered_name}@{CHAMPION}"


def best_local_model(metrics_file: Path, models_dir: Path) -> Path | None:
    """models/<strategy>/model.keras of the strategy with the highest test accuracy in
    `metrics_file` (the promote stage's choice, ties to the first strategy); None when nothing
    has been evaluated."""
    from pipeline.config import STRATEGY_NAMES
    from pipeline.evaluation.promotion import choose_strategy

    if not metrics_file.is_file():
        return None
    metrics = read_json(metrics_file)
    available = [
        name
        for name in STRATEGY_NAMES
        if (models_dir / name / MODEL_FILE).is_file()
        and isinstance(metrics.get(name), dict)
        and "test_accuracy" in metrics[name]
    ]
    if not available:
        return None
    return models_dir / choose_strategy(metrics, available, "best", metrics_file) / MODEL_FILE


def choose_model(
    requested: str | None,
    champion: Callable[[], str | None],
    metrics_file: Path,
    models_dir: Path,
) -> ModelChoice:
    """`requested` when given; else the registry's champion (`champion()` looks it up); else the
    best evaluated strategy's model.keras. Raises PipelineError when there is none of them."""
    if requested:
        return ModelChoice(requested, "--model")
    uri = champion()
    if uri is not None:
        return ModelChoice(uri, "the registry's champion")
    best = best_local_model(metrics_file, models_dir)
    if best is not None:
        return ModelChoice(str(best), f"the best strategy by test_accuracy in {metrics_file}")
    raise PipelineError(
        f"no model to predict with: no champion in the registry, and {metrics_file} names no "
        f"evaluated model under {models_dir}. Run `dvc repro`, or pass --model "
        "(models:/<name>@<alias>, models:/<name>/<version> or path/to/model.keras)"
    )
