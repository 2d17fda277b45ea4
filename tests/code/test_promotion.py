"""The promotion gate's decisions, on metrics, labels and predictions alone: which strategy is
promoted, each criterion can stop a challenger by itself, test images a model trained on are
left out, the decision names why, and bad thresholds and inputs are refused. And the scoring
that feeds it: the test split read from the store a batch at a time, each image once."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import ConfigError, RegistryError
from pipeline.evaluation.promotion import (
    GateThresholds,
    ScoredVersion,
    UnusableChampion,
    choose_strategy,
    decide_promotion,
    gate_challenger,
    judge_challenger,
)

THRESHOLDS = GateThresholds(min_accuracy=0.6, min_improvement=0.0, alpha=0.05, min_class_recall=0.3)
CLASSES = ["cat", "dog"]
ALL_CRITERIA = ["accuracy_floor", "class_recall_floor", "improvement", "mcnemar"]


def _labels(n: int = 200, classes: int = 2) -> np.ndarray:
    """Balanced labels: image i is of class i % classes."""
    return np.arange(n) % classes


def _with_errors(y: np.ndarray, wrong, classes: int = 2) -> np.ndarray:
    """Perfect predictions of `y`, except at the indices `wrong`, which get the next class."""
    predictions = y.copy()
    wrong = np.asarray(list(wrong), dtype=int)
    predictions[wrong] = (predictions[wrong] + 1) % classes
    return predictions


def _failed(decision) -> list[str]:
    return [criterion.name for criterion in decision.criteria if not criterion.passed]


def _criterion(decision, name: str):
    (found,) = [criterion for criterion in decision.criteria if criterion.name == name]
    return found


def test_a_clearly_better_challenger_passes_every_criterion() -> None:
    y = _labels()
    champion = _with_errors(y, range(0, 80))  # 60 % right
    challenger = _with_errors(y, range(0, 10))  # 95 % right, and right wherever the champion is
    decision = decide_promotion(y, challenger, champion, CLASSES, THRESHOLDS)
    assert decision.passed and _failed(decision) == []
    assert [criterion.name for criterion in decision.criteria] == ALL_CRITERIA
    assert decision.challenger_accuracy == pytest.approx(0.95)
    assert decision.champion_accuracy == pytest.approx(0.6)
    mcnemar = _criterion(decision, "mcnemar")
    assert mcnemar.observed < 1e-10 and mcnemar.threshold == 0.05
    assert _criterion(decision, "improvement").observed == pytest.approx(0.35)
    # Passed: the reasons are every criterion's sentence, in order.
    assert decision.reasons() == [criterion.detail for criterion in decision.criteria]


def test_to_dict_is_json_ready_and_carries_the_mcnemar_test() -> None:
    y = _labels()
    champion = _with_errors(y, range(0, 80))
    challenger = _with_errors(y, range(0, 10))
    record = decide_promotion(y, challenger, champion, CLASSES, THRESHOLDS).to_dict()
    assert json.loads(json.dumps(record)) == record
    assert record["passed"] is True
    assert list(record["criteria"]) == ALL_CRITERIA
    assert record["criteria"]["accuracy_floor"] == {
        "passed": True,
        "observed": pytest.approx(0.95),
        "threshold": 0.6,
    }
    mcnemar = record["criteria"]["mcnemar"]
    assert (mcnemar["challenger_only_correct"], mcnemar["champion_only_correct"]) == (70, 0)
    assert mcnemar["exact"] is False and mcnemar["p_value"] == mcnemar["observed"]
    assert mcnemar["statistic"] == pytest.approx(69**2 / 70)
    assert record["criteria"]["improvement"]["observed"] == pytest.approx(0.35)
    assert (record["challenger_accuracy"], record["champion_accuracy"]) == (
        pytest.approx(0.95),
        pytest.approx(0.6),
    )
    assert len(record["explanations"]) == 4 and "'cat'" in record["explanations"][1]


def test_identical_predictions_are_rejected_by_mcnemar_alone() -> None:
    """A retrained model that predicts exactly what the champion does is not better, even
    with min_improvement 0 and both floors met."""
    y = _labels()
    predictions = _with_errors(y, range(0, 20))
    decision = decide_promotion(y, predictions, predictions.copy(), CLASSES, THRESHOLDS)
    assert not decision.passed and _failed(decision) == ["mcnemar"]
    assert decision.mcnemar is not None and decision.mcnemar.p_value == 1.0
    assert _criterion(decision, "mcnemar").observed == 1.0
    assert decision.reasons() == [_criterion(decision, "mcnemar").detail]
    assert "p = 1" in decision.reasons()[0]


@pytest.mark.parametrize(
    ("failing", "thresholds", "challenger_errors", "champion_errors", "named"),
    [
        # 95 % right against a floor of 99 %.
        ("accuracy_floor", {"min_accuracy": 0.99}, range(0, 10), range(0, 80), "0.9500"),
        # Ten errors, all on class 'cat' (even indices): its recall is 0.90 < 0.95.
        ("class_recall_floor", {"min_class_recall": 0.95}, range(0, 20, 2), range(0, 80), "'cat'"),
        # A gain of 0.35, short of the 0.5 asked for.
        ("improvement", {"min_improvement": 0.5}, range(0, 10), range(0, 80), "+0.3500"),
        # 95 % vs 93 %: better, but 4 discordant pairs are no evidence (exact p = 0.125).
        ("mcnemar", {}, range(0, 10), range(0, 14), "p = 0.125"),
    ],
)
def test_each_criterion_can_fail_alone(
    failing: str, thresholds: dict, challenger_errors, champion_errors, named: str
) -> None:
    y = _labels()
    decision = decide_promotion(
        y,
        _with_errors(y, challenger_errors),
        _with_errors(y, champion_errors),
        CLASSES,
        replace(THRESHOLDS, **thresholds),
    )
    assert not decision.passed
    assert _failed(decision) == [failing]
    # The reasons are the failed criterion's sentence alone, with its observed value.
    assert decision.reasons() == [_criterion(decision, failing).detail]
    assert named in decision.reasons()[0]
    assert decision.to_dict()["criteria"][failing]["passed"] is False
    # The same challenger passes once that one threshold is relaxed (where one can be).
    if thresholds:
        relaxed = decide_promotion(
            y,
            _with_errors(y, challenger_errors),
            _with_errors(y, champion_errors),
            CLASSES,
            THRESHOLDS,
        )
        assert relaxed.passed


def test_a_significantly_worse_challenger_fails_mcnemar() -> None:
    """McNemar's p is two-sided: a tiny p in the champion's favour must not pass the test."""
    y = _labels()
    champion = _with_errors(y, range(0, 10))  # 95 % right
    challenger = _with_errors(y, range(0, 60))  # 70 % right
    decision = decide_promotion(y, challenger, champion, CLASSES, THRESHOLDS)
    mcnemar = _criterion(decision, "mcnemar")
    assert mcnemar.observed < THRESHOLDS.alpha and not mcnemar.passed
    assert "in the challenger's favour" in mcnemar.detail
    assert _failed(decision) == ["improvement", "mcnemar"]


def test_without_a_champion_the_floors_alone_decide() -> None:
    y = _labels()
    # Better than nothing is not asked for: only the floors are judged.
    decision = decide_promotion(y, _with_errors(y, range(0, 60)), None, CLASSES, THRESHOLDS)
    assert decision.passed and decision.champion_accuracy is None and decision.mcnemar is None
    assert [criterion.name for criterion in decision.criteria] == ALL_CRITERIA[:2]
    record = decision.to_dict()
    assert list(record["criteria"]) == ALL_CRITERIA[:2] and record["champion_accuracy"] is None
    assert json.loads(json.dumps(record)) == record
    # And a floor alone can still stop it: 70 % right against a floor of 80 %.
    stricter = replace(THRESHOLDS, min_accuracy=0.8)
    rejected = decide_promotion(y, _with_errors(y, range(0, 60)), None, CLASSES, stricter)
    assert not rejected.passed and _failed(rejected) == ["accuracy_floor"]


def test_the_worst_class_is_named() -> None:
    classes = ["cat", "dog", "bird"]
    y = _labels(300, classes=3)
    # Class 2 ('bird', indices 2, 5, 8, ...) is wrong 80 times out of 100; 'dog' 10 times.
    wrong = [*range(2, 242, 3), *range(1, 31, 3)]
    challenger = _with_errors(y, wrong, classes=3)
    decision = decide_promotion(y, challenger, None, classes, THRESHOLDS)
    recall = _criterion(decision, "class_recall_floor")
    assert not recall.passed and recall.observed == pytest.approx(0.2)
    assert recall.threshold == THRESHOLDS.min_class_recall
    assert "'bird'" in recall.detail and "0.2000" in recall.detail and "below" in recall.detail
    assert "'dog'" not in recall.detail and "'cat'" not in recall.detail
    assert decision.reasons() == [recall.detail]


def test_a_class_absent_from_the_test_split_is_named_not_counted_as_zero() -> None:
    classes = ["cat", "dog", "bird"]
    y = _labels(200, classes=2)  # no 'bird' (class 2) at all
    challenger = _with_errors(y, range(0, 20, 2), classes=3)  # 'cat' recall 0.9, 'dog' 1.0
    decision = decide_promotion(y, challenger, None, classes, THRESHOLDS)
    recall = _criterion(decision, "class_recall_floor")
    assert recall.passed and recall.observed == pytest.approx(0.9)
    assert "'cat'" in recall.detail
    assert "no test image" in recall.detail and "'bird'" in recall.detail


def test_floors_are_inclusive() -> None:
    """A challenger exactly at the floors passes: the thresholds are minimums."""
    y = _labels()
    challenger = _with_errors(y, range(0, 20, 2))  # accuracy 0.95; 'cat' recall 0.9
    gate = replace(THRESHOLDS, min_accuracy=0.95, min_class_recall=0.9)
    assert decide_promotion(y, challenger, None, CLASSES, gate).passed


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("min_accuracy", 1.5),
        ("min_accuracy", -0.1),
        ("min_improvement", 1.01),
        ("min_class_recall", -1.0),
        ("min_class_recall", float("nan")),
        ("alpha", 0.0),
        ("alpha", 1.0),
        ("alpha", float("nan")),
        ("alpha", "0.05"),
        ("min_accuracy", True),
    ],
)
def test_bad_thresholds_are_refused_naming_the_field(field: str, value) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be"):
        replace(THRESHOLDS, **{field: value})


def test_threshold_edges_are_accepted() -> None:
    GateThresholds(min_accuracy=0.0, min_improvement=1.0, alpha=0.999, min_class_recall=0)


@pytest.mark.parametrize(
    ("y_true", "challenger", "champion", "classes", "message"),
    [
        ([0, 1], [0, 1, 1], [0, 1], CLASSES, "challenger_pred has 3 labels but y_true has 2"),
        ([0, 1], [0, 1], [1], CLASSES, "champion_pred has 1 labels but y_true has 2"),
        ([], [], None, CLASSES, "y_true is empty"),
        ([[0, 1]], [[0, 1]], None, CLASSES, "y_true must be 1-D"),
        ([0, 1], [0.0, 1.0], None, CLASSES, "challenger_pred must hold integer class indices"),
        ([0, 2], [0, 1], None, CLASSES, "y_true holds 2, not an index into the 2 classes"),
        ([0, 1], [0, 1], [0, -1], CLASSES, "champion_pred holds -1"),
        ([0, 1], [0, 1], None, [], "classes is empty"),
        ([0, 1], [0, 1], None, ["cat", "cat"], "classes has duplicate names"),
    ],
)
def test_bad_inputs_are_refused(y_true, challenger, champion, classes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        decide_promotion(
            np.array(y_true),
            np.array(challenger),
            None if champion is None else np.array(champion),
            classes,
            THRESHOLDS,
        )


# scratch has the best test accuracy, and must not be chosen for it: best chooses on val.
METRICS = {
    "scratch": {"val_accuracy": 0.8, "val_loss": 0.5, "test_accuracy": 0.99},
    "feature_extraction": {"val_accuracy": 0.9, "val_loss": 0.3, "test_accuracy": 0.85},
    "fine_tune": {"val_accuracy": 0.9, "val_loss": 0.3, "test_accuracy": 0.9},
}
METRICS_FILE = Path("reports/metrics.json")


def test_best_is_the_highest_val_accuracy_never_the_test_one_and_ties_go_to_the_first() -> None:
    available = ["scratch", "feature_extraction", "fine_tune"]
    assert choose_strategy(METRICS, available, "best", METRICS_FILE) == "feature_extraction"
    assert choose_strategy(METRICS, available[::-1], "best", METRICS_FILE) == "fine_tune"
    # Only strategies with a model folder compete.
    assert choose_strategy(METRICS, ["scratch"], "best", METRICS_FILE) == "scratch"


def test_equal_val_accuracies_go_to_the_lower_val_loss() -> None:
    metrics = {**METRICS, "fine_tune": {**METRICS["fine_tune"], "val_loss": 0.2}}
    available = ["scratch", "feature_extraction", "fine_tune"]
    assert choose_strategy(metrics, available, "best", METRICS_FILE) == "fine_tune"


def test_best_without_val_figures_says_to_evaluate_again() -> None:
    metrics = {"scratch": {"test_accuracy": 0.9}}
    with pytest.raises(RegistryError, match="scratch has no val_accuracy.*dvc repro"):
        choose_strategy(metrics, ["scratch"], "best", METRICS_FILE)


def test_a_named_strategy_is_taken_as_named() -> None:
    assert choose_strategy(METRICS, list(METRICS), "scratch", METRICS_FILE) == "scratch"


def test_a_named_strategy_without_an_evaluated_model_is_refused_naming_those_there_are() -> None:
    with pytest.raises(ConfigError, match="promote.strategy = 'fine_tune'.*evaluated: scratch$"):
        choose_strategy(METRICS, ["scratch"], "fine_tune", METRICS_FILE)


def test_best_without_any_evaluated_strategy_names_the_metrics_file() -> None:
    with pytest.raises(RegistryError, match="reports/metrics.json holds no evaluated strategy"):
        choose_strategy({}, ["scratch"], "best", METRICS_FILE)


def _scored(predictions, version=None, manifest=None, classes=CLASSES) -> ScoredVersion:
    return ScoredVersion(version, list(classes), predictions, None, manifest)


def test_a_champion_of_other_classes_cannot_be_compared() -> None:
    """The floors are still judged, but the challenger does not replace a champion that
    answers another question without a person deciding so."""
    y = _labels()
    champion = _scored(None, version="3", classes=["bird", "fish"])
    decision = gate_challenger(y, _scored(y.copy()), champion, CLASSES, THRESHOLDS)
    assert not decision.passed and _failed(decision) == ["comparable"]
    assert "champion version 3 predicts classes ['bird', 'fish']" in decision.reasons()[0]
    assert decision.champion_accuracy is None and decision.challenger_accuracy == 1.0


def _digests(n: int) -> list[str]:
    return [f"{index:032x}" for index in range(n)]


def test_the_gate_judges_only_the_test_images_neither_model_trained_on() -> None:
    y = _labels(40)
    digests = _digests(40)
    # Wrong on the first 10 images only, which the challenger trained on: left out, it is
    # perfect on the 30 judged.
    challenger = _scored(_with_errors(y, range(10)), manifest=set(digests[:10]))
    outcome = judge_challenger(y, digests, challenger, None, CLASSES, THRESHOLDS)
    assert outcome.overlap.excluded == 10 and outcome.overlap.fair
    assert outcome.decision.passed and outcome.decision.challenger_accuracy == 1.0


def test_the_gate_refuses_when_a_model_trained_on_most_test_images() -> None:
    y = _labels(40)
    digests = _digests(40)
    champion = _scored(y.copy(), version="1", manifest=set(digests[:30]))
    outcome = judge_challenger(y, digests, _scored(y.copy()), champion, CLASSES, THRESHOLDS)
    assert not outcome.overlap.fair
    assert _failed(outcome.decision) == ["fair_test_split"]
    assert "30 of 40 test images" in outcome.decision.reasons()[0]


@pytest.mark.parametrize(
    ("challenger_version", "refused"), [("2", True), ("4", False), (None, False)]
)
def test_the_champion_itself_is_never_promoted_again(challenger_version, refused: bool) -> None:
    y = _labels()
    champion = _scored(_with_errors(y, range(0, 80)), version="2")
    challenger = _scored(_with_errors(y, range(0, 10)), version=challenger_version)
    outcome = judge_challenger(y, _digests(len(y)), challenger, champion, CLASSES, THRESHOLDS)
    assert outcome.decision.passed is not refused
    assert ("new_model" in _failed(outcome.decision)) is refused
    if refused:
        assert "version 2 is already the champion" in outcome.decision.reasons()[-1]


def test_the_challenger_is_scored_on_the_store_a_batch_at_a_time(tmp_path, monkeypatch) -> None:
    """The registry scores a model file through the served classifier on the test split read
    from the store in batches: every image read and predicted once, the answers
    model.predict gives."""
    import keras

    from pipeline import registry
    from pipeline.store import image_digests, open_split, write_store_from_arrays

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(23, 4, 4, 1), dtype=np.uint8)
    y = np.arange(23) % 2
    write_store_from_arrays(
        tmp_path / "prepared",
        {"train": (x[:2], y[:2]), "val": (x[2:4], y[2:4]), "test": (x, y)},
        CLASSES,
        shard_bytes=5 * 16,
    )
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(4, 4, 1), dtype="uint8")
    hidden = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    model.save(tmp_path / "model.keras")
    test = open_split(tmp_path / "prepared", "test")
    batches: list[np.ndarray] = []
    read_batches = test.batches

    def recorded(batch_size, rows=None):
        for chosen, images in read_batches(batch_size, rows):
            batches.append(images)
            yield chosen, images

    monkeypatch.setattr(test, "batches", recorded)
    monkeypatch.setattr(registry, "predict_batch_size", lambda shape: 7)
    scored = registry.score_model_file(tmp_path / "model.keras", test, CLASSES)

    assert [len(batch) for batch in batches] == [7, 7, 7, 2]
    assert sorted(image_digests(np.concatenate(batches))) == sorted(image_digests(x))
    expected = (model.predict(x, verbose=0)[:, 0] > 0.5).astype(int)
    np.testing.assert_array_equal(scored.predictions, expected)
    assert scored.classes == CLASSES and scored.version is None


ROLLED_BACK_SENTENCE = (
    "version 3 was rolled back: the same model is never promoted again; retrain it into a "
    "different model (pipeline retrain --force)"
)


@pytest.mark.parametrize(
    ("challenger_version", "refused"),
    # A SQLite store answers a version as a number, a tracking server as text: both match.
    [("3", True), (3, True), ("4", False), (None, False)],
    ids=["rolled-back", "rolled-back-number", "other-version", "new-model"],
)
def test_a_rolled_back_model_is_never_promoted_again(challenger_version, refused: bool) -> None:
    """The challenger clearly beats the champion on every criterion: only a rollback of its
    own version stops it. A new model (no version yet) is never stopped by one."""
    y = _labels()
    champion = _scored(_with_errors(y, range(0, 80)), version="2")
    challenger = _scored(_with_errors(y, range(0, 10)), version=challenger_version)
    outcome = judge_challenger(
        y, _digests(len(y)), challenger, champion, CLASSES, THRESHOLDS, frozenset({"3", "1"})
    )
    decision = outcome.decision
    assert decision.passed is not refused
    names = [criterion.name for criterion in decision.criteria]
    if refused:
        assert _failed(decision) == ["not_rolled_back"]
        assert names == [*ALL_CRITERIA, "not_rolled_back"]
        assert _criterion(decision, "not_rolled_back").detail == ROLLED_BACK_SENTENCE
        assert decision.reasons() == [ROLLED_BACK_SENTENCE]
        record = decision.to_dict()
        assert record["criteria"]["not_rolled_back"]["passed"] is False
        assert record["explanations"][-1] == ROLLED_BACK_SENTENCE
    else:
        assert names == ALL_CRITERIA


def test_a_rolled_back_model_is_refused_with_no_champion_to_compare_with() -> None:
    y = _labels()
    challenger = _scored(y.copy(), version="3")
    outcome = judge_challenger(
        y, _digests(len(y)), challenger, None, CLASSES, THRESHOLDS, frozenset({"3"})
    )
    assert not outcome.decision.passed
    assert _failed(outcome.decision) == ["not_rolled_back"]
    assert outcome.decision.reasons() == [ROLLED_BACK_SENTENCE]


def test_without_rolled_back_versions_the_gate_passes_the_same_challenger() -> None:
    """The default: nothing rolled back, nothing refused for it."""
    y = _labels()
    champion = _scored(_with_errors(y, range(0, 80)), version="2")
    challenger = _scored(_with_errors(y, range(0, 10)), version="3")
    outcome = judge_challenger(y, _digests(len(y)), challenger, champion, CLASSES, THRESHOLDS)
    assert outcome.decision.passed
    assert "not_rolled_back" not in [criterion.name for criterion in outcome.decision.criteria]


UNUSABLE = UnusableChampion(
    "2", "version 2 of 'x': model.keras has SHA-256 ab..., registered cd..."
)


@pytest.mark.parametrize("accurate", [True, False], ids=["floors-reached", "floor-missed"])
def test_an_unusable_champion_leaves_the_floors_alone_to_judge(accurate: bool) -> None:
    """A champion that cannot be loaded does not stop the gate: the challenger is judged on
    the floors, and the decision says the champion was unusable and how to roll back."""
    y = _labels()
    predictions = _with_errors(y, range(0, 10) if accurate else range(0, 150))
    outcome = judge_challenger(
        y,
        _digests(len(y)),
        _scored(predictions),
        None,
        CLASSES,
        THRESHOLDS,
        unusable_champion=UNUSABLE,
    )
    decision = outcome.decision
    assert [criterion.name for criterion in decision.criteria] == ALL_CRITERIA[:2]
    assert decision.passed is accurate
    assert decision.champion_accuracy is None
    assert decision.champion_unusable.startswith(
        "champion unusable: version 2 cannot be loaded (version 2 of 'x': model.keras has"
    )
    assert "pipeline rollback --to <version>" in decision.champion_unusable
    assert decision.reasons()[0] == decision.champion_unusable
    record = decision.to_dict()
    assert record["champion_unusable"] == decision.champion_unusable
    json.dumps(record)


@pytest.mark.parametrize("version", ["2", 2], ids=["text", "number"])
def test_the_unusable_champions_own_model_is_not_promoted_as_new(version) -> None:
    y = _labels()
    outcome = judge_challenger(
        y,
        _digests(len(y)),
        _scored(y.copy(), version=version),
        None,
        CLASSES,
        THRESHOLDS,
        unusable_champion=UNUSABLE,
    )
    assert _failed(outcome.decision) == ["new_model"]


def test_a_champion_is_either_scored_or_unusable() -> None:
    y = _labels()
    with pytest.raises(ValueError, match="either scored or unusable"):
        judge_challenger(
            y,
            _digests(len(y)),
            _scored(y.copy()),
            _scored(y.copy(), version="2"),
            CLASSES,
            THRESHOLDS,
            unusable_champion=UNUSABLE,
        )


def test_a_version_is_tagged_with_the_exports_it_carries_and_each_refusal() -> None:
    import numpy as np

    from pipeline.export.parity import measure_parity
    from pipeline.promotion import ExportsMade

    probabilities = np.array([[0.8, 0.2], [0.3, 0.7]])
    passed = measure_parity(
        probabilities,
        probabilities,
        np.array([0, 1]),
        format_name="onnx",
        quantize="none",
        runtime="onnxruntime",
        runtime_version="1.32.0",
        size_bytes=10,
        keras_size_bytes=40,
    )
    made = ExportsMade()
    made.figures = {
        "onnx": passed.to_dict(),
        "tflite": {"passed": False, "refused": "tflite: max_abs_diff 0.3 is over 0.0001"},
    }
    tags = made.tags()
    assert tags["exports"] == "onnx"
    assert tags["export.onnx.top1_agreement"] == "1.000000"
    assert tags["export.onnx.max_abs_diff"] == "0"
    assert tags["export.onnx.size_ratio"] == "0.250"
    assert tags["export.tflite.refused"].startswith("tflite: max_abs_diff 0.3")
    assert "export.tflite.top1_agreement" not in tags
    made.figures = {}
    assert made.tags() == {"exports": "none"}
