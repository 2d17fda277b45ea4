"""Drift tests: has a window of served traffic moved away from the model's monitoring
reference? Three two-sample tests (predicted classes, confidences, embeddings), each at a
Bonferroni share of alpha, and one JSON-ready verdict that says which fired and why."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from pipeline.errors import DataError
from pipeline.monitoring.records import PREDICTED_CLASS, PROBABILITY, window_embeddings
from pipeline.monitoring.reference import Reference

logger = logging.getLogger(__name__)

CLASS_SHIFT = "class_shift"
CONFIDENCE_SHIFT = "confidence_shift"
EMBEDDING_SHIFT = "embedding_shift"
TESTS: tuple[str, ...] = (CLASS_SHIFT, CONFIDENCE_SHIFT, EMBEDDING_SHIFT)

DEFAULT_ALPHA = 0.01
DEFAULT_MIN_RECORDS = 30
DEFAULT_RESAMPLES = 1000
MAX_REFERENCE_ROWS = 1000
"""The embedding test compares against at most this many reference rows: its cost grows with
the square of the pooled sample, and a thousand rows describe a reference well enough."""

# The permutation test's kernel products are computed in batches of permutations that keep
# the working arrays (per permutation: scipy's index and data rows, a 0/1 membership row and
# its product with the kernel matrix, each a float or int64 per pooled row) under this size.
_BATCH_BYTES = 200 << 20


@dataclass(frozen=True)
class TestResult:
    """One drift test's outcome; `detail` is one sentence for a person."""

    # pytest would otherwise try to collect this class from test modules that import it.
    __test__ = False

    name: str
    statistic: float | None
    p_value: float | None
    threshold: float | None
    fired: bool
    detail: str
    skipped: bool = False


def class_shift(
    window_predicted: np.ndarray,
    reference_predicted: np.ndarray,
    classes: tuple[str, ...],
    threshold: float,
) -> TestResult:
    """Chi-square test of homogeneity of the predicted-class counts (window against
    reference, class indices into `classes`): has the mix of answers changed?"""
    count = len(classes)
    window_counts = np.bincount(np.asarray(window_predicted, dtype=np.int64), minlength=count)
    reference_counts = np.bincount(np.asarray(reference_predicted, dtype=np.int64), minlength=count)
    # A class neither sample predicts adds a column of zeros, whose expected count of zero
    # the test cannot divide by.
    seen = (window_counts + reference_counts) > 0
    if seen.sum() < 2:
        return TestResult(
            CLASS_SHIFT,
            0.0,
            1.0,
            threshold,
            False,
            "Both samples predict the same single class, so the class mix cannot differ.",
        )
    table = np.stack([window_counts[seen], reference_counts[seen]])
    result = stats.chi2_contingency(table)
    p_value = float(result.pvalue)
    window_shares = window_counts / max(window_counts.sum(), 1)
    reference_shares = reference_counts / max(reference_counts.sum(), 1)
    moved = int(np.argmax(np.abs(window_shares - reference_shares)))
    detail = (
        f"The class predicted most differently is '{classes[moved]}' "
        f"({reference_shares[moved]:.1%} of the reference, {window_shares[moved]:.1%} of the "
        f"window); chi-square p = {p_value:.3g} against a threshold of {threshold:.3g}."
    )
    return TestResult(
        CLASS_SHIFT, float(result.statistic), p_value, threshold, p_value < threshold, detail
    )


def confidence_shift(
    window_confidences: np.ndarray, reference_confidences: np.ndarray, threshold: float
) -> TestResult:
    """Two-sample Kolmogorov-Smirnov test on the top probabilities: is the model more or less
    sure of its answers than on its test split?"""
    window = np.asarray(window_confidences, dtype=np.float64)
    reference = np.asarray(reference_confidences, dtype=np.float64)
    result = stats.ks_2samp(window, reference)
    p_value = float(result.pvalue)
    detail = (
        f"The median confidence is {np.median(reference):.3f} on the reference and "
        f"{np.median(window):.3f} in the window (largest gap between their distributions "
        f"{result.statistic:.3f}); Kolmogorov-Smirnov p = {p_value:.3g} against a threshold "
        f"of {threshold:.3g}."
    )
    return TestResult(
        CONFIDENCE_SHIFT,
        float(result.statistic),
        p_value,
        threshold,
        p_value < threshold,
        detail,
    )


def embedding_shift(
    window_embeddings: np.ndarray,
    reference_embeddings: np.ndarray,
    threshold: float,
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    max_reference: int = MAX_REFERENCE_ROWS,
) -> TestResult:
    """Maximum mean discrepancy (unbiased MMD², Gaussian kernel, median-heuristic bandwidth)
    between the embeddings, with a permutation test: do the inputs look different to the
    model, even where its answers do not?"""
    window = np.asarray(window_embeddings, dtype=np.float64)
    reference = np.asarray(reference_embeddings, dtype=np.float64)
    if window.ndim != 2 or reference.ndim != 2 or window.shape[1] != reference.shape[1]:
        raise DataError(
            f"the window's embeddings {window.shape} and the reference's {reference.shape} "
            "differ in width: compare records of the model version the reference belongs to"
        )
    if len(window) < 2 or len(reference) < 2:
        raise ValueError(
            f"the embedding test needs at least 2 rows on each side, got {len(window)} "
            f"in the window and {len(reference)} in the reference"
        )
    if 1 / (n_resamples + 1) >= threshold:
        # The smallest p-value a permutation test can give is 1 / (n_resamples + 1): with too
        # few resamples the test could never fire.
        raise ValueError(
            f"n_resamples = {n_resamples} cannot give a p-value below the threshold "
            f"{threshold:.3g}; use at least {math.ceil(1 / threshold)}"
        )
    rng = np.random.default_rng(seed)
    if len(reference) > max_reference:
        keep = np.sort(rng.choice(len(reference), size=max_reference, replace=False))
        reference = reference[keep]

    pooled = np.concatenate([window, reference])
    kernel = _gaussian_kernel(pooled)
    statistic = _mmd_statistic(kernel)
    total = len(pooled)
    batch = max(1, min(n_resamples, _BATCH_BYTES // (total * 8 * 4)))
    result = stats.permutation_test(
        (np.arange(len(window)), np.arange(len(window), total)),
        statistic,
        permutation_type="independent",
        vectorized=True,
        n_resamples=n_resamples,
        batch=batch,
        alternative="greater",
        rng=rng,
    )
    value = float(result.statistic)
    p_value = float(result.pvalue)
    exceeded = int(np.count_nonzero(result.null_distribution >= value))
    detail = (
        f"The window's embeddings differ from the reference's by MMD² {value:.4f}, reached "
        f"by {exceeded} of {n_resamples} random splits of the pooled sample; permutation "
        f"p = {p_value:.3g} against a threshold of {threshold:.3g}."
    )
    return TestResult(EMBEDDING_SHIFT, value, p_value, threshold, p_value < threshold, detail)


def detect_drift(
    window_records: pd.DataFrame,
    reference: Reference,
    *,
    alpha: float = DEFAULT_ALPHA,
    seed: int = 0,
    min_records: int = DEFAULT_MIN_RECORDS,
) -> dict[str, Any]:
    """Run the drift tests on a window of records (read_window's frame) against `reference`,
    each at alpha / (tests run), and return the JSON-ready verdict: drift, the tests that
    fired, each test's outcome, the record count, alpha and the reason in words."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1 (exclusive), got {alpha}")
    if min_records < 2:
        raise ValueError(f"min_records must be at least 2, got {min_records}")
    if len(reference.predicted) == 0:
        raise DataError("the monitoring reference has no rows; register the model again")
    count = len(window_records)
    verdict: dict[str, Any] = {
        "drift": False,
        "fired": [],
        "tests": {},
        "records": count,
        "alpha": alpha,
        "reason": "",
    }
    if count < min_records:
        verdict["reason"] = (
            f"Not enough traffic to test: {count} records in the window, {min_records} needed."
        )
        return verdict

    window_predicted = _class_indices(window_records[PREDICTED_CLASS], reference.classes)
    window_confidences = window_records[PROBABILITY].to_numpy(dtype=np.float64)
    embeddings = window_embeddings(window_records)
    skip_embedding = _embedding_skip_reason(embeddings, reference, count, min_records)
    threshold = alpha / (2 if skip_embedding else 3)

    results = [
        class_shift(window_predicted, reference.predicted, reference.classes, threshold),
        confidence_shift(window_confidences, reference.confidences, threshold),
    ]
    if skip_embedding:
        results.append(
            TestResult(
                EMBEDDING_SHIFT,
                None,
                None,
                None,
                False,
                f"Skipped: {skip_embedding}; the other tests share alpha.",
                skipped=True,
            )
        )
    else:
        results.append(
            embedding_shift(
                embeddings,
                reference.embeddings,
                threshold,
                n_resamples=resamples_for(threshold),
                seed=seed,
            )
        )

    fired = [result.name for result in results if result.fired]
    verdict["drift"] = bool(fired)
    verdict["fired"] = fired
    verdict["tests"] = {result.name: dataclasses.asdict(result) for result in results}
    tests_run = sum(not result.skipped for result in results)
    if fired:
        verdict["reason"] = (
            f"Drift: {', '.join(fired)} fired (p-value below alpha {alpha:g} split over "
            f"{tests_run} tests, {threshold:.3g} each)."
        )
    else:
        verdict["reason"] = (
            f"No drift: no test's p-value fell below alpha {alpha:g} split over {tests_run} "
            f"tests ({threshold:.3g} each)."
        )
    logger.debug("monitor: %s", verdict["reason"])
    return verdict


def _class_indices(names: pd.Series, classes: tuple[str, ...]) -> np.ndarray:
    """The window's predicted class names as indices into the reference's classes."""
    index = {name: position for position, name in enumerate(classes)}
    unknown = sorted(set(names.astype(str)) - index.keys())
    if unknown:
        raise DataError(
            f"the window predicts class '{unknown[0]}', which is not one of the reference's "
            f"classes {list(classes)}: compare records of the model version the reference "
            "belongs to"
        )
    return np.array([index[name] for name in names.astype(str)], dtype=np.int64)


def resamples_for(threshold: float) -> int:
    """The permutations the embedding test runs at `threshold`: the default, or more where
    the smallest p-value it can give, 1 / (n + 1), would not lie well below the threshold
    (a small alpha would otherwise leave a test that can never fire)."""
    return max(DEFAULT_RESAMPLES, math.ceil(3 / threshold))


def _embedding_skip_reason(
    embeddings: np.ndarray | None, reference: Reference, count: int, min_records: int
) -> str | None:
    """Why the embedding test cannot run on this window, or None when it can."""
    if reference.embeddings.ndim != 2 or reference.embeddings.shape[1] == 0:
        return "the reference has no embeddings (a model without a projection)"
    if embeddings is None:
        return "the window's records carry no embeddings (a model without a projection)"
    if len(embeddings) < min_records:
        return (
            f"only {len(embeddings)} of the window's {count} records carry embeddings, "
            f"{min_records} needed"
        )
    return None


def _gaussian_kernel(points: np.ndarray) -> np.ndarray:
    """The Gaussian kernel matrix exp(-d² / (2 s²)) of `points`, s the median pairwise
    distance of the pooled sample (the median heuristic)."""
    norms = np.einsum("ij,ij->i", points, points)
    squared = np.maximum(norms[:, None] + norms[None, :] - 2.0 * points @ points.T, 0.0)
    upper = squared[np.triu_indices(len(points), k=1)]
    scale = float(np.median(upper))
    if scale <= 0.0:
        # Over half the pairs coincide: the mean distance still measures the spread.
        scale = float(upper.mean())
    if scale <= 0.0:
        # All points are the same: any bandwidth gives a kernel of ones and MMD² of 0.
        scale = 1.0
    return np.exp(-squared / (2.0 * scale))


def _mmd_statistic(kernel: np.ndarray):
    """The unbiased MMD² between two samples given as index arrays into `kernel`'s rows,
    vectorised over leading (permutation) axes as scipy's permutation_test calls it."""
    total_sum = float(kernel.sum())
    size = len(kernel)

    def statistic(first: np.ndarray, second: np.ndarray, axis: int = -1) -> np.ndarray:
        first = np.asarray(first, dtype=np.int64)
        single = first.ndim == 1
        first = np.atleast_2d(first)
        m = first.shape[-1]
        n = size - m
        # Sums of kernel blocks through a 0/1 membership vector a of the first sample:
        # a'Ka is the within-first sum, a'K1 - a'Ka the cross sum, and the rest is the
        # within-second sum; one matrix product per batch instead of gathering blocks.
        membership = np.zeros((first.shape[0], size))
        np.put_along_axis(membership, first, 1.0, axis=-1)
        product = membership @ kernel
        within_first = np.einsum("bi,bi->b", product, membership)
        cross = product.sum(axis=-1) - within_first
        within_second = total_sum - within_first - 2.0 * cross
        # The diagonal (each point with itself, a kernel value of 1) is left out: unbiased.
        value = (
            (within_first - m) / (m * (m - 1))
            + (within_second - n) / (n * (n - 1))
            - 2.0 * cross / (m * n)
        )
        return value[0] if single else value

    return statistic
