"""McNemar's test: is one classifier really better than another on the same test images?

Only the discordant pairs count (images one model gets right and the other wrong). With few of
them the exact binomial test is used; with many, the chi-square statistic with continuity
correction (statsmodels' default). pairwise_mcnemar runs it on every pair of several models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

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
    # Imported here: statsmodels costs almost a second at import, in every compare and promote.
    from statsmodels.stats.contingency_tables import mcnemar

    result = mcnemar(table, exact=exact, correction=True)
    return McNemarResult(
        challenger_only, champion_only, float(result.statistic), float(result.pvalue), exact
    )


# The columns of pairwise_mcnemar, in order, and their types (also of an empty frame).
_PAIRWISE_DTYPES = {
    "model_a": object,
    "model_b": object,
    "a_only_correct": "int64",
    "b_only_correct": "int64",
    "statistic": "float64",
    "p_value": "float64",
    "exact": bool,
    "significant": bool,
    "better": object,
}


PAIRWISE_COLUMNS = tuple(_PAIRWISE_DTYPES)


def pairwise_mcnemar(
    y_true: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    alpha: float,
    exact_below: int = EXACT_BELOW,
) -> pd.DataFrame:
    """McNemar's test on every unordered pair of models scored on the same labels: one row per
    pair, model_a before model_b in the order of `predictions`.

    `significant` is p < alpha; `better` names the model right alone more often when the
    difference is significant, else "". Each p-value is that pair's own: with many models,
    some pairs come out significant by chance alone, and no correction is applied here.
    Fewer than two models give an empty frame with the same columns.
    """
    if isinstance(alpha, bool) or not isinstance(alpha, int | float | np.number):
        raise ValueError(f"alpha must be a number, got {alpha!r}")
    # Written so that NaN fails the check.
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    y_true = _labels("y_true", y_true)
    # Checked here too, so that a mismatch names the model rather than mcnemar_test's roles.
    for name, values in predictions.items():
        labels = _labels(f"predictions[{name!r}]", values)
        if len(labels) != len(y_true):
            raise ValueError(
                f"predictions[{name!r}] has {len(labels)} labels but y_true has {len(y_true)}: "
                "every model must be scored on the same test images"
            )
    rows = []
    for name_a, name_b in combinations(predictions, 2):
        test = mcnemar_test(y_true, predictions[name_a], predictions[name_b], exact_below)
        significant = test.p_value < alpha
        if significant:
            ahead = test.challenger_only_correct > test.champion_only_correct
            better = str(name_a) if ahead else str(name_b)
        else:
            better = ""
        rows.append(
            {
                "model_a": str(name_a),
                "model_b": str(name_b),
                "a_only_correct": test.challenger_only_correct,
                "b_only_correct": test.champion_only_correct,
                "statistic": test.statistic,
                "p_value": test.p_value,
                "exact": test.exact,
                "significant": significant,
                "better": better,
            }
        )
    if not rows:
        return pd.DataFrame(
            {column: pd.Series(dtype=dtype) for column, dtype in _PAIRWISE_DTYPES.items()}
        )
    return pd.DataFrame(rows, columns=PAIRWISE_COLUMNS).astype(_PAIRWISE_DTYPES)


def _labels(name: str, values) -> np.ndarray:
    """`values` as a non-empty 1-D array, or a ValueError naming the argument."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per image), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: there are no test images to compare on")
    return array
