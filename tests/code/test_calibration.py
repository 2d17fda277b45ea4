"""Calibration (issue 34): the expected calibration error, Brier score and NLL against answers
computed by hand; temperature scaling fitted on val lowers the test NLL of a deliberately
over-confident model, never changes its predicted class, and lives inside the saved model;
the figures before calibration are recovered exactly from the calibrated ones; the gate's
optional `calibration` criterion; run.json's temperature, old files included."""

from __future__ import annotations

import json
import math
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers
from scipy.special import expit, softmax

from pipeline.errors import ModelError
from pipeline.evaluation.calibration import (
    ECE_BINS,
    brier_score,
    calibrate_model,
    calibration_metrics,
    expected_calibration_error,
    fit_temperature,
    logit_nll,
    negative_log_likelihood,
    reliability_bins,
    rescaled_probabilities,
)
from pipeline.evaluation.metrics import (
    predict_outputs,
    predict_probabilities,
    probability_metrics,
)
from pipeline.evaluation.plots import reliability_figure
from pipeline.evaluation.promotion import GateThresholds, ScoredVersion, judge_challenger
from pipeline.models.calibration import find_output_layer, fold_temperature, logit_model
from pipeline.store import MODEL_FILE
from pipeline.tracking.record import RunRecord

# ---------------------------------------------------------------- known answers


def _two_class(confidences, correct) -> tuple[np.ndarray, np.ndarray]:
    """Two-class probabilities whose top class is 0 at each confidence, and labels that make
    each image right (label 0) or wrong (label 1) as `correct` says."""
    confidence = np.asarray(confidences, dtype=np.float64)
    probabilities = np.stack([confidence, 1.0 - confidence], axis=1)
    labels = np.where(np.asarray(correct, dtype=bool), 0, 1)
    return probabilities, labels


def test_a_perfectly_calibrated_model_has_an_ece_of_zero() -> None:
    # 10 images at 0.8, 8 right; 5 at 0.6, 3 right: every bin's accuracy is its confidence.
    probabilities, y = _two_class([0.8] * 10 + [0.6] * 5, [1] * 8 + [0] * 2 + [1] * 3 + [0] * 2)
    assert expected_calibration_error(y, probabilities) == pytest.approx(0.0, abs=1e-12)


def test_a_certain_model_that_is_always_wrong_has_an_ece_of_one() -> None:
    probabilities, y = _two_class([1.0] * 6, [0] * 6)
    assert expected_calibration_error(y, probabilities) == pytest.approx(1.0)


def test_the_ece_is_the_count_weighted_gap_of_each_bin() -> None:
    """Worked by hand: bin (0.8667, 0.9333] holds 4 images at 0.9, 2 right: |0.5 - 0.9| = 0.4;
    bin (0.6, 0.6667] holds 4 at 0.65, all right: |1 - 0.65| = 0.35; bin (0.5333, 0.6] holds
    2 at 0.55, 1 right: |0.5 - 0.55| = 0.05. ECE = (4 x 0.4 + 4 x 0.35 + 2 x 0.05) / 10."""
    probabilities, y = _two_class(
        [0.9] * 4 + [0.65] * 4 + [0.55] * 2, [1, 1, 0, 0] + [1] * 4 + [1, 0]
    )
    assert expected_calibration_error(y, probabilities) == pytest.approx(0.31)
    bins = reliability_bins(y, probabilities)
    assert len(bins.counts) == ECE_BINS and bins.images == 10
    filled = np.flatnonzero(bins.counts)
    assert list(filled) == [8, 9, 13]  # (8/15, 9/15], (9/15, 10/15], (13/15, 14/15]
    assert bins.accuracy[filled] == pytest.approx([0.5, 1.0, 0.5])
    assert bins.confidence[filled] == pytest.approx([0.55, 0.65, 0.9])


def test_the_bins_are_equal_width_and_closed_on_the_right() -> None:
    """Guo et al.'s bins ((m - 1)/M, m/M]: a confidence on an edge belongs to the bin it ends."""
    edge = 9 / 15
    probabilities, y = _two_class([edge, edge + 1e-9], [1, 1])
    bins = reliability_bins(y, probabilities)
    assert bins.counts[8] == 1 and bins.counts[9] == 1
    assert np.allclose(np.diff(bins.edges), 1 / 15)


def test_top_label_confidence_is_read_from_every_class() -> None:
    """Three classes: the confidence is the largest probability, right when its class is."""
    probabilities = np.array([[0.1, 0.7, 0.2], [0.7, 0.2, 0.1], [0.2, 0.1, 0.7]])
    y = np.array([1, 1, 2])  # right, wrong, right at 0.7: accuracy 2/3 in one bin
    assert expected_calibration_error(y, probabilities) == pytest.approx(abs(2 / 3 - 0.7))


def test_a_sigmoid_output_scores_as_its_two_columns() -> None:
    p = np.array([[0.9], [0.2], [0.6], [0.4]])
    y = np.array([1, 0, 0, 1])
    widened = np.hstack([1 - p, p])
    assert expected_calibration_error(y, p) == expected_calibration_error(y, widened)
    assert brier_score(y, p) == pytest.approx(brier_score(y, widened))


def test_brier_score_and_nll_match_hand_values() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]])
    y = np.array([0, 1])
    # (0.3^2 + 0.2^2 + 0.1^2) = 0.14 and (0.7^2 + 0.8^2 + 0.1^2) = 1.14: mean 0.64.
    assert brier_score(y, probabilities) == pytest.approx(0.64)
    assert negative_log_likelihood(y, probabilities) == pytest.approx(
        -(math.log(0.7) + math.log(0.2)) / 2
    )
    # The NLL is the evaluation's test_loss, to the bit.
    assert (
        negative_log_likelihood(y, probabilities)
        == probability_metrics(y, probabilities)["test_loss"]
    )
    certain_and_wrong = np.array([[1.0, 0.0]])
    assert brier_score(np.array([1]), certain_and_wrong) == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("y", "probabilities", "message"),
    [
        (np.array([0]), np.zeros((0, 2)), "non-empty"),
        (np.array([0, 1]), np.array([[0.5, 0.5]]), "has 2 labels"),
        (np.array([3]), np.array([[0.5, 0.5]]), "not an index"),
        (np.array([0]), np.array([0.5, 0.5]), "2-D"),
    ],
)
def test_calibration_measures_refuse_bad_input(y, probabilities, message) -> None:
    with pytest.raises(ValueError, match=message):
        expected_calibration_error(y, probabilities)


# ---------------------------------------------------------------- temperature


@pytest.mark.parametrize("units", [1, 3])
def test_probabilities_before_scaling_are_recovered_exactly(units: int) -> None:
    """softmax(T log softmax(z / T)) = softmax(z); sigmoid(T logit(sigmoid(z / T))) = sigmoid(z)."""
    logits = np.random.default_rng(0).normal(scale=4.0, size=(50, units))
    temperature = 2.7

    def probabilities(scale: float) -> np.ndarray:
        if units == 1:
            return expit(logits / scale)
        return softmax(logits / scale, axis=1)

    recovered = rescaled_probabilities(probabilities(temperature), temperature)
    expected = probabilities(1.0)
    if units == 1:
        expected = np.hstack([1 - expected, expected])
    np.testing.assert_allclose(recovered, expected, rtol=1e-9, atol=1e-12)


def test_the_fitted_temperature_undoes_a_known_over_confidence() -> None:
    """Labels drawn from softmax(z): the calibrated model. Its logits times 5 are over-confident,
    and the fit finds T near 5, with a lower NLL than T = 1 (and the NLL at 1/5 of them)."""
    rng = np.random.default_rng(1)
    logits = rng.normal(scale=2.0, size=(4000, 4))
    probabilities = softmax(logits, axis=1)
    y = np.array([rng.choice(4, p=row) for row in probabilities])
    fit = fit_temperature(5.0 * logits, y)
    assert fit.temperature == pytest.approx(5.0, rel=0.08)
    assert fit.val_nll_after < fit.val_nll_before
    assert fit.val_nll_before == pytest.approx(logit_nll(5.0 * logits, y))
    assert fit.val_nll_after == pytest.approx(logit_nll(5.0 * logits, y, fit.temperature))
    assert not fit.at_bound


def test_a_fit_that_ends_on_a_bound_says_so() -> None:
    """Labels unrelated to the logits: the NLL falls all the way to the uniform answer."""
    rng = np.random.default_rng(2)
    fit = fit_temperature(rng.normal(scale=10.0, size=(500, 3)), rng.integers(0, 3, 500))
    assert fit.at_bound and fit.temperature == pytest.approx(20.0, rel=1e-3)


@pytest.mark.parametrize("temperature", [0.0, -1.0, math.inf, math.nan, True])
def test_a_temperature_must_be_a_positive_number(temperature) -> None:
    with pytest.raises(ValueError, match="temperature"):
        logit_nll(np.zeros((2, 3)), np.array([0, 1]), temperature)


# ---------------------------------------------------------------- inside the Keras model

SHAPE = (4, 4, 1)


def overconfident_classifier(classes: int, seed: int = 0, scale: float = 5.0):
    """A tiny image classifier of this pipeline's shape (uint8 in, Dense `predictions` out,
    softmax, or one sigmoid unit for two classes) on overlapping synthetic classes, fitted by
    logistic regression and then made over-confident: its output kernel and bias times
    `scale`. Returns (model, {split: (images, labels)}): train, val and test from one
    distribution."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(seed)
    centres = rng.uniform(60, 200, size=(classes, int(np.prod(SHAPE))))

    def draw(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, classes, count)
        pixels = centres[labels] + rng.normal(scale=90.0, size=(count, centres.shape[1]))
        return np.clip(pixels, 0, 255).astype(np.uint8).reshape(count, *SHAPE), labels

    splits = {"train": draw(600), "val": draw(600), "test": draw(600)}
    x_train, y_train = splits["train"]
    regression = LogisticRegression(max_iter=2000).fit(
        x_train.reshape(len(x_train), -1) / 255, y_train
    )
    inputs = keras.Input(shape=SHAPE, dtype="uint8", name="image")
    x = layers.Flatten()(layers.Rescaling(1 / 255)(inputs))
    units = 1 if classes == 2 else classes
    activation = "sigmoid" if units == 1 else "softmax"
    outputs = layers.Dense(units, activation=activation, dtype="float32", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="overconfident")
    kernel, bias = regression.coef_.T, regression.intercept_
    model.get_layer("predictions").set_weights(
        [(scale * kernel).astype(np.float32), (scale * bias).astype(np.float32)]
    )
    return model, splits


@pytest.mark.parametrize("classes", [2, 3])
def test_temperature_scaling_lowers_the_test_nll_and_keeps_every_prediction(
    classes: int, tmp_path: Path
) -> None:
    model, splits = overconfident_classifier(classes)
    (x_val, y_val), (x_test, y_test) = splits["val"], splits["test"]
    before = predict_probabilities(model, x_test)
    logits_before = predict_outputs(logit_model(model), x_test).astype(np.float64)
    val_before = predict_probabilities(model, x_val)

    fit = calibrate_model(model, x_val, y_val)

    after = predict_probabilities(model, x_test)
    assert fit.temperature > 2.0  # the kernel was scaled up 5 times
    assert fit.val_nll_after < fit.val_nll_before
    assert negative_log_likelihood(y_test, after) < negative_log_likelihood(y_test, before) - 0.1
    assert expected_calibration_error(y_test, after) < expected_calibration_error(y_test, before)
    np.testing.assert_array_equal(after.argmax(axis=1), before.argmax(axis=1))
    np.testing.assert_array_equal(
        predict_probabilities(model, x_val).argmax(axis=1), val_before.argmax(axis=1)
    )
    # The evaluation's figures before calibration are the uncalibrated model's, recovered
    # from the calibrated probabilities: to float64's precision those of its exact logits (the
    # model's own float32 outputs round a confident sigmoid's 1 - p, off by 5e-5 here).
    exact = (
        np.hstack([expit(-logits_before), expit(logits_before)])
        if classes == 2
        else softmax(logits_before, axis=1)
    )
    measured = calibration_metrics(y_test, after, fit.temperature)
    assert measured["test_ece_uncalibrated"] == pytest.approx(
        expected_calibration_error(y_test, exact), abs=1e-7
    )
    assert measured["test_loss_uncalibrated"] == pytest.approx(
        negative_log_likelihood(y_test, exact), rel=1e-6
    )
    assert measured["test_ece_uncalibrated"] == pytest.approx(
        expected_calibration_error(y_test, before), abs=1e-5
    )
    assert measured["test_ece"] == pytest.approx(expected_calibration_error(y_test, after))
    # Saved and loaded with plain Keras: the calibrated probabilities, no custom layer.
    model.save(tmp_path / MODEL_FILE)
    reloaded = keras.saving.load_model(tmp_path / MODEL_FILE)
    np.testing.assert_allclose(predict_probabilities(reloaded, x_test), after, rtol=0, atol=1e-7)
    assert [type(layer).__name__ for layer in reloaded.layers] == [
        type(layer).__name__ for layer in model.layers
    ]


def _nested(classes: int) -> keras.Model:
    """A model shaped like the transfer strategies': its output layer inside a `head`."""
    keras.utils.set_random_seed(3)
    features = keras.Input(shape=(16,), name="features")
    hidden = layers.Dense(8, activation="relu", name="dense")(features)
    units = 1 if classes == 2 else classes
    activation = "sigmoid" if units == 1 else "softmax"
    head = keras.Model(
        features,
        layers.Dense(units, activation=activation, dtype="float32", name="predictions")(hidden),
        name="head",
    )
    image = keras.Input(shape=SHAPE, dtype="uint8", name="image")
    flat = layers.Flatten()(layers.Rescaling(1 / 255)(image))
    return keras.Model(image, head(flat), name="transfer")


@pytest.mark.parametrize("classes", [2, 4])
def test_a_head_inside_the_model_is_found_and_scaled(classes: int) -> None:
    model = _nested(classes)
    images = np.random.default_rng(4).integers(0, 256, size=(20, *SHAPE), dtype=np.uint8)
    logits = np.asarray(logit_model(model).predict_on_batch(images), dtype=np.float64)
    assert find_output_layer(model).name == "predictions"
    activation = expit if classes == 2 else (lambda z: softmax(z, axis=1))
    np.testing.assert_allclose(model.predict_on_batch(images), activation(logits), atol=1e-6)
    fold_temperature(model, 2.5)
    np.testing.assert_allclose(model.predict_on_batch(images), activation(logits / 2.5), atol=1e-6)


def test_a_model_without_a_dense_softmax_output_is_refused() -> None:
    inputs = keras.Input(shape=SHAPE, dtype="uint8")
    x = layers.Dense(3)(layers.Flatten()(layers.Rescaling(1 / 255)(inputs)))
    separate = keras.Model(inputs, layers.Softmax()(x))
    with pytest.raises(ModelError, match="not a Dense output layer"):
        find_output_layer(separate)
    linear = keras.Model(inputs, x)
    with pytest.raises(ModelError, match="activation 'linear'"):
        fold_temperature(linear, 2.0)


def test_calibration_none_leaves_the_model_as_trained() -> None:
    from pipeline.training.tracked import calibrate

    model, splits = overconfident_classifier(3)
    weights = [weight.copy() for weight in model.get_weights()]
    assert calibrate(model, splits["val"], "none") is None
    for kept, weight in zip(weights, model.get_weights(), strict=True):
        np.testing.assert_array_equal(kept, weight)


# ---------------------------------------------------------------- the report's figure


def test_the_reliability_diagram_shows_both_models_and_their_eces() -> None:
    probabilities, y = _two_class([0.95] * 8 + [0.7] * 4, [1] * 6 + [0] * 2 + [1] * 3 + [0])
    before = reliability_bins(y, rescaled_probabilities(probabilities, 2.0))
    after = reliability_bins(y, probabilities)
    figure = reliability_figure(before, after, 2.0, "toy")
    top, bottom = figure.axes
    labels = [text.get_text() for text in top.get_legend().get_texts()]
    assert labels[0] == "perfect calibration"
    assert labels[1] == f"before: T = 1, ECE {before.ece:.4f}"
    assert labels[2] == f"after: T = 2.000, ECE {after.ece:.4f}"
    # The bars below are the bins' counts, before then after.
    heights = [patch.get_height() for patch in bottom.patches]
    assert heights == [*before.counts, *after.counts]
    single = reliability_figure(after, after, 1.0, "none")
    assert len(single.axes[0].get_legend().get_texts()) == 2


# ---------------------------------------------------------------- the gate

GATE = dict(min_accuracy=0.5, min_improvement=0.0, alpha=0.05, min_class_recall=0.0)


def _judge(max_ece, challenger_ece):
    y = np.arange(40) % 2
    challenger = ScoredVersion(None, ["a", "b"], y.copy(), None)
    digests = [f"{index:032x}" for index in range(len(y))]
    thresholds = GateThresholds(**GATE, max_ece=max_ece)
    return judge_challenger(
        y, digests, challenger, None, ["a", "b"], thresholds, challenger_ece=challenger_ece
    ).decision


def _calibration(decision):
    found = [criterion for criterion in decision.criteria if criterion.name == "calibration"]
    return found[0] if found else None


def test_the_gate_passes_a_challenger_within_the_ece_ceiling() -> None:
    decision = _judge(0.05, 0.031)
    criterion = _calibration(decision)
    assert decision.passed and criterion.passed
    assert (criterion.observed, criterion.threshold) == (0.031, 0.05)
    assert criterion.detail == "test expected calibration error 0.0310 is within the ceiling 0.0500"


def test_the_gate_stops_a_challenger_above_the_ece_ceiling() -> None:
    decision = _judge(0.05, 0.08)
    assert not decision.passed and not _calibration(decision).passed
    assert "0.0800 is above the ceiling 0.0500" in " ".join(decision.reasons())


def test_the_gate_stops_a_challenger_whose_ece_was_never_measured() -> None:
    decision = _judge(0.05, None)
    criterion = _calibration(decision)
    assert not decision.passed and not criterion.passed
    assert "re-run its evaluation" in criterion.detail
    # promotion.json stays JSON: an unmeasured value is null, not NaN.
    written = decision.to_dict()
    assert written["criteria"]["calibration"]["observed"] is None
    json.loads(json.dumps(written, allow_nan=False))


def test_without_a_ceiling_calibration_does_not_gate() -> None:
    decision = _judge(None, 0.9)
    assert decision.passed and _calibration(decision) is None
    assert "calibration" not in decision.to_dict()["criteria"]


@pytest.mark.parametrize("max_ece", [-0.1, 1.5, math.nan, "0.1", True])
def test_a_bad_ece_ceiling_is_refused(max_ece) -> None:
    with pytest.raises(ValueError, match="max_ece"):
        GateThresholds(**GATE, max_ece=max_ece)


# ---------------------------------------------------------------- run.json


def test_a_run_record_from_before_calibration_reads_with_temperature_one(tmp_path: Path) -> None:
    old = {
        "run_id": "r",
        "experiment_id": "1",
        "experiment_name": "e",
        "run_name": "n",
        "backbone_weights": "none",
        "tracked": True,
        "tags": {"strategy": "scratch"},
        "params": {},
        "validation_summary": {},
        "training_seconds": 1.0,
    }
    (tmp_path / "run.json").write_text(json.dumps(old))
    record = RunRecord.read(tmp_path)
    # Not recorded (trained before calibration), not "fitted as 1".
    assert record.temperature is None and record.val_nll_before is None
    assert record.calibration_metrics() == {}
    fitted = record.model_copy(
        update={"temperature": 1.7, "val_nll_before": 0.9, "val_nll_after": 0.4}
    )
    fitted.write(tmp_path)
    assert RunRecord.read(tmp_path).calibration_metrics() == {
        "temperature": 1.7,
        "val_nll_before": 0.9,
        "val_nll_after": 0.4,
    }


def test_a_val_split_without_mistakes_fits_no_temperature() -> None:
    """All right on val: the NLL falls for ever as T shrinks, and a temperature found in that
    flat valley would make the served model wildly over-confident on its first mistake."""
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(200, 3))
    y_true = logits.argmax(axis=1)
    fit = fit_temperature(logits, y_true)
    assert fit.no_mistakes and fit.temperature == 1.0
    assert fit.val_nll_after == fit.val_nll_before
    # One mistake gives the NLL a minimum again, and a temperature is fitted.
    y_true[0] = (y_true[0] + 1) % 3
    fit = fit_temperature(logits, y_true)
    assert not fit.no_mistakes and fit.temperature != 1.0
