"""Evaluation returns one metrics dict; confusion matrices have rows true, columns predicted;
per-class, top-k and binary metrics match values computed by hand; the evaluate path predicts
each test image once, a batch at a time, reading from the store only the images it shows.
(The figures drawn from them are tested in test_figures.py and test_mosaics.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.calibration import calibration_metrics
from pipeline.evaluation.layout import RELIABILITY_PNG
from pipeline.evaluation.metrics import (
    MAX_PREDICT_BATCH,
    TOP_K_MIN_CLASSES,
    binary_curves,
    binary_metrics,
    classification_report_frame,
    compute_confusion,
    evaluate_model,
    metric_safe_names,
    most_confident_mistakes,
    normalize_confusion,
    per_class_metrics,
    predict_batch_size,
    predict_probabilities,
    probability_metrics,
    top_k_accuracy,
    top_k_metrics,
)
from pipeline.models.outputs import class_probabilities
from pipeline.store import ArraySplit, image_digests, open_split, write_store_from_arrays

CALIBRATION_METRICS = (
    "test_ece",
    "test_brier",
    "test_ece_uncalibrated",
    "test_brier_uncalibrated",
    "test_loss_uncalibrated",
)


class _FixedModel:
    """A stand-in with Keras' predict_on_batch that returns fixed probabilities."""

    def __init__(self, probabilities: np.ndarray) -> None:
        self.probabilities = probabilities

    def predict_on_batch(self, x):
        return self.probabilities[: len(x)]


def test_metrics_match_hand_computed_values() -> None:
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    y = np.array([0, 1, 1, 1])
    metrics, predictions = evaluate_model(_FixedModel(probabilities), np.zeros((4, 2, 2, 1)), y)
    assert predictions.tolist() == [0, 1, 0, 1]
    assert metrics["test_accuracy"] == 0.75
    expected_loss = -np.mean(np.log([0.9, 0.8, 0.4, 0.7]))
    assert abs(metrics["test_loss"] - expected_loss) < 1e-9
    # F1 of class 0: p=0.5, r=1 -> 2/3; class 1: p=1, r=2/3 -> 0.8.
    assert abs(metrics["test_macro_f1"] - (2 / 3 + 0.8) / 2) < 1e-9
    # The same numbers straight from the probabilities, as the evaluate stage computes them.
    assert probability_metrics(y, probabilities) == metrics


def test_confusion_rows_are_true_columns_predicted() -> None:
    counts = compute_confusion(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 1]), ["a", "b", "c"])
    assert counts.loc["a"].tolist() == [1, 1, 0]
    assert counts.loc["c"].tolist() == [0, 1, 0]
    assert list(counts.columns) == ["a", "b", "c"]
    assert counts.index.name == "true"
    normalized = normalize_confusion(counts)
    assert normalized.loc["a"].tolist() == [0.5, 0.5, 0.0]


# The per-class report: y_true [0, 0, 0, 1, 1, 2], y_pred [0, 0, 1, 1, 2, 2], and a fourth
# class "fish" that is neither present nor predicted. By hand:
#   cat:  predicted 2, both right -> P 1;   3 true, 2 found -> R 2/3; F1 0.8;  support 3
#   dog face: predicted 2, 1 right -> P 1/2; 2 true, 1 found -> R 1/2; F1 0.5; support 2
#   bird: predicted 2, 1 right -> P 1/2;  1 true, 1 found -> R 1;   F1 2/3; support 1
#   fish: nothing -> 0, 0, 0 (zero_division=0); support 0
#   macro: means over the three classes that occur (fish neither occurs nor is predicted, so it
#     is left out, as f1_score leaves it out of test_macro_f1):
#     P (1 + 1/2 + 1/2) / 3 = 2/3, R (2/3 + 1/2 + 1) / 3 = 13/18, F1 (0.8 + 0.5 + 2/3) / 3 = 59/90
#   weighted by support (3, 2, 1) / 6: P 4.5/6, R 4/6 (the accuracy), F1 (2.4+1+2/3)/6 = 61/90
_REPORT_TRUE = np.array([0, 0, 0, 1, 1, 2])
_REPORT_PRED = np.array([0, 0, 1, 1, 2, 2])
_REPORT_NAMES = ["cat", "dog face", "bird", "fish"]


def test_classification_report_matches_hand_values() -> None:
    frame = classification_report_frame(_REPORT_TRUE, _REPORT_PRED, _REPORT_NAMES)
    assert list(frame.index) == [*_REPORT_NAMES, "macro avg", "weighted avg"]
    assert list(frame.columns) == ["precision", "recall", "f1", "support"]
    expected = [
        [1.0, 2 / 3, 0.8, 3],
        [0.5, 0.5, 0.5, 2],
        [0.5, 1.0, 2 / 3, 1],
        [0.0, 0.0, 0.0, 0],
        [2 / 3, 13 / 18, 59 / 90, 6],
        [0.75, 4 / 6, 61 / 90, 6],
    ]
    np.testing.assert_allclose(frame.to_numpy(dtype=float), expected, rtol=1e-12)
    assert frame["support"].dtype == np.int64


def test_macro_f1_of_the_report_is_the_headline_metric() -> None:
    """One macro F1 in the pipeline: the report's row equals evaluate_model's test_macro_f1."""
    probabilities = np.eye(4)[_REPORT_PRED]
    metrics, _ = evaluate_model(_FixedModel(probabilities), np.zeros((6, 2, 2, 1)), _REPORT_TRUE)
    frame = classification_report_frame(_REPORT_TRUE, _REPORT_PRED, _REPORT_NAMES)
    assert frame.loc["macro avg", "f1"] == pytest.approx(metrics["test_macro_f1"])


def test_per_class_metrics_are_named_for_mlflow() -> None:
    frame = classification_report_frame(_REPORT_TRUE, _REPORT_PRED, _REPORT_NAMES)
    metrics = per_class_metrics(frame)
    assert metrics == pytest.approx(
        {
            "test_precision_cat": 1.0,
            "test_recall_cat": 2 / 3,
            "test_f1_cat": 0.8,
            "test_precision_dog_face": 0.5,
            "test_recall_dog_face": 0.5,
            "test_f1_dog_face": 0.5,
            "test_precision_bird": 0.5,
            "test_recall_bird": 1.0,
            "test_f1_bird": 2 / 3,
            "test_precision_fish": 0.0,
            "test_recall_fish": 0.0,
            "test_f1_fish": 0.0,
        }
    )
    assert all(type(value) is float for value in metrics.values())


def test_metric_safe_names_stay_unique() -> None:
    # "a b", "a_b" and "a/b" all become "a_b": the first keeps it, the others get the next
    # suffix that no class holds ("a_b_2" is a class of its own).
    names = ["a b", "a_b", "a/b", "a_b_2", "ok-1.x", "", "é"]
    assert metric_safe_names(names) == ["a_b", "a_b_3", "a_b_4", "a_b_2", "ok-1.x", "_", "__2"]
    frame = classification_report_frame(np.array([0, 1, 2]), np.array([0, 1, 2]), names[:3])
    assert sorted(per_class_metrics(frame)) == sorted(
        f"test_{metric}_{name}"
        for metric in ("precision", "recall", "f1")
        for name in ("a_b", "a_b_2", "a_b_3")
    )


@pytest.mark.parametrize(
    ("y_true", "y_pred", "names", "message"),
    [
        ([0, 1], [0, 1], [], "class_names is empty"),
        ([0, 1], [0, 1], ["a", "a"], "duplicate names"),
        ([0, 1], [0, 1], ["a", "macro avg"], "names of the average rows"),
        ([0, 2], [0, 1], ["a", "b"], "y_true holds 2"),
        ([0, 1], [0, 1, 1], ["a", "b"], "y_pred has 3 labels but y_true has 2"),
        ([], [], ["a", "b"], "y_true is empty"),
        ([[0, 1]], [[0, 1]], ["a", "b"], "y_true must be 1-D"),
        ([0.0, 1.0], [0, 1], ["a", "b"], "integer class indices"),
    ],
)
def test_classification_report_refuses_bad_input(y_true, y_pred, names, message) -> None:
    with pytest.raises(ValueError, match=message):
        classification_report_frame(np.array(y_true), np.array(y_pred), names)


def test_per_class_metrics_needs_a_report_frame() -> None:
    with pytest.raises(ValueError, match="lacks the columns"):
        per_class_metrics(pd.DataFrame({"precision": [1.0]}, index=["a"]))


# Six classes, one table of scores for four images; the true class ranks 1st, 3rd, 4th and 6th.
_SCORES = np.tile([0.30, 0.25, 0.20, 0.15, 0.06, 0.04], (4, 1))
_RANKED = np.array([0, 2, 3, 5])


def test_top_k_accuracy_matches_hand_values() -> None:
    assert top_k_accuracy(_RANKED, _SCORES, 1) == 0.25
    assert top_k_accuracy(_RANKED, _SCORES, 3) == 0.5
    assert top_k_accuracy(_RANKED, _SCORES, 5) == 0.75
    # Two classes: top-1 is plain accuracy.
    assert top_k_accuracy(
        np.array([0, 1, 1]), np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]]), 1
    ) == (pytest.approx(2 / 3))


def test_top_k_metrics_only_for_many_classes() -> None:
    assert TOP_K_MIN_CLASSES == 6
    assert top_k_metrics(_RANKED, _SCORES) == {
        "test_top_3_accuracy": 0.5,
        "test_top_5_accuracy": 0.75,
    }
    five = _SCORES[:, :5] / _SCORES[:, :5].sum(axis=1, keepdims=True)
    assert top_k_metrics(np.array([0, 2, 3, 4]), five) == {}
    assert top_k_metrics(np.array([0, 1]), np.eye(2)) == {}


@pytest.mark.parametrize(
    ("k", "message"),
    [(0, "k must be between 1 and 5"), (6, "k must be between 1 and 5"), (2.0, "integer")],
)
def test_top_k_refuses_bad_k(k, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        top_k_accuracy(_RANKED, _SCORES, k)


def test_top_k_refuses_mismatched_input() -> None:
    with pytest.raises(ValueError, match="y_true has 3 labels but probabilities has"):
        top_k_accuracy(_RANKED[:3], _SCORES, 3)
    with pytest.raises(ValueError, match="probabilities must be 2-D"):
        top_k_metrics(_RANKED, _SCORES[0])


def _binary_example() -> tuple[np.ndarray, np.ndarray]:
    # sklearn's documentation example: positives score 0.35 and 0.8, negatives 0.1 and 0.4.
    # ROC AUC by counting pairs: of 4 (positive, negative) pairs, 3 have the positive higher
    # (0.35 < 0.4 is the one miss) -> 0.75. Average precision: thresholds 0.8 (P 1, R 1/2),
    # 0.4 (P 1/2, R 1/2), 0.35 (P 2/3, R 1) -> 1/2 * 1 + 0 * 1/2 + 1/2 * 2/3 = 5/6.
    positive = np.array([0.1, 0.4, 0.35, 0.8])
    return np.array([0, 0, 1, 1]), np.stack([1 - positive, positive], axis=1)


def test_binary_curves_match_hand_values() -> None:
    y, probabilities = _binary_example()
    curves = binary_curves(y, probabilities)
    assert curves["roc_auc"] == pytest.approx(0.75)
    assert curves["average_precision"] == pytest.approx(5 / 6)
    assert curves["positive_fraction"] == 0.5
    assert (curves["fpr"][0], curves["tpr"][0], curves["fpr"][-1], curves["tpr"][-1]) == (
        0,
        0,
        1,
        1,
    )
    assert np.all(np.diff(curves["fpr"]) >= 0) and np.all(np.diff(curves["tpr"]) >= 0)
    assert binary_metrics(y, probabilities) == pytest.approx(
        {"test_roc_auc": 0.75, "test_pr_auc": 5 / 6}
    )
    # A sigmoid model's single column is the probability of class 1: the same curves.
    assert binary_metrics(y, probabilities[:, 1:]) == binary_metrics(y, probabilities)


def test_perfect_separation_gives_auc_one() -> None:
    y = np.array([0, 1, 0, 1, 1])
    positive = np.array([0.2, 0.7, 0.1, 0.9, 0.6])
    assert binary_metrics(y, np.stack([1 - positive, positive], axis=1)) == {
        "test_roc_auc": 1.0,
        "test_pr_auc": 1.0,
    }
    # Exactly wrong: every negative scores above every positive.
    assert binary_metrics(1 - y, np.stack([1 - positive, positive], axis=1))["test_roc_auc"] == 0


def test_binary_curves_refuse_what_has_no_auc() -> None:
    with pytest.raises(ValueError, match="need two classes, got probabilities for 3"):
        binary_curves(np.array([0, 1, 2]), np.eye(3))
    with pytest.raises(ValueError, match="hold only class 1: ROC AUC and PR AUC are undefined"):
        binary_metrics(np.array([1, 1, 1]), np.array([[0.2, 0.8], [0.4, 0.6], [0.9, 0.1]]))
    with pytest.raises(ValueError, match="y_true holds 2"):
        binary_curves(np.array([0, 2]), np.eye(2))


def test_most_confident_mistakes_come_first() -> None:
    y = np.array([0, 1, 2, 0, 1, 2])
    probabilities = np.array(
        [
            [0.9, 0.05, 0.05],  # right
            [0.6, 0.3, 0.1],  # wrong, predicted 0 at 0.6
            [0.1, 0.8, 0.1],  # wrong, predicted 1 at 0.8
            [0.2, 0.1, 0.7],  # wrong, predicted 2 at 0.7
            [0.05, 0.9, 0.05],  # right
            [0.6, 0.1, 0.3],  # wrong, predicted 0 at 0.6: ties keep test-set order
        ]
    )
    assert most_confident_mistakes(y, probabilities, 10).tolist() == [2, 3, 1, 5]
    assert most_confident_mistakes(y, probabilities, 2).tolist() == [2, 3]
    assert most_confident_mistakes(y, probabilities, 0).tolist() == []
    none = most_confident_mistakes(probabilities.argmax(axis=1), probabilities, 5)
    assert none.shape == (0,) and none.dtype == np.int64


@pytest.mark.parametrize(("n", "message"), [(-1, "n must be >= 0"), (1.5, "n must be an integer")])
def test_most_confident_mistakes_refuses_bad_n(n, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        most_confident_mistakes(np.array([0, 1]), np.eye(2), n)


# --- the evaluate path on the sharded store -------------------------------------------------

_CLASSES = [f"class_{label}" for label in range(6)]


def _conv_model(seed: int = 0):
    """A small untrained convnet on raw uint8 8x8x1 images, as the pipeline's models take them."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(8, 8, 1), dtype="uint8")
    hidden = layers.Conv2D(4, 3, activation="relu")(layers.Rescaling(1.0 / 255)(inputs))
    outputs = layers.Dense(len(_CLASSES), activation="softmax")(
        layers.GlobalAveragePooling2D()(hidden)
    )
    return keras.Model(inputs, outputs)


def _random_images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct random images (none all black) and labels."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, size=(count, 8, 8, 1), dtype=np.uint8)
    return x, np.arange(count, dtype=np.int64) % len(_CLASSES)


def _store(root: Path, test: tuple[np.ndarray, np.ndarray], shard_bytes: int) -> Path:
    prepared = root / "data" / "prepared"
    write_store_from_arrays(
        prepared,
        {"train": _random_images(12, 1), "val": _random_images(6, 2), "test": test},
        _CLASSES,
        shard_bytes=shard_bytes,
    )
    return prepared


class _CountingSplit:
    """A split that records every read's rows, around the store's reader."""

    def __init__(self, split) -> None:
        self.split = split
        self.reads: list[np.ndarray] = []
        self.y, self.classes, self.image_shape = split.y, split.classes, split.image_shape

    def __len__(self) -> int:
        return len(self.split)

    def read(self, rows) -> np.ndarray:
        self.reads.append(np.asarray(rows).reshape(-1))
        return self.split.read(rows)

    def batches(self, batch_size: int, rows=None):
        for chosen, images in self.split.batches(batch_size, rows):
            self.reads.append(chosen)
            yield chosen, images


def _recording(predict, predicted: list[np.ndarray]):
    """`predict`, recording a copy of the images of every call in `predicted`."""

    def recorded(images, *args, **kwargs):
        predicted.append(np.asarray(images).copy())
        return predict(images, *args, **kwargs)

    return recorded


def test_the_evaluate_path_predicts_each_test_image_once_in_batches(tmp_path, monkeypatch) -> None:
    """Over a store of several shards: one prediction per batch (never more than the batch
    size), every test image predicted exactly once, and, beyond the batches, only the few
    images the figures show read again; the metrics are those of predicting all at once."""
    import keras

    from pipeline.config import EvaluateConfig, PatternsConfig
    from pipeline.evaluation.report import evaluate_strategy
    from pipeline.store import HISTORY_FILE, MODEL_FILE

    x, y = _random_images(40, 3)
    # 8 images a shard: the test split spans 5 shards, and batches of 16 straddle them.
    prepared = _store(tmp_path, (x, y), shard_bytes=8 * 64)
    model_dir = tmp_path / "models" / "scratch"
    model_dir.mkdir(parents=True)
    model = _conv_model()
    model.save(model_dir / MODEL_FILE)
    pd.DataFrame({"epoch": [0, 1], "loss": [2.0, 1.5], "val_loss": [2.1, 1.7]}).to_csv(
        model_dir / HISTORY_FILE, index=False
    )
    predicted: list[np.ndarray] = []
    load_model = keras.saving.load_model

    def load_counted(path, *args, **kwargs):
        loaded = load_model(path, *args, **kwargs)
        # Both ways of predicting are counted: a second pass by either would show.
        for name in ("predict", "predict_on_batch"):
            setattr(loaded, name, _recording(getattr(loaded, name), predicted))
        return loaded

    monkeypatch.setattr(keras.saving, "load_model", load_counted)
    test = _CountingSplit(open_split(prepared, "test"))
    assert len(test.split.shards) == 5
    options = EvaluateConfig(
        gradcam_images=4, gallery_images=8, mistakes=4, patterns=PatternsConfig(filters=0)
    )
    evaluation = evaluate_strategy(
        "scratch", model_dir, tmp_path / "reports", test, options, batch_size=16
    )

    digests = list(image_digests(x))
    seen = [digest for batch in predicted for digest in image_digests(batch)]
    # The timing pass predicts black images only: no test image twice.
    assert sorted(digest for digest in seen if digest in digests) == sorted(digests)
    assert max(len(batch) for batch in predicted) <= 16
    assert max(len(rows) for rows in test.reads) <= 16
    shown = 8 + 4 + 4 + 1  # the gallery, the mistakes, Grad-CAM and one activation image
    assert sum(len(rows) for rows in test.reads) <= len(x) + shown
    expected = class_probabilities(model.predict(x, batch_size=256, verbose=0))
    metrics = evaluation["metrics"]
    assert set(metrics) == {
        "test_loss",
        "test_accuracy",
        "test_macro_f1",
        "test_images",
        "test_top_3_accuracy",
        "test_top_5_accuracy",
        *CALIBRATION_METRICS,
    }
    assert metrics == pytest.approx(
        {
            **probability_metrics(y, expected),
            **top_k_metrics(y, expected),
            **calibration_metrics(y, expected),
        },
        rel=1e-6,
    )
    assert evaluation["images_per_second"] > 0
    assert evaluation["temperature"] == 1.0
    assert (tmp_path / "reports" / RELIABILITY_PNG).is_file()


def test_batched_predictions_are_those_of_one_predict_to_the_last_bit(tmp_path) -> None:
    """Batches sized by memory are the 256 images evaluation always predicted at once, so the
    metrics read from a store equal those of predicting the whole array as before."""
    x, y = _random_images(300, 4)
    prepared = _store(tmp_path, (x, y), shard_bytes=100 * 64)
    model = _conv_model()
    before = model.predict(x, batch_size=256, verbose=0)
    test = open_split(prepared, "test")
    metrics, predictions = evaluate_model(model, test, test.y)
    probabilities = class_probabilities(before)
    assert metrics == probability_metrics(y, probabilities)
    assert np.array_equal(predictions, probabilities.argmax(axis=1))
    assert np.array_equal(predict_probabilities(model, ArraySplit(x, y, _CLASSES)), probabilities)


def test_predict_batches_are_sized_by_memory() -> None:
    assert predict_batch_size((8, 8, 1)) == MAX_PREDICT_BATCH
    assert predict_batch_size((224, 224, 3)) == MAX_PREDICT_BATCH  # 147 KiB an image
    assert predict_batch_size((1024, 1024, 3)) == 21  # 3 MiB an image: 64 MiB a batch
    assert predict_batch_size((8192, 8192, 3)) == 1  # larger than the limit: one at a time
    assert predict_batch_size((8, 8, 1), limit_bytes=640) == 10


def test_predicting_no_image_is_refused() -> None:
    with pytest.raises(ValueError, match="no images to predict"):
        predict_probabilities(_FixedModel(np.eye(2)), np.zeros((0, 2, 2, 1), np.uint8))


class _TimedModel:
    """A model whose predict_on_batch records the shapes it is given."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, ...]] = []

    def predict_on_batch(self, x):
        self.batches.append(x.shape)
        return np.full((len(x), 2), 0.5)


def test_images_per_second_come_from_the_scoring_pass_when_it_is_long_enough() -> None:
    """Warm scoring batches (the first batch's size, after it) are timed as they are: a large
    test split costs no extra prediction."""
    from pipeline.evaluation.report import MIN_TIMED_IMAGES, measure_images_per_second

    model = _TimedModel()
    size = MIN_TIMED_IMAGES // 2
    # The first batch traces and the last is smaller: neither is timed.
    timings = [(size, 9.0), (size, 0.5), (size, 0.5), (size, 0.5), (7, 3.0)]
    assert measure_images_per_second(model, (8, 8, 1), timings) == pytest.approx(3 * size / 1.5)
    assert model.batches == []


def test_a_small_test_split_is_timed_on_black_batches_of_its_warm_shape() -> None:
    from pipeline.evaluation.report import MIN_TIMED_IMAGES, measure_images_per_second

    model = _TimedModel()
    ips = measure_images_per_second(model, (8, 8, 1), [(100, 5.0)])
    # The scoring pass's one batch traced the function for 100 images: that shape, no warm-up.
    assert model.batches == [(100, 8, 8, 1)] * -(-MIN_TIMED_IMAGES // 100)
    assert ips > 0
    with pytest.raises(ValueError, match="no scoring batch"):
        measure_images_per_second(model, (8, 8, 1), [])
