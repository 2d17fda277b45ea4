"""The promotion gate's decision and McNemar's test, on labels and predictions alone."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest, chi2

from pipeline.evaluation.promotion import GateThresholds, decide_promotion
from pipeline.evaluation.significance import mcnemar_test

THRESHOLDS = GateThresholds(min_accuracy=0.6, min_improvement=0.0, alpha=0.05, min_class_recall=0.3)


def _paired(both: int, champion_only: int, challenger_only: int, neither: int):
    """Labels (all class 1) and two models' predictions with the given 2x2 table."""
    n = both + champion_only + challenger_only + neither
    y = np.ones(n, dtype=int)
    champion = np.array([1] * both + [1] * champion_only + [0] * challenger_only + [0] * neither)
    challenger = np.array([1] * both + [0] * champion_only + [1] * challenger_only + [0] * neither)
    return y, challenger, champion


def test_mcnemar_matches_the_worked_example() -> None:
    # Wikipedia, "McNemar's test", example: 2x2 table a=59, b=6, c=16, d=80 (n=161).
    # Chi-square with Edwards' continuity correction: (|b - c| - 1)^2 / (b + c) = 81/22.
    y, challenger, champion = _paired(both=59, champion_only=6, challenger_only=16, neither=80)
    corrected = mcnemar_test(y, challenger, champion, exact_below=0)
    assert (corrected.challenger_only_correct, corrected.champion_only_correct) == (16, 6)
    assert corrected.statistic == pytest.approx(81 / 22)
    assert corrected.p_value == pytest.approx(chi2.sf(81 / 22, df=1))
    assert corrected.p_value == pytest.approx(0.0550, abs=5e-4) and not corrected.exact
    # 22 discordant pairs (< 25): the exact binomial test, two-sided, on 6 of 22.
    exact = mcnemar_test(y, challenger, champion)
    assert exact.exact and exact.statistic == 6
    assert exact.p_value == pytest.approx(binomtest(6, 22, 0.5).pvalue)
    assert exact.p_value == pytest.approx(0.0525, abs=5e-4)


def test_identical_predictions_give_p_one_and_are_rejected() -> None:
    y, challenger, _ = _paired(both=80, champion_only=0, challenger_only=0, neither=20)
    assert mcnemar_test(y, challenger, challenger).p_value == 1.0
    decision = decide_promotion(y, challenger, challenger, ["a", "b"], THRESHOLDS)
    failed = {c.name for c in decision.criteria if not c.passed}
    assert failed == {"mcnemar"} and not decision.passed


def _labels(n: int = 200) -> np.ndarray:
    return np.arange(n) % 2


def _with_errors(y: np.ndarray, wrong: np.ndarray) -> np.ndarray:
    predictions = y.copy()
    predictions[wrong] = 1 - predictions[wrong]
    return predictions


def test_a_clearly_better_challenger_passes_every_criterion() -> None:
    y = _labels()
    champion = _with_errors(y, np.arange(0, 80))  # 60 % right
    challenger = _with_errors(y, np.arange(0, 10))  # 95 % right
    decision = decide_promotion(y, challenger, champion, ["cat", "dog"], THRESHOLDS)
    assert decision.passed
    assert [c.name for c in decision.criteria] == [
        "accuracy_floor", "class_recall_floor", "improvement", "mcnemar",
    ]  # fmt: skip
    record = decision.to_dict()
    assert record["criteria"]["mcnemar"]["challenger_only_correct"] == 70
    assert record["criteria"]["improvement"]["observed"] == pytest.approx(0.35)
    assert record["champion_accuracy"] == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("failing", "thresholds", "challenger_errors", "champion_errors"),
    [
        ("accuracy_floor", {"min_accuracy": 0.99}, range(0, 10), range(0, 80)),
        ("class_recall_floor", {"min_class_recall": 0.95}, range(0, 20, 2), range(0, 80)),
        ("improvement", {"min_improvement": 0.5}, range(0, 10), range(0, 80)),
        ("mcnemar", {}, range(0, 10), range(0, 14)),
    ],
)
def test_each_criterion_can_fail_alone(
    failing: str, thresholds: dict, challenger_errors, champion_errors
) -> None:
    y = _labels()
    gate = GateThresholds(**{**THRESHOLDS.__dict__, **thresholds})
    decision = decide_promotion(
        y,
        _with_errors(y, np.array(list(challenger_errors))),
        _with_errors(y, np.array(list(champion_errors))),
        ["cat", "dog"],
        gate,
    )
    assert not decision.passed
    assert [c.name for c in decision.criteria if not c.passed] == [failing]
    assert len(decision.reasons()) == 1


def test_without_a_champion_the_floors_alone_decide_and_name_the_worst_class() -> None:
    y = _labels()
    challenger = _with_errors(y, np.arange(1, 160, 2))  # class "dog" (1) mostly wrong
    decision = decide_promotion(y, challenger, None, ["cat", "dog"], THRESHOLDS)
    assert [c.name for c in decision.criteria] == ["accuracy_floor", "class_recall_floor"]
    assert not decision.passed and decision.champion_accuracy is None
    assert "'dog'" in decision.reasons()[0] and "0.2000" in decision.reasons()[0]


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"alpha": 0.0}, "alpha"), ({"min_accuracy": 1.5}, "min_accuracy")],
)
def test_bad_thresholds_and_inputs_are_refused(fields: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GateThresholds(**{**THRESHOLDS.__dict__, **fields})
    with pytest.raises(ValueError, match="shape"):
        mcnemar_test(np.zeros(3), np.zeros(3), np.zeros(4))
