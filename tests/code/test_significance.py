"""McNemar's test against published worked examples, its switch from chi-square to the exact
binomial test, its ties and its refusals; and the table of every pair of several models."""

from __future__ import annotations

import json
import warnings
from dataclasses import asdict

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom, binomtest, chi2

from pipeline.evaluation.significance import (
    EXACT_BELOW,
    PAIRWISE_COLUMNS,
    mcnemar_test,
    pairwise_mcnemar,
)


def _paired(both: int, champion_only: int, challenger_only: int, neither: int):
    """Labels and two models' predictions whose paired 2x2 table has the given cells."""
    n = both + champion_only + challenger_only + neither
    y = np.ones(n, dtype=int)
    champion = np.array([1] * both + [1] * champion_only + [0] * challenger_only + [0] * neither)
    challenger = np.array([1] * both + [0] * champion_only + [1] * challenger_only + [0] * neither)
    return y, challenger, champion


def _corrected_chi_square(b: int, c: int) -> float:
    """McNemar's statistic with Edwards' continuity correction, from the formula."""
    return (abs(b - c) - 1) ** 2 / (b + c)


def test_chi_square_matches_wikipedias_worked_example() -> None:
    # Wikipedia, "McNemar's test", Examples, the second example: a = 59, b = 6, c = 16, d = 80
    # (n = 161). Published: with continuity correction chi2 = 3.68, p = 0.055 (without it,
    # 4.55 and p = 0.033). Forced to chi-square here (exact_below=0): 22 pairs would be exact.
    y, challenger, champion = _paired(both=59, champion_only=6, challenger_only=16, neither=80)
    result = mcnemar_test(y, challenger, champion, exact_below=0)
    assert (result.challenger_only_correct, result.champion_only_correct) == (16, 6)
    assert not result.exact
    expected = _corrected_chi_square(6, 16)  # 81 / 22
    assert result.statistic == pytest.approx(expected, rel=1e-12)
    assert result.p_value == pytest.approx(chi2.sf(expected, df=1), rel=1e-12)
    assert round(result.statistic, 2) == 3.68
    assert round(result.p_value, 3) == 0.055


def test_exact_test_matches_wikipedias_worked_example() -> None:
    # The same table; 22 discordant pairs, below the default 25, so the exact binomial test:
    # two-sided, 6 successes in 22 trials at p = 0.5. Wikipedia's published mid-P value
    # (0.035) is this exact p-value minus the probability of exactly 6, which ties the
    # number to the published example independently of scipy's binomtest.
    y, challenger, champion = _paired(both=59, champion_only=6, challenger_only=16, neither=80)
    result = mcnemar_test(y, challenger, champion)
    assert result.exact and result.statistic == 6
    assert result.p_value == pytest.approx(binomtest(6, 22, 0.5).pvalue, rel=1e-12)
    assert round(result.p_value - binom.pmf(6, 22, 0.5), 3) == 0.035
    assert round(result.p_value, 4) == 0.0525


def test_exact_test_matches_fagerlands_worked_example() -> None:
    # Fagerland, Lydersen and Laake (2013), "The McNemar test for binary matched-pairs data",
    # BMC Med Res Methodol 13:91, Table 1 (Bentur et al.: airway hyper-responsiveness before and
    # after stem cell transplantation in 21 children): n11 = 1, n12 = 1, n21 = 7, n22 = 12.
    # Their supplement: exact p = 2 * binomcdf(n12, n12 + n21, 0.5) = 2 * 9/256 = 0.0703.
    y, challenger, champion = _paired(both=1, champion_only=1, challenger_only=7, neither=12)
    result = mcnemar_test(y, challenger, champion)
    assert result.exact and result.statistic == 1
    assert result.p_value == pytest.approx(18 / 256, rel=1e-12)
    assert result.p_value == pytest.approx(binomtest(1, 8, 0.5).pvalue, rel=1e-12)
    forced = mcnemar_test(y, challenger, champion, exact_below=0)
    assert forced.statistic == pytest.approx(_corrected_chi_square(1, 7))  # 25 / 8


@pytest.mark.parametrize(
    ("exact_below", "exact"),
    [(0, False), (22, False), (23, True), (EXACT_BELOW, True), (1000, True)],
)
def test_exact_is_used_strictly_below_the_threshold(exact_below: int, exact: bool) -> None:
    """22 discordant pairs: exact when 22 < exact_below, chi-square otherwise."""
    y, challenger, champion = _paired(both=59, champion_only=6, challenger_only=16, neither=80)
    result = mcnemar_test(y, challenger, champion, exact_below=exact_below)
    assert result.exact is exact
    if exact:
        assert result.statistic == 6
        assert result.p_value == pytest.approx(binomtest(6, 22, 0.5).pvalue)
    else:
        assert result.statistic == pytest.approx(81 / 22)
        assert result.p_value == pytest.approx(chi2.sf(81 / 22, df=1))


def test_many_discordant_pairs_use_chi_square_by_default() -> None:
    # 25 discordant pairs (10 + 15) is not below the default 25.
    y, challenger, champion = _paired(both=50, champion_only=10, challenger_only=15, neither=5)
    result = mcnemar_test(y, challenger, champion)
    assert EXACT_BELOW == 25 and not result.exact
    assert result.statistic == pytest.approx(_corrected_chi_square(10, 15))  # 16 / 25
    assert result.p_value == pytest.approx(chi2.sf(16 / 25, df=1))


def test_the_test_is_symmetric_in_the_two_models() -> None:
    """Swapping the models swaps the counts; the two-sided p-value stays the same."""
    y, challenger, champion = _paired(both=59, champion_only=6, challenger_only=16, neither=80)
    for exact_below in (0, 25):
        forward = mcnemar_test(y, challenger, champion, exact_below)
        backward = mcnemar_test(y, champion, challenger, exact_below)
        assert (backward.challenger_only_correct, backward.champion_only_correct) == (6, 16)
        assert backward.p_value == pytest.approx(forward.p_value)


@pytest.mark.parametrize("exact_below", [0, 25])
def test_identical_predictions_give_p_one_without_warnings(exact_below: int) -> None:
    y, challenger, _ = _paired(both=80, champion_only=0, challenger_only=0, neither=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = mcnemar_test(y, challenger, challenger.copy(), exact_below=exact_below)
    assert result.p_value == 1.0 and result.statistic == 0.0
    assert (result.challenger_only_correct, result.champion_only_correct) == (0, 0)


@pytest.mark.parametrize("exact_below", [0, 25])
def test_a_tie_in_discordant_pairs_gives_p_one(exact_below: int) -> None:
    """b == c is no evidence either way; statsmodels' corrected chi-square would say p < 1."""
    y, challenger, champion = _paired(both=40, champion_only=15, challenger_only=15, neither=30)
    result = mcnemar_test(y, challenger, champion, exact_below=exact_below)
    assert (result.challenger_only_correct, result.champion_only_correct) == (15, 15)
    assert result.p_value == 1.0


def test_the_result_is_json_ready() -> None:
    """Plain Python numbers, so the gate's decision can go to JSON and MLflow as it is."""
    y, challenger, champion = _paired(both=59, champion_only=6, challenger_only=16, neither=80)
    for exact_below in (0, 25):
        record = asdict(mcnemar_test(y, challenger, champion, exact_below))
        assert json.loads(json.dumps(record)) == record
        assert type(record["challenger_only_correct"]) is int
        assert type(record["champion_only_correct"]) is int
        assert type(record["statistic"]) is float and type(record["p_value"]) is float
        assert type(record["exact"]) is bool


@pytest.mark.parametrize(
    ("arrays", "exact_below", "message"),
    [
        ((np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2))), 25, "y_true must be 1-D"),
        ((np.zeros(3), np.zeros((3, 1)), np.zeros(3)), 25, "challenger_pred must be 1-D"),
        ((np.zeros(0), np.zeros(0), np.zeros(0)), 25, "y_true is empty"),
        ((np.zeros(3), np.zeros(4), np.zeros(3)), 25, "challenger_pred has 4 labels"),
        ((np.zeros(3), np.zeros(3), np.zeros(2)), 25, "champion_pred has 2 labels"),
        ((np.zeros(3), np.zeros(3), np.zeros(3)), -1, "exact_below must be >= 0"),
        ((np.zeros(3), np.zeros(3), np.zeros(3)), 2.5, "exact_below must be an integer"),
    ],
)
def test_bad_inputs_are_refused(arrays: tuple, exact_below, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        mcnemar_test(*arrays, exact_below=exact_below)


def test_exact_test_matches_a_published_two_tailed_probability() -> None:
    # Calcugator's chi2_mcnemar tutorial (20 teenagers' views on the death penalty before and
    # after lectures): before/after table (1, 11; 3, 5), so 11 and 3 discordant pairs.
    # Published: "Two-tails probability: 0.057373046875", which is exactly
    # 2 * (C(14,0) + C(14,1) + C(14,2) + C(14,3)) / 2^14 = 2 * 470 / 16384.
    y, challenger, champion = _paired(both=1, champion_only=3, challenger_only=11, neither=5)
    result = mcnemar_test(y, challenger, champion)
    assert result.exact and result.statistic == 3
    assert result.p_value == pytest.approx(940 / 16384, rel=1e-12)
    assert result.p_value == pytest.approx(0.057373046875, rel=1e-12)


def test_pairwise_matches_wikipedias_first_example() -> None:
    # Wikipedia, "McNemar's test", Examples, the first example: 314 patients, disease present
    # or absent before (rows) and after (columns) a treatment: a = 101, b = 121, c = 59,
    # d = 33. Published: the uncorrected statistic (121 - 59)^2 / (121 + 59) = 21.35, "extremely
    # unlikely" under the null hypothesis (p < 0.001). "before" plays model a, "after" model b.
    # With 180 discordant pairs the test is chi-square with continuity correction:
    # (|121 - 59| - 1)^2 / 180 = 3721 / 180.
    y, before, after = _paired(both=101, champion_only=59, challenger_only=121, neither=33)
    table = pairwise_mcnemar(y, {"before": before, "after": after}, alpha=0.05)
    assert len(table) == 1
    row = table.iloc[0]
    assert (row.model_a, row.model_b) == ("before", "after")
    b, c = int(row.a_only_correct), int(row.b_only_correct)
    assert (b, c) == (121, 59)
    assert (b - c) ** 2 / (b + c) == pytest.approx(21.35, abs=0.01)
    assert not row.exact
    assert row.statistic == pytest.approx(3721 / 180, rel=1e-12)
    assert row.p_value == pytest.approx(chi2.sf(3721 / 180, df=1), rel=1e-12)
    assert row.p_value < 0.001
    assert row.significant and row.better == "before"


def _three_models() -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Labels and three models' predictions with chosen right/wrong patterns per image.

    Patterns (A, B, C right?), with counts: (1, 1, 1) x 10, (1, 0, 0) x 6, (1, 0, 1) x 1,
    (0, 1, 0) x 1, (0, 0, 0) x 2. So, by hand:
      A vs B: A alone right 6 + 1 = 7, B alone 1: exact p = 2 (C(8,0) + C(8,1)) / 2^8 = 18/256
      A vs C: A alone 6, C alone 0: exact p = 2 / 2^6 = 1/32
      B vs C: B alone 1, C alone 1: a tie, p = 1
    """
    patterns = [((1, 1, 1), 10), ((1, 0, 0), 6), ((1, 0, 1), 1), ((0, 1, 0), 1), ((0, 0, 0), 2)]
    right = np.array([pattern for pattern, count in patterns for _ in range(count)], dtype=bool)
    y = np.arange(len(right)) % 3
    # A wrong prediction is the next class: any label but the true one.
    predictions = {
        name: np.where(right[:, index], y, (y + 1) % 3) for index, name in enumerate("ABC")
    }
    return y, predictions


def test_pairwise_mcnemar_on_three_models_by_hand() -> None:
    y, predictions = _three_models()
    table = pairwise_mcnemar(y, predictions, alpha=0.05)
    assert list(table.columns) == list(PAIRWISE_COLUMNS)
    expected = pd.DataFrame(
        [
            ["A", "B", 7, 1, 1.0, 18 / 256, True, False, ""],
            ["A", "C", 6, 0, 0.0, 1 / 32, True, True, "A"],
            ["B", "C", 1, 1, 0.0, 1.0, True, False, ""],
        ],
        columns=list(PAIRWISE_COLUMNS),
    )
    pd.testing.assert_frame_equal(table, expected, check_dtype=False, rtol=1e-12)
    # A looser alpha makes A's lead over B significant too.
    loose = pairwise_mcnemar(y, predictions, alpha=0.1)
    assert loose.significant.tolist() == [True, True, False]
    assert loose.better.tolist() == ["A", "A", ""]


def test_pairwise_mcnemar_follows_the_order_of_the_models() -> None:
    """Pairs come in the dict's order, a before b; `better` names b when b is ahead."""
    y, predictions = _three_models()
    reordered = {name: predictions[name] for name in "CBA"}
    table = pairwise_mcnemar(y, reordered, alpha=0.05)
    assert list(zip(table.model_a, table.model_b, strict=True)) == [
        ("C", "B"),
        ("C", "A"),
        ("B", "A"),
    ]
    row = table.iloc[1]
    assert (row.a_only_correct, row.b_only_correct) == (0, 6)
    assert row.significant and row.better == "A"
    assert table.p_value.tolist() == pytest.approx([1.0, 1 / 32, 18 / 256])


@pytest.mark.parametrize("models", [0, 1])
def test_pairwise_mcnemar_of_fewer_than_two_models_is_empty(models: int) -> None:
    y, predictions = _three_models()
    table = pairwise_mcnemar(y, dict(list(predictions.items())[:models]), alpha=0.05)
    assert table.empty and list(table.columns) == list(PAIRWISE_COLUMNS)
    assert table.dtypes["p_value"] == np.float64 and table.dtypes["significant"] == np.dtype(bool)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), True, "0.05"])
def test_pairwise_mcnemar_refuses_bad_alpha(alpha) -> None:
    y, predictions = _three_models()
    with pytest.raises(ValueError, match="alpha must be"):
        pairwise_mcnemar(y, predictions, alpha=alpha)


def test_pairwise_mcnemar_names_the_model_with_bad_predictions() -> None:
    y, predictions = _three_models()
    with pytest.raises(ValueError, match=r"predictions\['B'\] has 19 labels but y_true has 20"):
        pairwise_mcnemar(y, {**predictions, "B": predictions["B"][:-1]}, alpha=0.05)
    with pytest.raises(ValueError, match=r"predictions\['C'\] must be 1-D"):
        pairwise_mcnemar(y, {**predictions, "C": predictions["C"][:, None]}, alpha=0.05)
    with pytest.raises(ValueError, match="y_true is empty"):
        pairwise_mcnemar(np.array([]), {}, alpha=0.05)
