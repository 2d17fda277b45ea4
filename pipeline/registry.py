"""The MLflow Model Registry: log a strategy's model as the served classifier, register it as
the `challenger`, and move the `champion` alias only when the promotion gate passes. The gate's
decision itself is pure (pipeline.evaluation.promotion); this module scores and records it.

Aliases, not the deprecated stages: `models:/<name>@champion` is what a service loads.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature

from pipeline import columns
from pipeline.datasets import images as image_decoding
from pipeline.datasets.images import ResizeMode
from pipeline.errors import RegistryError, TrackingUnavailable
from pipeline.evaluation.metrics import predict_batch_size
from pipeline.evaluation.promotion import Decision, ScoredVersion, UnusableChampion
from pipeline.models import outputs
from pipeline.serving import model as serving
from pipeline.serving.verification import MODEL_SHA_TAG, load_verified_version
from pipeline.store import CLASSES_FILE, ImageSplit, write_classes
from pipeline.tracking.runs import create_run, model_requirements, pinned_requirements

logger = logging.getLogger(__name__)

CHALLENGER = "challenger"
CHAMPION = "champion"
CLASSIFIER_ARTIFACT = "classifier"
CHAMPION_PREVIOUS_TAG = "champion.previous"
"""On a version that became champion: the version it replaced (what a rollback goes back to)."""
CHAMPION_SINCE_TAG = "champion.since"
ROLLED_BACK_TAG = "rollback.rolled_back"
"""On a version a rollback took out of service: the gate never promotes its model again."""
MAX_TAG_TEXT = 1000


def log_classifier(
    keras_model_file: Path,
    classes: list[str],
    example: np.ndarray,
    manifest_file: Path | None = None,
    resize: ResizeMode = "stretch",
    monitoring_splits: tuple[ImageSplit, ImageSplit] | None = None,
    max_pixels: int = serving.DEFAULT_MAX_PIXELS,
    exports: dict[str, Path] | None = None,
):
    """Log the served classifier (see pipeline.serving.model) into the active run; return its
    info.

    `resize` is the split's `data.resize`: the served model decodes image files with it, so a
    file gets the answer it gets in the test split. The input example is `example`'s first
    image as a PNG file, as a client sends it. With `monitoring_splits` (train, test) the
    version ships its embedding projection and its monitoring reference (monitoring_artifacts).
    `max_pixels` is the split's `data.max_pixels`: the served model refuses larger images unread.
    `exports` maps an export's name (onnx, tflite-int8) to its folder (pipeline.export: the
    model, signature.json, parity.json): each travels with the version as the artifact
    `export_<name>`, so models:/<name>@champion carries it and `serve.backend: onnx` runs it.
    """
    config = {
        serving.RESIZE_CONFIG: resize,
        serving.MAX_BATCH_CONFIG: serving.DEFAULT_MAX_BATCH,
        serving.MAX_PIXELS_CONFIG: max_pixels,
        # Logged so a server can choose it at load time: MLflow overrides only the keys a
        # version was logged with, and drops the others with a warning.
        serving.BACKEND_CONFIG: serving.DEFAULT_BACKEND,
    }
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = _classifier_artifacts(keras_model_file, classes, Path(scratch), manifest_file)
        classifier = serving.ImageClassifier()
        classifier.load_context(_Context(artifacts, config))
        for export, folder in (exports or {}).items():
            artifacts[export_artifact(export)] = str(folder)
        if monitoring_splits is not None:
            try:
                artifacts.update(
                    monitoring_artifacts(classifier, *monitoring_splits, Path(scratch))
                )
            except ValueError as error:
                # Monitoring is the loop's, not the gate's: the version is registered all the
                # same, and `pipeline monitor` says it has no reference.
                classifier.projection = None
                logger.warning(
                    "registering without a monitoring reference (pipeline monitor cannot judge "
                    "this version's traffic): %s",
                    error,
                )
        request = pd.DataFrame({serving.IMAGE_COLUMN: [encode_png(example[0])]})
        signature = classifier_signature(classifier.classes)
        with warnings.catch_warnings(), pinned_requirements():
            # MLflow suggests type hints on predict(); the explicit signature above is ours.
            warnings.filterwarnings("ignore", message=".*type hints to the `predict` method")
            return mlflow.pyfunc.log_model(
                name=CLASSIFIER_ARTIFACT,
                python_model=serving.__file__,
                artifacts=artifacts,
                signature=signature,
                input_example=request,
                pip_requirements=model_requirements(with_onnx="onnx" in (exports or {})),
                model_config=config,
                metadata={"image_shape": list(classifier.image_shape)},
                # serving.py's imports from this package, so the model loads without it.
                code_paths=[outputs.__file__, image_decoding.__file__, columns.__file__],
            )


def export_artifact(export: str) -> str:
    """The pyfunc artifact holding export `export` (onnx, tflite-int8): `export_onnx`."""
    return f"{serving.EXPORT_ARTIFACT_PREFIX}{export.replace('-', '_')}"


PROJECTION_SAMPLE = 1000
"""Training images the embedding projection is fitted on (a fixed sample of larger splits)."""
REFERENCE_SAMPLE = 2000
"""Test images in a version's monitoring reference (a fixed sample of larger splits)."""


def monitoring_artifacts(
    classifier: serving.ImageClassifier, train: ImageSplit, test: ImageSplit, scratch: Path
) -> dict[str, str]:
    """The version's embedding projection (PCA of its penultimate layer on the training
    split) and its monitoring reference (the test split's embeddings, predicted classes and
    confidences), written into `scratch`; {artifact name: path}."""
    from pipeline.monitoring.reference import (
        Reference,
        apply_projection,
        fit_projection,
        save_projection,
        save_reference,
    )

    size = min(predict_batch_size(classifier.image_shape), serving.DEFAULT_MAX_BATCH)
    rows = _sample_rows(len(train), PROJECTION_SAMPLE)
    features = np.concatenate(
        [classifier.call_with_features(batch)[0] for _, batch in train.batches(size, rows)]
    )
    projection = fit_projection(features)
    embeddings, predicted, confidences = [], [], []
    for _, batch in test.batches(size, _sample_rows(len(test), REFERENCE_SAMPLE)):
        hidden, raw = classifier.call_with_features(batch)
        probabilities = outputs.class_probabilities(raw)
        embeddings.append(apply_projection(hidden, projection))
        predicted.append(probabilities.argmax(axis=1))
        confidences.append(probabilities.max(axis=1))
    reference = Reference(
        embeddings=np.concatenate(embeddings).astype(np.float32),
        predicted=np.concatenate(predicted).astype(np.int64),
        confidences=np.concatenate(confidences).astype(np.float64),
        classes=tuple(classifier.classes),
    )
    projection_file = scratch / "projection.npz"
    reference_file = scratch / "reference.npz"
    save_projection(projection_file, projection)
    save_reference(reference_file, reference)
    # The served model now embeds as it will once loaded from the registry.
    classifier.projection = (
        projection.mean.astype(np.float32),
        projection.components.astype(np.float32),
    )
    return {
        serving.PROJECTION_ARTIFACT: str(projection_file),
        serving.REFERENCE_ARTIFACT: str(reference_file),
    }


def _sample_rows(count: int, limit: int) -> np.ndarray:
    """Every row, or a fixed sorted sample of `limit` of them (the same on every run)."""
    if count <= limit:
        return np.arange(count)
    return np.sort(np.random.default_rng(0).choice(count, size=limit, replace=False))


def classifier_signature(classes: list[str]) -> ModelSignature:
    """The served classifier's signature (pipeline.serving), which MLflow validates and its UI
    shows: one of two optional inputs, `image` (encoded files: binary, base64 in JSON) or
    `pixels` (uint8 arrays), the answer's columns, and the params `row_errors` and `top_k`.

    `pixels` is typed Any: MLflow checks a nested Array type element by element in Python
    (about 3 minutes for 1,000 32x32 RGB images), so the model checks its shape and dtype.
    """
    from mlflow.types.schema import AnyType, Array, ColSpec, ParamSchema, ParamSpec, Schema

    inputs = Schema(
        [
            ColSpec("binary", serving.IMAGE_COLUMN, required=False),
            ColSpec(AnyType(), serving.PIXELS_COLUMN, required=False),
        ]
    )
    outputs = Schema(
        [
            ColSpec("string", serving.PREDICTED_CLASS),
            ColSpec("double", serving.PROBABILITY),
            ColSpec(Array("string"), serving.TOP_CLASSES),
            ColSpec(Array("double"), serving.TOP_PROBABILITIES),
            *[ColSpec("double", name) for name in classes],
            *[ColSpec("string", name, required=False) for name in serving.TRAILING_COLUMNS],
        ]
    )
    params = ParamSchema(
        [
            ParamSpec(serving.ROW_ERRORS_PARAM, "boolean", False),
            ParamSpec(serving.TOP_K_PARAM, "long", serving.DEFAULT_TOP_K),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs, params=params)


def encode_png(image: np.ndarray) -> bytes:
    """One uint8 image, (H, W, 1) or (H, W, 3), as a PNG file's bytes."""
    from PIL import Image

    pixels = image[..., 0] if image.shape[-1] == 1 else image
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buffer, format="PNG")
    return buffer.getvalue()


def _classifier_artifacts(
    keras_model_file: Path, classes: list[str], scratch: Path, manifest_file: Path | None
) -> dict[str, str]:
    write_classes(scratch, classes)
    classes_file = scratch / CLASSES_FILE
    artifacts = {
        serving.KERAS_MODEL_ARTIFACT: str(keras_model_file),
        serving.CLASSES_ARTIFACT: str(classes_file),
    }
    if manifest_file is not None and Path(manifest_file).is_file():
        artifacts[serving.MANIFEST_ARTIFACT] = str(manifest_file)
    return artifacts


def score_model_file(
    keras_model_file: Path,
    images: ImageSplit,
    classes: list[str],
    manifest_file: Path | None = None,
) -> ScoredVersion:
    """A model folder's model, scored on the split `images` through the served classifier's
    own code without registering anything (the challenger, in and out of DVC experiments)."""
    with tempfile.TemporaryDirectory() as scratch:
        artifacts = _classifier_artifacts(keras_model_file, classes, Path(scratch), manifest_file)
        classifier = serving.ImageClassifier()
        classifier.load_context(_Context(artifacts))
        answers = _served_answers(lambda batch: classifier.predict(None, batch), images)
    return _scored(None, answers, classes, None, classifier.training_manifest)


def _served_answers(
    predict: Callable[[np.ndarray], pd.DataFrame], images: ImageSplit
) -> tuple[list[str], list[str]]:
    """The served classifier's class columns and each image's predicted class, in row order,
    for every image of the split `images`: predicted a batch at a time, so each image is
    predicted once and one batch of images is in memory."""
    columns: list[str] = []
    predicted: list[str] = []
    size = min(predict_batch_size(images.image_shape), serving.DEFAULT_MAX_BATCH)
    for _, batch in images.batches(size):
        frame = predict(batch)
        columns = serving.class_columns(frame.columns)
        predicted.extend(frame[serving.PREDICTED_CLASS])
    return columns, predicted


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
    """The attributes of mlflow.pyfunc.PythonModelContext that ImageClassifier reads."""

    def __init__(self, artifacts: dict[str, str], model_config: dict | None = None) -> None:
        self.artifacts = artifacts
        self.model_config = model_config or {}


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


def registered_versions(name: str) -> list[str]:
    """The versions of `name`, in order (none when `name` is not registered)."""
    try:
        found = mlflow.MlflowClient().search_model_versions(f"name = '{_quoted(name)}'")
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return sorted((str(version.version) for version in found), key=int)


def score_version(name: str, version: ModelVersion, images: ImageSplit, classes: list[str]):
    """Load a registered version as served (its model file checked against the SHA-256 it was
    registered with) and predict the split `images`, a batch at a time; map its class names
    onto `classes` (None when the two sets differ: that model answers another question)."""
    with tempfile.TemporaryDirectory(prefix="pipeline-version-") as scratch:
        model = load_verified_version(name, str(version.version), Path(scratch))
    schema = model.metadata.get_input_schema()
    answers = _served_answers(
        lambda batch: model.predict(serving.served_input(schema, batch)), images
    )
    manifest = getattr(model.unwrap_python_model(), "training_manifest", None)
    return _scored(str(version.version), answers, classes, version.run_id, manifest)


def score_contenders(
    name: str,
    model_file: Path,
    manifest_file: Path,
    images: ImageSplit,
    classes: list[str],
    model_sha256: str | None,
) -> tuple[ScoredVersion, ScoredVersion | None, UnusableChampion | None]:
    """The challenger (the model file) and the current champion, if any, scored on the same
    split through the served classifier, each predicting every image once. With
    `model_sha256` the challenger carries the version of `name` that already holds that file,
    if one does. A champion that cannot be loaded or scored (a model file changed or truncated
    in the artifact store) is returned as unusable, with the reason, not raised: the gate then
    judges the challenger on the floors alone."""
    challenger = score_model_file(model_file, images, classes, manifest_file)
    if model_sha256 is not None:
        existing = version_of_model(name, model_sha256)
        # A version holding the same file is reused only while its stored copy is intact:
        # one damaged in the artifact store (an unusable champion among them) would otherwise
        # stand for the challenger forever, and the gate could never replace it.
        if existing is not None and _verified_version(name, str(existing.version)):
            challenger = replace(challenger, version=str(existing.version))
    current = champion_version(name)
    if current is None:
        return challenger, None, None
    try:
        return challenger, score_version(name, current, images, classes), None
    except Exception as error:  # noqa: BLE001 - whatever breaks the champion, the gate decides
        reason = _first_line(error)
        try:
            # A registry that stopped answering is no verdict on the champion: the stage
            # fails (the alias stays) rather than judging on the floors alone.
            champion_version(name)
        except Exception:  # noqa: BLE001 - MLflow's and the transport's own errors
            raise TrackingUnavailable(
                f"the registry stopped answering while champion version {current.version} of "
                f"{name} was loaded ({reason}); nothing was decided: run the gate again"
            ) from None
        logger.error(
            "champion version %s of %s cannot be loaded or scored: %s",
            current.version,
            name,
            reason,
        )
        return challenger, None, UnusableChampion(str(current.version), reason)


def _check_loadable(name: str, version: str) -> None:
    """Raise RegistryError, naming the version and why, when its model file does not match the
    SHA-256 it was registered with (or cannot be downloaded)."""
    from pipeline.errors import ModelError
    from pipeline.serving.verification import verified_model_path

    with tempfile.TemporaryDirectory() as scratch:
        try:
            verified_model_path(name, version, Path(scratch))
        except ModelError as error:
            raise RegistryError(
                f"version {version} of {name} cannot be served: {error}. Roll back to another "
                "version (--to), or retrain and promote a new one"
            ) from None


def _verified_version(name: str, version: str) -> bool:
    """Whether version `version` of `name` downloads and matches its registered SHA-256."""
    try:
        _check_loadable(name, version)
    except RegistryError as error:
        logger.warning("%s", error)
        return False
    return True


def _first_line(error: BaseException) -> str:
    """An exception's first line (MLflow's and Keras' messages run to pages), or its type."""
    text = str(error).strip()
    return text.splitlines()[0][:MAX_TAG_TEXT] if text else type(error).__name__


def _scored(
    version: str | None,
    answers: tuple[list[str], list[str]],
    classes: list[str],
    run_id: str | None,
    manifest: set[str] | None,
) -> ScoredVersion:
    version_classes, predicted = answers
    predictions = None
    if sorted(version_classes) == sorted(classes):
        index = {name: position for position, name in enumerate(classes)}
        predictions = np.array([index[label] for label in predicted])
    return ScoredVersion(version, version_classes, predictions, run_id, manifest)


def record_decision(name: str, version: str, decision: Decision, champion: str | None) -> None:
    """Tag the challenger's version with the gate's verdict and reasons, so the registry alone
    says why each version was or was not promoted."""
    client = mlflow.MlflowClient()
    tags = {
        "gate.passed": str(decision.passed).lower(),
        "gate.reasons": " | ".join(decision.reasons()),
        "gate.compared_with": f"version {champion}" if champion else "no champion",
    }
    if decision.champion_unusable:
        tags["gate.compared_with"] = f"no one: champion version {champion} is unusable"
        tags["gate.champion_unusable"] = decision.champion_unusable[:MAX_TAG_TEXT]
    for criterion in decision.criteria:
        verdict = "passed" if criterion.passed else "failed"
        tags[f"gate.{criterion.name}"] = (
            f"{verdict}: observed {criterion.observed:.4f}, threshold {criterion.threshold:.4f}"
        )
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)


def set_champion(name: str, version: str) -> None:
    """Point `champion` at `version`: the one change a service sees. The version is tagged
    with the one it replaces and when, the history `pipeline rollback` walks back."""
    client = mlflow.MlflowClient()
    current = champion_version(name)
    # A SQLite store answers every version as a number, a tracking server as text.
    if current is not None and str(current.version) != str(version):
        client.set_model_version_tag(name, version, CHAMPION_PREVIOUS_TAG, str(current.version))
    client.set_model_version_tag(name, version, CHAMPION_SINCE_TAG, _now())
    client.set_registered_model_alias(name, CHAMPION, version)


@dataclass(frozen=True)
class Rollback:
    """One move of `champion` back to an earlier version, as recorded on both versions."""

    registered_model: str
    from_version: str
    to_version: str
    reason: str
    user: str
    at: str

    def to_dict(self) -> dict:
        return asdict(self)


def roll_back_champion(name: str, reason: str, user: str, to: str | None = None) -> Rollback:
    """Move `champion` from its version back to `to`, by default the version it replaced
    (its CHAMPION_PREVIOUS_TAG). The rolled-back version is tagged so that the gate never
    promotes that model again; both versions record the reason, the user and the time."""
    client = mlflow.MlflowClient()
    current = champion_version(name)
    if current is None:
        raise RegistryError(f"{name} has no champion: there is nothing to roll back")
    target = to if to is not None else current.tags.get(CHAMPION_PREVIOUS_TAG)
    if target is None:
        raise RegistryError(
            f"no version of {name} held champion before version {current.version}: name the "
            "version to serve with --to VERSION"
        )
    target = str(target)
    current_version = str(current.version)
    known = {
        str(version.version): version
        for version in client.search_model_versions(f"name = '{_quoted(name)}'")
    }
    if target not in known:
        raise RegistryError(
            f"{name} has no version {target}; its versions are "
            f"{', '.join(sorted(known, key=int))}: pass one of them with --to"
        )
    if target == current_version:
        raise RegistryError(f"version {target} of {name} is already the champion")
    barred = known[target].tags.get(ROLLED_BACK_TAG) == "true"
    if barred and to is None:
        # The history can lead to a version taken out of service for its own reason (after
        # a --to restored a later one): only a person naming it may bring it back.
        why = known[target].tags.get("rollback.reason") or "no reason recorded"
        raise RegistryError(
            f"version {target} of {name}, which version {current_version} replaced, was "
            f"rolled back itself ({why}): pass --to {target} to serve it anyway, or --to "
            "another version"
        )
    # The version rolled back to must load: a model file changed in the artifact store since
    # its registration would be refused by `pipeline serve`, which would keep serving the very
    # version the user is rolling back from.
    _check_loadable(name, target)
    rollback = Rollback(name, current_version, target, reason, user, _now())
    text = reason[:MAX_TAG_TEXT]
    for key, value in {
        ROLLED_BACK_TAG: "true",
        "rollback.reason": text,
        "rollback.by": user,
        "rollback.at": rollback.at,
        "rollback.replaced_by": target,
    }.items():
        client.set_model_version_tag(name, current_version, key, value)
    for key, value in {
        "restored.reason": text,
        "restored.by": user,
        "restored.at": rollback.at,
        "restored.from": current_version,
    }.items():
        client.set_model_version_tag(name, target, key, value)
    if barred:
        # A person chose this version again: it is no longer barred from the gate.
        client.delete_model_version_tag(name, target, ROLLED_BACK_TAG)
        logger.warning(
            "version %s of %s had been rolled back itself; it serves again", target, name
        )
    client.set_registered_model_alias(name, CHAMPION, target)
    return rollback


def monitoring_reference(name: str, version: str):
    """The monitoring reference (pipeline.monitoring.reference.Reference) stored with version
    `version` of `name` at registration; a RegistryError naming the fix for versions without
    one. Only MLmodel and the reference file are downloaded, not the model."""
    import yaml

    from pipeline.monitoring.reference import load_reference

    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as scratch:
        try:
            location = client.get_model_version_download_uri(name, version).rstrip("/")
            mlmodel = mlflow.artifacts.download_artifacts(
                artifact_uri=f"{location}/MLmodel", dst_path=scratch
            )
        except MlflowException as error:
            raise RegistryError(
                f"version {version} of {name} cannot be read: {error.message}"
            ) from None
        flavors = (yaml.safe_load(Path(mlmodel).read_text()) or {}).get("flavors", {})
        artifacts = flavors.get("python_function", {}).get("artifacts", {})
        entry = artifacts.get(serving.REFERENCE_ARTIFACT)
        if not entry:
            raise RegistryError(
                f"version {version} of {name} was registered without a monitoring reference "
                "(before monitoring existed, or its embeddings could not be built): retrain "
                "(`pipeline retrain --force`) to register a version that has one, or pass "
                "--version with a newer version"
            )
        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{location}/{entry['path']}", dst_path=scratch
        )
        return load_reference(Path(path))


def rolled_back_versions(name: str) -> frozenset[str]:
    """The versions of `name` that a rollback took out of service (ROLLED_BACK_TAG)."""
    try:
        versions = mlflow.MlflowClient().search_model_versions(f"name = '{_quoted(name)}'")
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return frozenset()
        raise
    return frozenset(str(v.version) for v in versions if v.tags.get(ROLLED_BACK_TAG) == "true")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@contextlib.contextmanager
def decision_run(experiment_id: str, run_name: str, tags: dict[str, str]) -> Iterator[str]:
    """The promotion's own MLflow run, active inside the block (so the classifier is logged
    into it); yields its id. An exception ends it FAILED."""
    run_id = create_run(experiment_id, run_name, tags)
    with mlflow.start_run(run_id=run_id):
        yield run_id


def enter_challenger(
    name: str,
    challenger: ScoredVersion,
    model_file: Path,
    manifest_file: Path,
    classes: list[str],
    example: np.ndarray,
    tags: dict[str, str],
    resize: ResizeMode = "stretch",
    monitoring_splits: tuple[ImageSplit, ImageSplit] | None = None,
    max_pixels: int = serving.DEFAULT_MAX_PIXELS,
    exports: Callable[[], dict[str, Path]] | None = None,
) -> tuple[str, bool]:
    """Point `challenger` at the model file's version: the one that already holds it (see
    score_contenders), else a new one, logged into the active run (with its monitoring
    reference from `monitoring_splits`, train and test) and registered with `tags`.
    `exports()` makes the new version's exports (name -> folder, see log_classifier); it is
    called only when a version is made. Return the version and whether it is new."""
    if challenger.version is not None:
        name_challenger(name, challenger.version)
        return challenger.version, False
    info = log_classifier(
        model_file,
        classes,
        example,
        manifest_file,
        resize,
        monitoring_splits,
        max_pixels,
        exports=exports() if exports is not None else None,
    )
    return register_challenger(name, info.model_uri, tags).version, True


def tag_exports(name: str, version: str, tags: dict[str, str]) -> None:
    """Tag `version` of `name` with the exports it carries and their parity figures."""
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, value)


def version_exports(name: str, version: str) -> dict[str, dict]:
    """The exports `version` of `name` was registered with, read back from its tags (see
    tag_exports): name -> its figures, or {passed: False, refused: why}; {} for a version
    registered before exports existed."""
    tags = mlflow.MlflowClient().get_model_version(name, str(version)).tags
    carried = [each for each in tags.get("exports", "").split(",") if each and each != "none"]
    refused = sorted(
        key.removeprefix("export.").removesuffix(".refused")
        for key in tags
        if key.startswith("export.") and key.endswith(".refused")
    )
    found: dict[str, dict] = {}
    for export in carried:
        prefix = f"export.{export}"
        runtime, _, runtime_version = tags.get(f"{prefix}.runtime", "").partition(" ")
        found[export] = {
            "passed": True,
            "runtime": runtime,
            "runtime_version": runtime_version,
            **{
                key: _float_tag(tags.get(f"{prefix}.{tag}"))
                for key, tag in (
                    ("top1_agreement", "top1_agreement"),
                    ("max_abs_diff", "max_abs_diff"),
                    ("export_accuracy", "accuracy"),
                    ("size_ratio", "size_ratio"),
                )
            },
        }
    for export in refused:
        found[export] = {"passed": False, "refused": tags[f"export.{export}.refused"]}
    return found


def _float_tag(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def record_outcome(
    name: str, version: str | None, decision: Decision, champion: str | None, record: dict
) -> bool:
    """Log the decision `record` and its headline numbers into the active run, tag the
    challenger's `version` (None when nothing was registered) with the verdict and, last of
    all, move `champion` to it when the gate passed. Return whether the champion moved."""
    mlflow.log_dict(record, "promotion.json")
    mlflow.log_metric("promotion_passed", float(decision.passed))
    mlflow.log_metric("train_test_overlap", float(record["train_test_overlap"]))
    if version is None:
        return False
    record_decision(name, version, decision, champion)
    if not decision.passed:
        return False
    set_champion(name, version)
    return True


# --- the model card -------------------------------------------------------------------------


MODEL_CARD_RUN_TAG = "model_card.run_id"
"""On a version: the run whose model_card.md is its card (the description may be cut)."""


def record_model_card(
    name: str,
    version: str | None,
    card: str,
    description: str,
    artifact_file: str,
    describe: bool = True,
) -> None:
    """Log the model card into the active run (the promotion's, which holds the classifier) as
    `artifact_file`, and, with `describe`, make `description` (the card, cut to what MLflow
    keeps) the description of `version` of `name`, which the MLflow UI shows on the version's
    page, and tag the version with the run that holds the whole card. With `version` None (a
    DVC experiment: nothing registered) only the artifact is logged."""
    mlflow.log_text(card, artifact_file)
    if version is None or not describe:
        return
    client = mlflow.MlflowClient()
    client.update_model_version(name, str(version), description=description)
    client.set_model_version_tag(
        name, str(version), MODEL_CARD_RUN_TAG, mlflow.active_run().info.run_id
    )


def model_card(name: str, which: str, artifact_file: str = "model_card.md") -> tuple[str, str]:
    """(version, its description: the model card) of version `which` of `name`, or of the
    version the alias `which` (champion, challenger) points at; a RegistryError naming what
    is missing and what to do."""
    client = mlflow.MlflowClient()
    versions = registered_versions(name)
    if not versions:
        raise RegistryError(
            f"{name} has no registered version in this tracking store: promote one first "
            "(dvc repro), or pass --model-name"
        )
    if re.fullmatch(r"[0-9]+", which):
        if str(int(which)) not in versions:
            raise RegistryError(
                f"{name} has no version {which}; its versions are {', '.join(versions)}"
            )
        found = client.get_model_version(name, str(int(which)))
    else:
        try:
            found = client.get_model_version_by_alias(name, which)
        except MlflowException as error:
            if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            aliases = sorted(client.get_registered_model(name).aliases)
            if which == CHAMPION:
                raise RegistryError(
                    f"{name} has no champion: pass a version ({', '.join(versions)}), or "
                    "promote one first"
                ) from None
            raise RegistryError(
                f"{name} has no alias {which!r} (its aliases: {', '.join(aliases) or 'none'}): "
                f"pass a version ({', '.join(versions)}) or an alias"
            ) from None
    version = str(found.version)
    whole = _whole_card(found, artifact_file)
    if whole is not None:
        return version, whole
    if not (found.description or "").strip():
        raise RegistryError(
            f"version {version} of {name} has no model card: it was registered before model "
            "cards existed, or not by the promote stage. The promote stage writes the card of "
            "every version it registers, and refreshes it when it meets the same model again"
        )
    return version, found.description


def _whole_card(version: ModelVersion, artifact_file: str) -> str | None:
    """The whole model card of `version` (its description may be cut to MLflow's 5,000
    characters): `artifact_file` in the run its tag names, else in the run it was logged
    from; None when neither holds one."""
    for run_id in (version.tags.get(MODEL_CARD_RUN_TAG), version.run_id):
        if not run_id:
            continue
        try:
            return mlflow.artifacts.load_text(f"runs:/{run_id}/{artifact_file}")
        except (MlflowException, OSError):
            continue
    return None


def evaluation_run_of(training_run_id: str | None) -> str | None:
    """The run holding the latest evaluation of the training run `training_run_id`: a later
    re-evaluation's own run (tagged with the run it evaluates), else the training run itself
    once it holds one; None when neither is in this store."""
    from pipeline.tracking.strategy_runs import EVALUATED_TAG, EVALUATES_RUN_TAG

    if not training_run_id:
        return None
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(training_run_id)
    except MlflowException:
        return None
    found = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`{EVALUATES_RUN_TAG}` = '{_quoted(training_run_id)}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if found:
        return found[0].info.run_id
    return training_run_id if EVALUATED_TAG in run.data.tags else None


def last_drift_verdict(experiment_id: str, name: str, version: str) -> dict | None:
    """The last `pipeline monitor` verdict on version `version` of `name` (its run's tags:
    drift, the tests that fired, the window), or None when it was never monitored."""
    found = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=(
            "tags.`pipeline.kind` = 'monitor' and "
            f"tags.registered_model = '{_quoted(name)}' and "
            f"tags.model_version = '{_quoted(str(version))}'"
        ),
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not found:
        return None
    tags = found[0].data.tags
    return {
        "drift": tags.get("drift") == "true",
        "fired": tags.get("fired", ""),
        "window": tags.get("window"),
        "window_end": tags.get("window_end"),
        "run_id": found[0].info.run_id,
    }
