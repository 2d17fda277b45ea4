"""The promotion gate's criteria: pure functions of labels and predictions (no MLflow).

A challenger replaces the champion only when it passes every criterion on the same, current
test split: an accuracy floor, a recall floor for every class, a minimum improvement over the
champion, and McNemar's test in its favour. With no champion, the two floors alone decide.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from pipeline.evaluation.significance import McNemarResult, mcnemar_test


@dataclass(frozen=True)
class GateThresholds:
    min_accuracy: float
    min_improvement: float
    alpha: float
    min_class_recall: float

    def __post_init__(self) -> None:
        for name in ("min_accuracy", "min_improvement", "min_class_recall"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    observed: float
    threshold: float
    detail: str


_NUMBERS = ("passed", "observed", "threshold")


@dataclass(frozen=True)
class Decision:
    passed: bool
    criteria: tuple[Criterion, ...]
    challenger_accuracy: float
    champion_accuracy: float | None
    mcnemar: McNemarResult | None = None

    def reasons(self) -> list[str]:
        """Why: the failed criteria's details, or every criterion's when all passed."""
        failed = [criterion.detail for criterion in self.criteria if not criterion.passed]
        return failed or [criterion.detail for criterion in self.criteria]

    def to_dict(self) -> dict:
        """JSON-ready, and DVC-metrics-ready: numbers and booleans per criterion, the sentences
        in a list (which `dvc metrics show` leaves out of its table)."""
        criteria = {}
        for criterion in self.criteria:
            entry = {key: value for key, value in asdict(criterion).items() if key in _NUMBERS}
            if criterion.name == "mcnemar" and self.mcnemar is not None:
                entry.update(asdict(self.mcnemar))
            criteria[criterion.name] = entry
        return {
            "passed": self.passed,
            "criteria": criteria,
            "explanations": [criterion.detail for criterion in self.criteria],
            "challenger_accuracy": self.challenger_accuracy,
            "champion_accuracy": self.champion_accuracy,
        }


def decide_promotion(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    classes: Sequence[str],
    thresholds: GateThresholds,
) -> Decision:
    """Judge the challenger (and, when there is one, against the champion)."""
    y_true, challenger_pred = np.asarray(y_true), np.asarray(challenger_pred)
    if y_true.ndim != 1 or y_true.size == 0 or challenger_pred.shape != y_true.shape:
        raise ValueError("y_true and the challenger's predictions must be equal-length, 1-D")
    accuracy = float(np.mean(challenger_pred == y_true))
    criteria = [
        Criterion(
            "accuracy_floor",
            accuracy >= thresholds.min_accuracy,
            accuracy,
            thresholds.min_accuracy,
            f"test accuracy {accuracy:.4f} "
            + ("reaches" if accuracy >= thresholds.min_accuracy else "is below")
            + f" the floor {thresholds.min_accuracy:.4f}",
        ),
        _recall_floor(y_true, challenger_pred, classes, thresholds.min_class_recall),
    ]
    champion_accuracy = None
    test = None
    if champion_pred is not None:
        champion_pred = np.asarray(champion_pred)
        champion_accuracy = float(np.mean(champion_pred == y_true))
        gain = accuracy - champion_accuracy
        criteria.append(
            Criterion(
                "improvement",
                gain >= thresholds.min_improvement,
                gain,
                thresholds.min_improvement,
                f"accuracy {accuracy:.4f} vs the champion's {champion_accuracy:.4f}: a gain of "
                f"{gain:+.4f}, "
                + ("at least" if gain >= thresholds.min_improvement else "less than")
                + f" the {thresholds.min_improvement:.4f} required",
            )
        )
        test = mcnemar_test(y_true, challenger_pred, champion_pred)
        better = test.challenger_only_correct > test.champion_only_correct
        significant = better and test.p_value < thresholds.alpha
        kind = "exact binomial" if test.exact else "chi-square"
        criteria.append(
            Criterion(
                "mcnemar",
                significant,
                test.p_value,
                thresholds.alpha,
                f"McNemar ({kind}): challenger alone right on {test.challenger_only_correct}, "
                f"champion alone on {test.champion_only_correct}, p = {test.p_value:.4g} "
                + (
                    f"< alpha {thresholds.alpha}"
                    if significant
                    else f"(needs p < {thresholds.alpha} in the challenger's favour)"
                ),
            )
        )
    return Decision(
        passed=all(criterion.passed for criterion in criteria),
        criteria=tuple(criteria),
        challenger_accuracy=accuracy,
        champion_accuracy=champion_accuracy,
        mcnemar=test,
    )


def _recall_floor(
    y_true: np.ndarray, predictions: np.ndarray, classes: Sequence[str], floor: float
) -> Criterion:
    # A class with no test image has no recall: it is left out rather than counted as 0 (the
    # data gate already fails a split that lacks a class).
    recalls = {
        name: float(np.mean(predictions[y_true == index] == index))
        for index, name in enumerate(classes)
        if np.any(y_true == index)
    }
    worst = min(recalls, key=recalls.get)
    lowest = recalls[worst]
    return Criterion(
        "class_recall_floor",
        lowest >= floor,
        lowest,
        floor,
        f"the lowest class recall, of class {worst!r}, is {lowest:.4f}, "
        + ("at least" if lowest >= floor else "below")
        + f" the floor {floor:.4f}",
    )
