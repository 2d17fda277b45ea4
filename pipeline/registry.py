"""The MLflow Model Registry: log a strategy's model as the served classifier, register it as
the `challenger`, and move the `champion` alias only when the promotion gate passes.

Aliases, not the deprecated stages: `models:/<name>@champion` is what a service loads.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from pipeline import serving
from pipeline.evaluation.promotion import Criterion, Decision, GateThresholds, decide_promotion
from pipeline.tracking.runs import model_requirements

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
CLASSIFIER_ARTIFACT = "classifier"


@dataclass(frozen=True)
class ScoredVersion:
    """A registered version and its predictions on the current test split."""

    version: str
    classes: list[str]
    predictions: np.ndarray | None
    """Label indices into the test split's classes; None when its classes differ."""
    run_id: str | None


def log_classifier(keras_model_file: Path, classes: list[str], example: np.ndarray):
    """Log the served classifier (see pipeline.serving) into the active run; return its info."""
    with tempfile.TemporaryDirectory() as scratch:
        classes_file = Path(scratch) / "classes.json"
        classes_file.write_text(json.dumps(classes))
        artifacts = {
            serving.KERAS_MODEL_ARTIFACT: str(keras_model_file),
            serving.CLASSES_ARTIFACT: str(classes_file),
        }
        classifier = serving.ImageClassifier()
        classifier.load_context(_Context(artifacts))
        signature = infer_signature(example, classifier.predict(None, example))
        with warnings.catch_warnings():
            # MLflow suggests type hints on predict(); the explicit signature above is ours.
            warnings.filterwarnings("ignore", message=".*type hints to the `predict` method")
            return mlflow.pyfunc.log_model(
                name=CLASSIFIER_ARTIFACT,
                python_model=serving.__file__,
                artifacts=artifacts,
                signature=signature,
                input_example=example,
                pip_requirements=model_requirements(),
            )


class _Context:
    """The one attribute of mlflow.pyfunc.PythonModelContext that ImageClassifier reads."""

    def __init__(self, artifacts: dict[str, str]) -> None:
        self.artifacts = artifacts


def register_challenger(name: str, model_uri: str, tags: dict[str, str]) -> ModelVersion:
    """Register `model_uri` as a new version of `name` and point `challenger` at it."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    mlflow.MlflowClient().set_registered_model_alias(name, CHALLENGER, version.version)
    return version


def champion_version(name: str) -> ModelVersion | None:
    """The version the `champion` alias points at, or None when there is none yet."""
    client = mlflow.MlflowClient()
    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        raise


def score_version(name: str, version: ModelVersion, images: np.ndarray, classes: list[str]):
    """Load a registered version as served and predict `images`; map its class names onto
    `classes` (None when the two sets differ: that model answers another question)."""
    model = mlflow.pyfunc.load_model(f"models:/{name}/{version.version}")
    frame = model.predict(images)
    version_classes = [column for column in frame.columns if column != serving.PREDICTED_CLASS]
    predictions = None
    if sorted(version_classes) == sorted(classes):
        index = {name: position for position, name in enumerate(classes)}
        predictions = np.array([index[label] for label in frame[serving.PREDICTED_CLASS]])
    return ScoredVersion(version.version, version_classes, predictions, version.run_id)


def gate_challenger(
    y_true: np.ndarray,
    challenger: ScoredVersion,
    champion: ScoredVersion | None,
    classes: list[str],
    thresholds: GateThresholds,
) -> Decision:
    """The gate's decision; a champion trained on other classes cannot be compared, and the
    challenger does not replace it without a person deciding so."""
    if champion is not None and champion.predictions is None:
        floors = decide_promotion(y_true, challenger.predictions, None, classes, thresholds)
        incomparable = Criterion(
            name="comparable",
            passed=False,
            observed=0.0,
            threshold=1.0,
            detail=(
                f"champion version {champion.version} predicts classes {champion.classes}, "
                f"the test split has {classes}: promote by hand (set the alias) or register "
                "under another mlflow.registered_model"
            ),
        )
        return Decision(
            passed=False,
            criteria=(*floors.criteria, incomparable),
            challenger_accuracy=floors.challenger_accuracy,
            champion_accuracy=None,
        )
    return decide_promotion(
        y_true,
        challenger.predictions,
        None if champion is None else champion.predictions,
        classes,
        thresholds,
    )


def record_decision(name: str, version: str, decision: Decision, champion: str | None) -> None:
    """Tag the challenger's version with the gate's verdict and reasons, so the registry alone
    says why each version was or was not promoted."""
    client = mlflow.MlflowClient()
    tags = {
        "gate.passed": str(decision.passed).lower(),
        "gate.reasons": " | ".join(decision.reasons()),
        "gate.compared_with": f"version {champion}" if champion else "no champion",
    }
    for criterion in decision.criteria:
        verdict = "passed" if criterion.passed else "failed"
        tags[f"gate.{criterion.name}"] = (
            f"{verdict}: observed {criterion.observed:.4f}, threshold {criterion.threshold:.4f}"
        )
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def crown(name: str, version: str) -> None:
    """Point `champion` at `version`: the one change a service sees."""
    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, version)
