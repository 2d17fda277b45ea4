"""Calibration: whether a probability of 0.9 is right 90% of the time, and the temperature that
makes it so. The train stage fits the temperature on val and folds it into the model
(calibrate_model); the evaluate stage measures with the rest, NumPy and SciPy only.

- Expected calibration error (Guo et al. 2017, "On Calibration of Modern Neural Networks"):
  the top-label confidences in ECE_BINS equal-width bins ((0, 1/15], (1/15, 2/15], ...), and
  the average over bins, weighted by their share of the images, of |accuracy - confidence|.
- Brier score, multi-class: the mean over images of the sum over classes of (p - one-hot)^2,
  from 0 (certain and right) to 2 (certain and wrong). A two-class model's one sigmoid unit
  counts as its two columns [1 - p, p], so its score is twice the binary Brier score.
- Negative log-likelihood: the mean of -log p(true class); the evaluation's `test_loss`.
- Temperature scaling: one scalar T > 0 divides the output layer's logits, fitted on the val
  split by minimising the NLL; it never changes which class is most probable.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ModelError
from pipeline.evaluation.metrics import (
    check_class_indices,
    predict_outputs,
    predict_probabilities,
)
from pipeline.models.outputs import class_probabilities

logger = logging.getLogger(__name__)

ECE_BINS = 15
"""Equal-width confidence bins of the expected calibration error (Guo et al. 2017)."""
TEMPERATURE_BOUNDS = (0.05, 20.0)
"""The temperatures the fit searches between: far outside them a model is broken, not
over- or under-confident, and a temperature would hide it."""
_PROBABILITY_FLOOR = float(np.finfo(np.float32).eps)
"""The smallest probability an NLL reads: the float32 outputs of a model round below it, and
one image may not weigh more than -log(eps) = 15.9 nats (probability_metrics' test_loss)."""
_LOG_FLOOR = float(np.finfo(np.float32).tiny)
"""The smallest probability taken a log of when probabilities are turned back into logits: a
float32 output that underflowed to 0 becomes this, about e^-87."""


@dataclass(frozen=True)
class ReliabilityBins:
    """Top-label confidence per equal-width bin: what the reliability diagram draws and the
    ECE sums. Bins without images hold NaN accuracy and confidence."""

    edges: np.ndarray
    """ECE_BINS + 1 edges from 0 to 1; bin m holds confidences in (edges[m], edges[m + 1]]."""
    counts: np.ndarray
    accuracy: np.ndarray
    """The share of the bin's images whose most probable class is the true one."""
    confidence: np.ndarray
    """The mean top-label confidence of the bin's images."""

    @property
    def images(self) -> int:
        return int(self.counts.sum())

    @property
    def ece(self) -> float:
        """Expected calibration error: the sum over bins of (count / images) x the gap
        |accuracy - confidence|."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float(np.sum(self.counts[filled] * gaps) / max(self.images, 1))


def reliability_bins(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> ReliabilityBins:
    """Bin the images by their top-label confidence (the largest class probability) into `bins`
    equal-width bins, right edges included, and measure each bin's accuracy and mean confidence.
    `probabilities` has one column per class, or is a sigmoid model's (N, 1)."""
    table, y_true = _checked(y_true, probabilities)
    if isinstance(bins, bool) or not isinstance(bins, int | np.integer) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    confidence = table.max(axis=1)
    correct = table.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    # side="left": a confidence equal to an edge belongs to the bin it closes, (lo, hi]; a
    # confidence of 0 (only an empty table row could have one) goes to the first bin.
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct, minlength=bins) / counts
        mean_confidence = np.bincount(index, weights=confidence, minlength=bins) / counts
    return ReliabilityBins(edges, counts, accuracy, mean_confidence)


def expected_calibration_error(
    y_true: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS
) -> float:
    """The expected calibration error over `bins` equal-width top-label confidence bins (0 for
    a perfectly calibrated model, up to 1 for one certain and always wrong)."""
    return reliability_bins(y_true, probabilities, bins).ece


def brier_score(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Multi-class Brier score: mean over images of sum over classes of (p - one-hot)^2, in
    [0, 2]. A sigmoid model's (N, 1) counts as its two columns [1 - p, p]."""
    table, y_true = _checked(y_true, probabilities)
    onehot = np.zeros_like(table)
    onehot[np.arange(len(y_true)), y_true] = 1.0
    return float(np.mean(np.sum((table - onehot) ** 2, axis=1)))


def negative_log_likelihood(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """Mean of -log p(true class), each probability floored at float32's eps (so one image
    weighs at most 15.9 nats): the evaluation's `test_loss`."""
    table, y_true = _checked(y_true, probabilities)
    true_probability = np.clip(table[np.arange(len(y_true)), y_true], _PROBABILITY_FLOOR, 1.0)
    return float(-np.log(true_probability).mean())


def rescaled_probabilities(probabilities: np.ndarray, factor: float) -> np.ndarray:
    """softmax(factor x log p): the probabilities of the same model with its logits multiplied
    by `factor`. A calibrated model's probabilities with factor = T are the model's before
    temperature scaling (logits z/T times T); a sigmoid's [1 - p, p] gives sigmoid(T x logit).
    Outputs that underflowed to 0 are read as about e^-87 (float32's smallest normal)."""
    table = _probability_table(probabilities)
    factor = _positive("factor", factor)
    if factor == 1.0:
        return table
    return _softmax(factor * np.log(np.clip(table, _LOG_FLOOR, 1.0)))


def calibration_metrics(
    y_true: np.ndarray, probabilities: np.ndarray, temperature: float = 1.0
) -> dict[str, float]:
    """The test calibration figures of a model whose logits were divided by `temperature`
    (1: none): `test_ece` and `test_brier` of its probabilities, the ones it serves, and
    `test_ece_uncalibrated`, `test_brier_uncalibrated` and `test_loss_uncalibrated` of the
    same model before temperature scaling (its probabilities recovered exactly with
    rescaled_probabilities). `test_loss` itself, the calibrated NLL, is probability_metrics'."""
    table, y_true = _checked(y_true, probabilities)
    before = rescaled_probabilities(table, temperature)
    return {
        "test_ece": expected_calibration_error(y_true, table),
        "test_brier": brier_score(y_true, table),
        "test_ece_uncalibrated": expected_calibration_error(y_true, before),
        "test_brier_uncalibrated": brier_score(y_true, before),
        "test_loss_uncalibrated": negative_log_likelihood(y_true, before),
    }


@dataclass(frozen=True)
class TemperatureFit:
    """The temperature fitted on the val split, and the val NLL before (T = 1) and after."""

    temperature: float
    val_nll_before: float
    val_nll_after: float
    at_bound: bool = False
    """The best temperature lies on TEMPERATURE_BOUNDS: the model is far off, say so."""
    no_mistakes: bool = False
    """Every val image was classified right: the NLL falls for ever as T shrinks, so no
    temperature can be fitted and T stays 1 (a fitted one would make the model over-confident
    on the first image it gets wrong)."""


def logit_nll(logits: np.ndarray, y_true: np.ndarray, temperature: float = 1.0) -> float:
    """Mean -log p(true class) of softmax(logits / T), or of sigmoid(logit / T) for a one-unit
    output (N, 1): exact log-probabilities, no floor."""
    logits = _logit_table(logits)
    y_true = _labels(y_true, logits)
    log_p = _log_probabilities(logits, _positive("temperature", temperature))
    return float(-log_p[np.arange(len(y_true)), y_true].mean())


def fit_temperature(
    logits: np.ndarray,
    y_true: np.ndarray,
    bounds: tuple[float, float] = TEMPERATURE_BOUNDS,
) -> TemperatureFit:
    """The one temperature T that minimises the NLL of softmax(logits / T) (sigmoid for a
    one-unit output) on these labels: SciPy's bounded scalar search over log T (scale-free:
    halving and doubling are steps of one size). The NLL is convex in 1/T, so it has one
    minimum; should the search still end above the NLL at T = 1 (rounding), T stays 1.

    When every image is classified right the NLL has no minimum (it falls towards 0 as T
    shrinks) and the search would stop anywhere in that flat valley: T stays 1 then, and the
    fit says so (`no_mistakes`)."""
    from scipy.optimize import minimize_scalar

    logits = _logit_table(logits)
    y_true = _labels(y_true, logits)
    low, high = (_positive("bounds", value) for value in bounds)
    if not low < 1.0 < high:
        raise ValueError(f"bounds must hold 1 strictly inside them, got {bounds}")
    rows = np.arange(len(y_true))

    def nll(log_temperature: float) -> float:
        log_p = _log_probabilities(logits, math.exp(log_temperature))
        return float(-log_p[rows, y_true].mean())

    before = nll(0.0)
    predicted, _ = _predictions_and_margins(logits)
    if np.all(predicted == y_true):
        return TemperatureFit(1.0, before, before, no_mistakes=True)
    result = minimize_scalar(
        nll, bounds=(math.log(low), math.log(high)), method="bounded", options={"xatol": 1e-6}
    )
    temperature, after = math.exp(float(result.x)), float(result.fun)
    if not np.isfinite(after) or after > before:
        temperature, after = 1.0, before
    # The bounded search never evaluates the bounds themselves: within its tolerance of one
    # of them means the minimum lies at or beyond it.
    at_bound = min(abs(math.log(temperature / low)), abs(math.log(high / temperature))) < 1e-3
    return TemperatureFit(temperature, before, after, at_bound)


def _log_probabilities(logits: np.ndarray, temperature: float) -> np.ndarray:
    """log softmax(logits / T), one column per class; a one-unit output's [log(1 - s), log s],
    s = sigmoid(logit / T), computed without ever taking the log of a rounded 0."""
    from scipy.special import log_expit, log_softmax

    scaled = logits / temperature
    if scaled.shape[1] == 1:
        return np.hstack([log_expit(-scaled), log_expit(scaled)])
    return log_softmax(scaled, axis=1)


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _positive(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (np.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a finite number above 0, got {value}")
    return value


def _probability_table(probabilities) -> np.ndarray:
    """`probabilities` as an (N, classes) float64 table, a sigmoid's (N, 1) widened to two."""
    array = np.asarray(probabilities, dtype=np.float64)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(
            f"probabilities must be 2-D and non-empty (one row per image, one column per "
            f"class), got shape {array.shape}"
        )
    return class_probabilities(array)


def _logit_table(logits) -> np.ndarray:
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2 or len(array) == 0:
        raise ValueError(
            f"logits must be 2-D and non-empty (one row per image, one column per output unit), "
            f"got shape {array.shape}"
        )
    if not np.isfinite(array).all():
        raise ValueError("logits hold NaN or infinite values: the model's outputs are broken")
    return array


def _labels(y_true, table: np.ndarray) -> np.ndarray:
    """`y_true` checked against a table of probabilities or logits (one unit: two classes)."""
    classes = max(table.shape[1], 2)
    return check_class_indices(
        "y_true", y_true, classes, len(table), against="the probabilities"
    ).astype(np.int64)


def _checked(y_true, probabilities) -> tuple[np.ndarray, np.ndarray]:
    table = _probability_table(probabilities)
    return table, _labels(y_true, table)


def calibrate_model(
    model, images, y_true: np.ndarray, batch_size: int | None = None
) -> TemperatureFit:
    """Fit the temperature on `images` (the val split: an ImageSplit or an array) and their
    labels, and fold it into `model`'s output layer (models.calibration), in place.

    The logits are predicted once, a batch at a time (predict_outputs, through a model that
    shares every layer but the activation), the temperature fitted on them, then the folded
    model's probabilities predicted once more to check what it now serves: the same most
    probable class for every image, and softmax(logits / T). A ModelError says which check
    failed, so a wrong model is never saved. Rounding may swap two classes whose logits tie
    to within float32's precision; those are counted, not refused."""
    # Keras loads here only: the evaluate and promote stages read the rest without it.
    from pipeline.models.calibration import fold_temperature, logit_model

    logits = np.asarray(predict_outputs(logit_model(model), images, batch_size), np.float64)
    fit = fit_temperature(logits, y_true)
    if fit.no_mistakes:
        logger.warning(
            "every one of the %d val images is classified right: the val NLL has no minimum, so "
            "no temperature is fitted and the model keeps T = 1 (a larger val split, or harder "
            "data, would give one)",
            len(y_true),
        )
    if fit.at_bound:
        logger.warning(
            "the val NLL is lowest at the search's bound T = %.3g (bounds %s): the model's "
            "confidence is far off; its probabilities are scaled by that bound",
            fit.temperature,
            TEMPERATURE_BOUNDS,
        )
    fold_temperature(model, fit.temperature)
    served = predict_probabilities(model, images, batch_size)
    expected = np.exp(_log_probabilities(logits, fit.temperature))
    before, margin = _predictions_and_margins(logits)
    changed = served.argmax(axis=1) != before
    # float32 logits are good to about 1e-6 of their size: a closer call is a tie.
    decided = margin > 1e-4 * (1.0 + np.abs(logits).max(axis=1))
    if np.any(changed & decided):
        first = int(np.flatnonzero(changed & decided)[0])
        raise ModelError(
            f"temperature scaling (T = {fit.temperature:.4g}) changed the predicted class of "
            f"{int(np.sum(changed & decided))} val image(s), the first at row {first} "
            f"(logit margin {margin[first]:.3g}): the output layer was not scaled as a whole; "
            "set train.calibration: none and report this model's architecture"
        )
    gap = float(np.abs(served - expected).max())
    if gap > 1e-4:
        raise ModelError(
            f"after folding T = {fit.temperature:.4g} into the output layer, its probabilities "
            f"differ from softmax(logits / T) by up to {gap:.3g}: the layer folded is not the "
            "one that makes the probabilities; set train.calibration: none"
        )
    if np.any(changed):
        logger.info(
            "temperature scaling: %d val image(s) with tied logits changed class by rounding",
            int(np.sum(changed)),
        )
    logger.info(
        "temperature T = %.4f fitted on %d val images: NLL %.4f -> %.4f",
        fit.temperature,
        len(y_true),
        fit.val_nll_before,
        fit.val_nll_after,
    )
    return fit


def _predictions_and_margins(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class each row of logits predicts, and by how much: the top two logits' gap, or a
    sigmoid's |logit| (its class is 1 above 0)."""
    if logits.shape[1] == 1:
        return (logits[:, 0] > 0).astype(np.int64), np.abs(logits[:, 0])
    top_two = np.sort(logits, axis=1)[:, -2:]
    return logits.argmax(axis=1), top_two[:, 1] - top_two[:, 0]
