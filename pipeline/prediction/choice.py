"""Which model `pipeline predict` uses: the one asked for (`--model`: a models:/ or runs:/
URI, a path, or a strategy's name for its folder under models/), else the registry's
`champion`, or an error saying why there is none. Nothing is substituted silently: a local
strategy's model answers only when `--model <strategy>` names it.

A models:/ or runs:/ URI is resolved through the project's tracking store; a store that is
absent or does not answer is named.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError, RegistryError, TrackingUnavailable

logger = logging.getLogger(__name__)

MODEL_URI_PREFIXES: tuple[str, ...] = ("models:/", "runs:/")
"""Model sources that MLflow resolves through the tracking store."""


@dataclass(frozen=True)
class ModelChoice:
    """Where the model comes from (a models:/ or runs:/ URI, or a path), why it was chosen, and
    how answers name it (empty: the loaded model's own name)."""

    source: str
    reason: str
    name: str = ""


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


def find_champion(store_uri: str, registered_name: str) -> str:
    """`models:/<registered_name>/<version>` of the version `champion` points at in the
    tracking store at `store_uri`. Raises TrackingUnavailable (no store, or it does not
    answer) or RegistryError (no version registered, no champion alias), saying why."""
    use_tracking_store(store_uri, f"models:/{registered_name}@champion")
    from mlflow.exceptions import MlflowException

    from pipeline.registry import CHAMPION, champion_version, registered_versions

    try:
        version = champion_version(registered_name)
        versions = registered_versions(registered_name) if version is None else []
    except MlflowException as error:
        raise TrackingUnavailable(
            f"cannot read the champion of {registered_name} from {store_uri}: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else error!r}"
        ) from None
    if version is None and not versions:
        raise RegistryError(
            f"the registry at {store_uri} holds no version of {registered_name}: nothing has "
            "passed the promotion gate yet (run `dvc repro` or `pipeline retrain`)"
        )
    if version is None:
        raise RegistryError(
            f"{registered_name} has version(s) {', '.join(versions)} but no `{CHAMPION}` "
            "alias: no version has passed the promotion gate (run `pipeline retrain`), or set "
            "the alias in MLflow"
        )
    logger.info("%s@%s is version %s", registered_name, CHAMPION, version.version)
    return f"models:/{registered_name}/{version.version}"


STRATEGY_HINT = (
    "pass --model <strategy> (scratch, feature_extraction or fine_tune: models/<strategy>) to "
    "predict with a local model, or --model models:/<name>/<version>"
)


def choose_model(
    requested: str | None,
    champion: Callable[[], str],
    models_dir: Path,
    models_label: str = "models",
) -> ModelChoice:
    """`requested` when given (a strategy's name means its folder under `models_dir`, named
    `models_label`/<strategy> in answers); else the registry's champion (`champion()` finds
    it or raises saying why). The error then also says how to choose a local model."""
    from pipeline.config import STRATEGY_NAMES

    if requested in STRATEGY_NAMES:
        return ModelChoice(
            str(models_dir / requested), f"--model {requested}", f"{models_label}/{requested}"
        )
    if requested:
        return ModelChoice(requested, "--model")
    try:
        uri = champion()
    except PipelineError as error:
        raise type(error)(f"no champion to predict with: {error}. Or {STRATEGY_HINT}") from None
    return ModelChoice(uri, "the registry's champion", uri)
