"""McNemar's test: is one classifier really better than another on the same test images?

Only the discordant pairs count (images one model gets right and the other wrong). With few of
them the exact binomial test is used; with many, the chi-square statistic with continuity
correction (statsmodels' default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar

# Below this many discordant pairs the chi-square approximation is poor: use the exact test.
EXACT_BELOW = 25


@dataclass(frozen=True)
class McNemarResult:
    challenger_only_correct: int
    """Pairs the challenger gets right and the champion wrong."""
    champion_only_correct: int
    """The reverse."""
    statistic: float
    """Exact test: the smaller discordant count; chi-square: (|b - c| - 1)^2 / (b + c)."""
    p_value: float
    """Two-sided: a small p says the models differ, not which one is better."""
    exact: bool
    """True: exact binomial test; False: chi-square with continuity correction."""


def mcnemar_test(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray,
    exact_below: int = EXACT_BELOW,
) -> McNemarResult:
    """McNemar's test on two models' predictions of the same labels (exact binomial test below
    `exact_below` discordant pairs, else chi-square with continuity correction)."""
    y_true = _labels("y_true", y_true)
    challenger_pred = _labels("challenger_pred", challenger_pred)
    champion_pred = _labels("champion_pred", champion_pred)
    for name, predictions in (
        ("challenger_pred", challenger_pred),
        ("champion_pred", champion_pred),
    ):
        if len(predictions) != len(y_true):
            raise ValueError(
                f"{name} has {len(predictions)} labels but y_true has {len(y_true)}: both models "
                "must be scored on the same test images"
            )
    if isinstance(exact_below, bool) or not isinstance(exact_below, int | np.integer):
        raise ValueError(f"exact_below must be an integer, got {exact_below!r}")
    if exact_below < 0:
        raise ValueError(f"exact_below must be >= 0, got {exact_below}")
    challenger_right = challenger_pred == y_true
    champion_right = champion_pred == y_true
    challenger_only = int(np.sum(challenger_right & ~champion_right))
    champion_only = int(np.sum(champion_right & ~challenger_right))
    exact = challenger_only + champion_only < exact_below
    if challenger_only == champion_only:
        # No evidence either way. With zero discordant pairs statsmodels would divide by zero;
        # with a tie, its continuity correction squares |b - c| - 1 = -1 into a statistic > 0
        # and a p-value below 1. The exact test gives p = 1 here, and so do we for both.
        return McNemarResult(challenger_only, champion_only, 0.0, 1.0, exact)
    # Rows: champion right, wrong; columns: challenger right, wrong.
    table = [
        [int(np.sum(champion_right & challenger_right)), champion_only],
        [challenger_only, int(np.sum(~champion_right & ~challenger_right))],
    ]
    result = mcnemar(table, exact=exact, correction=True)
    return McNemarResult(
        challenger_only, champion_only, float(result.statistic), float(result.pvalue), exact
    )


def _labels(name: str, values) -> np.ndarray:
    """`values` as a non-empty 1-D array, or a ValueError naming the argument."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per image), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: there are no test images to compare on")
    return array
