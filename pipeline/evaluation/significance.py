"""McNemar's test: is one classifier really better than another on the same test images?

Only the discordant pairs count (images one model gets right and the other wrong). With few of
them the exact binomial test is used; with many, the chi-square statistic with continuity
correction (statsmodels' default).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from statsmodels.stats.contingency_tables import mcnemar

EXACT_BELOW = 25


@dataclass(frozen=True)
class McNemarResult:
    challenger_only_correct: int
    """Pairs the challenger gets right and the champion wrong."""
    champion_only_correct: int
    """The reverse."""
    statistic: float
    p_value: float
    exact: bool
    """True: exact binomial test; False: chi-square with continuity correction."""


def mcnemar_test(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray,
    exact_below: int = EXACT_BELOW,
) -> McNemarResult:
    """McNemar's test on two models' predictions of the same labels."""
    y_true, challenger_pred, champion_pred = (
        np.asarray(a) for a in (y_true, challenger_pred, champion_pred)
    )
    if y_true.ndim != 1 or y_true.size == 0:
        raise ValueError("y_true must be a non-empty 1-D array of labels")
    if challenger_pred.shape != y_true.shape or champion_pred.shape != y_true.shape:
        raise ValueError(
            f"predictions must match y_true's shape {y_true.shape}: challenger "
            f"{challenger_pred.shape}, champion {champion_pred.shape}"
        )
    challenger_right = challenger_pred == y_true
    champion_right = champion_pred == y_true
    challenger_only = int(np.sum(challenger_right & ~champion_right))
    champion_only = int(np.sum(champion_right & ~challenger_right))
    discordant = challenger_only + champion_only
    exact = discordant < exact_below
    if discordant == 0:
        # Identical on every image: no evidence either way (statsmodels would divide by zero).
        return McNemarResult(0, 0, 0.0, 1.0, exact)
    table = [
        [int(np.sum(challenger_right & champion_right)), champion_only],
        [challenger_only, int(np.sum(~challenger_right & ~champion_right))],
    ]
    result = mcnemar(table, exact=exact, correction=True)
    return McNemarResult(
        challenger_only, champion_only, float(result.statistic), float(result.pvalue), exact
    )
