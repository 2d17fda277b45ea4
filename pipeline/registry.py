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
MODEL_SHA_TAG = "model_sha256"
"""On every version: the SHA-256 of its Keras model file. The same model is one version."""


@dataclass(frozen=True)
class ScoredVersion:
    """A registered version and its predictions on the current test split."""

    version: str
    classes: list[str]
    predictions: np.ndarray | None
    """Label indices into the test split's classes; None when its classes differ."""
    run_id: str | None
    training_manifest: set[str] | None = None
    """The content digests of its training images; None for versions registered without."""


def log_classifier(
    keras_model_file: Path,
    classes: list[str],
    example: np.ndarray,
    manifest_file: Path | None = None,
):
    """Log the served classifier (see pipeline.serving) into the active run; return its info."""
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = _classifier_artifacts(keras_model_file, classes, Path(scratch), manifest_file)
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


def _classifier_artifacts(
    keras_model_file: Path, classes: list[str], scratch: Path, manifest_file: Path | None
) -> dict[str, str]:
    classes_file = scratch / "classes.json"
    classes_file.write_text(json.dumps(classes))
    artifacts = {
        serving.KERAS_MODEL_ARTIFACT: str(keras_model_file),
        serving.CLASSES_ARTIFACT: str(classes_file),
    }
    if manifest_file is not None and Path(manifest_file).is_file():
        artifacts[serving.MANIFEST_ARTIFACT] = str(manifest_file)
    return artifacts


def score_model_file(
    keras_model_file: Path,
    images: np.ndarray,
    classes: list[str],
    manifest_file: Path | None = None,
) -> ScoredVersion:
    """A model folder's model, scored through the served classifier's own code without
    registering anything (the challenger, in and out of DVC experiments)."""
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = _classifier_artifacts(keras_model_file, classes, Path(scratch), manifest_file)
        classifier = serving.ImageClassifier()
        classifier.load_context(_Context(artifacts))
        frame = classifier.predict(None, images)
    return _scored(None, frame, classes, None, classifier.training_manifest)


def version_of_model(name: str, model_sha256: str) -> ModelVersion | None:
    """The version of `name` that holds the model file with this SHA-256, if one does."""
    client = mlflow.MlflowClient()
    try:
        found = client.search_model_versions(
            f"name = '{_quoted(name)}' and tags.{MODEL_SHA_TAG} = '{_quoted(model_sha256)}'"
        )
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    return min(found, key=lambda version: int(version.version)) if found else None


def _quoted(value: str) -> str:
    return value.replace("'", "\\'")


class _Context:
    """The one attribute of mlflow.pyfunc.PythonModelContext that ImageClassifier reads."""

    def __init__(self, artifacts: dict[str, str]) -> None:
        self.artifacts = artifacts


def register_challenger(name: str, model_uri: str, tags: dict[str, str]) -> ModelVersion:
    """Register `model_uri` as a new version of `name` and point `challenger` at it."""
    version = mlflow.register_model(model_uri, name, tags=tags)
    name_challenger(name, version.version)
    return version


def name_challenger(name: str, version: str) -> None:
    """Point `challenger` at `version`."""
    mlflow.MlflowClient().set_registered_model_alias(name, CHALLENGER, version)


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
    manifest = getattr(model.unwrap_python_model(), "training_manifest", None)
    return _scored(version.version, frame, classes, version.run_id, manifest)


def _scored(
    version: str | None,
    frame,
    classes: list[str],
    run_id: str | None,
    manifest: set[str] | None,
) -> ScoredVersion:
    version_classes = [column for column in frame.columns if column != serving.PREDICTED_CLASS]
    predictions = None
    if sorted(version_classes) == sorted(classes):
        index = {name: position for position, name in enumerate(classes)}
        predictions = np.array([index[label] for label in frame[serving.PREDICTED_CLASS]])
    return ScoredVersion(version, version_classes, predictions, run_id, manifest)


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


def set_champion(name: str, version: str) -> None:
    """Point `champion` at `version`: the one change a service sees."""
    mlflow.MlflowClient().set_registered_model_alias(name, CHAMPION, version)
