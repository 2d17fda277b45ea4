"""The served model's probabilities are the calibrated ones (issue 34): a model whose temperature
was fitted on val and folded into its output layer, saved as the train stage saves it, answers
through the served pyfunc (pipeline.serving.model.ImageClassifier, in process, built the way
registry.log_classifier builds it, and logged and loaded back through MLflow with the files it
ships) with exactly the probabilities the calibrated Keras model gives, not the trained ones.
Also for a transfer model, whose output layer sits in the `head` behind a real backbone."""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from scipy.special import softmax

from pipeline import registry
from pipeline.evaluation.calibration import calibrate_model
from pipeline.evaluation.metrics import predict_outputs, predict_probabilities
from pipeline.models.backbones import BACKBONES
from pipeline.models.calibration import logit_model
from pipeline.models.heads import (
    assemble_feature_extraction_model,
    build_feature_extractor,
    build_feature_head,
)
from pipeline.serving import model as serving
from pipeline.store import MODEL_FILE
from tests.code.test_calibration import SHAPE, overconfident_classifier
from tests.serving_models import tracking_store

pytestmark = pytest.mark.slow


def _served(model_file: Path, classes: list[str]) -> serving.ImageClassifier:
    """The served classifier of a model file, its context built as log_classifier builds it."""
    artifacts = registry._classifier_artifacts(model_file, classes, model_file.parent, None)
    classifier = serving.ImageClassifier()
    classifier.load_context(registry._Context(artifacts, {}))
    return classifier


def _answer(predict, images: np.ndarray, classes: list[str]) -> np.ndarray:
    """The probability columns of the served answer to a request of pixel arrays."""
    answer = predict(pd.DataFrame({serving.PIXELS_COLUMN: list(images)}))
    return answer[classes].to_numpy(dtype=np.float64)


@pytest.mark.parametrize("count", [2, 3])
def test_the_served_probabilities_are_the_calibrated_ones(
    count: int, tmp_path: Path, template_store: Path
) -> None:
    classes = [f"class_{index}" for index in range(count)]
    model, splits = overconfident_classifier(count, seed=5)
    x_test = splits["test"][0][:64]
    trained = predict_probabilities(model, x_test)
    fit = calibrate_model(model, *splits["val"])
    calibrated = predict_probabilities(model, x_test)
    assert fit.temperature > 2.0 and np.abs(calibrated - trained).max() > 0.05
    model_file = tmp_path / MODEL_FILE
    model.save(model_file)

    in_process = _served(model_file, classes)
    served = _answer(lambda frame: in_process.predict(None, frame), x_test, classes)
    np.testing.assert_allclose(served, calibrated, rtol=0, atol=1e-6)

    # Logged as a version is, and loaded back by MLflow with only the files it ships.
    store = tmp_path / "mlflow.db"
    store.write_bytes(template_store.read_bytes())
    with tracking_store(f"sqlite:///{store}"):
        experiment = mlflow.create_experiment(
            "calibration", artifact_location=(tmp_path / "artifacts").as_uri()
        )
        with mlflow.start_run(experiment_id=experiment):
            info = registry.log_classifier(model_file, classes, x_test[:2])
        loaded = mlflow.pyfunc.load_model(info.model_uri)
    logged = _answer(loaded.predict, x_test, classes)
    np.testing.assert_allclose(logged, calibrated, rtol=0, atol=1e-6)


def test_a_transfer_model_is_calibrated_inside_its_head(tmp_path: Path) -> None:
    """The feature_extraction model as the train stage saves it (the extractor's preprocessing
    and base, then the head), a real VGG16 with random weights: its temperature divides the
    head's logits, and the served answer is softmax(logits / T)."""
    keras.utils.set_random_seed(6)
    _, splits = overconfident_classifier(3, seed=6)
    backbone = BACKBONES["vgg16"]
    extractor = build_feature_extractor(SHAPE, backbone, backbone.build(32, None))
    head = build_feature_head(tuple(extractor.output.shape[1:]), 3, 8, 0.1)
    # Random features vary little: a large output kernel spreads the logits over several units.
    output = head.get_layer("predictions")
    kernel, bias = output.get_weights()
    output.set_weights([kernel * 300.0, bias])
    model = assemble_feature_extraction_model(extractor, head)
    x_val, y_val = splits["val"][0][:128], splits["val"][1][:128]
    x_test = splits["test"][0][:32]
    logits = predict_outputs(logit_model(model), x_test).astype(np.float64)
    np.testing.assert_allclose(
        predict_probabilities(model, x_test), softmax(logits, axis=1), atol=1e-6
    )

    fit = calibrate_model(model, x_val, y_val)
    model.save(tmp_path / MODEL_FILE)
    served = _answer(
        lambda frame: _served(tmp_path / MODEL_FILE, ["a", "b", "c"]).predict(None, frame),
        x_test,
        ["a", "b", "c"],
    )
    assert fit.temperature != 1.0 and np.ptp(logits) > 1.0
    np.testing.assert_allclose(served, softmax(logits / fit.temperature, axis=1), atol=1e-6)
    assert np.array_equal(served.argmax(axis=1), logits.argmax(axis=1))
