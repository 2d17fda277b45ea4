"""The promotion gate's decisions: pure functions of metrics, labels and predictions (no MLflow).

Which strategy to promote, and whether it may replace the champion. A challenger replaces the
champion only when it passes every criterion on the same, current test split: an accuracy
floor, a recall floor for every class, a minimum improvement over the champion, and McNemar's
test in its favour; and, when `max_ece` is set, a ceiling on its expected calibration error.
With no champion, or a champion that cannot be loaded, the floors (and the ceiling) alone
decide.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError, RegistryError
from pipeline.evaluation.metrics import check_class_indices
from pipeline.evaluation.significance import McNemarResult, mcnemar_test


def choose_strategy(
    metrics: Mapping[str, Mapping], available: Sequence[str], wanted: str, metrics_file: Path
) -> str:
    """`wanted` by name, or with `best` the highest val accuracy (ties: the lower val loss, then
    the first listed): the test split judges the chosen strategy, never chooses it, so its
    figures stay an unbiased estimate. `metrics_file` only names where `metrics` came from in
    the errors."""
    if wanted != "best":
        if wanted not in available or wanted not in metrics:
            raise ConfigError(
                f"promote.strategy = {wanted!r} has no evaluated model here; "
                f"evaluated: {', '.join(s for s in available if s in metrics)}"
            )
        return wanted
    scored = [name for name in available if name in metrics]
    if not scored:
        raise RegistryError(f"{metrics_file} holds no evaluated strategy: run evaluate first")
    unscored = [name for name in scored if "val_accuracy" not in metrics[name]]
    if unscored:
        raise RegistryError(
            f"{metrics_file}: {', '.join(unscored)} has no val_accuracy, which promote.strategy "
            "best chooses on (an evaluation from before val figures existed, or an empty val "
            "split: check data.val_fraction): run `dvc repro` to evaluate again, or name the "
            "strategy in promote.strategy"
        )
    return max(
        scored,
        key=lambda name: (
            metrics[name]["val_accuracy"],
            -metrics[name].get("val_loss", 0.0),
            -scored.index(name),
        ),
    )


@dataclass(frozen=True)
class GateThresholds:
    min_accuracy: float
    """Absolute accuracy floor for the challenger."""
    min_improvement: float
    """Challenger accuracy minus champion accuracy must be at least this."""
    alpha: float
    """McNemar's test: p < alpha, with more challenger-only-correct than champion-only pairs."""
    min_class_recall: float
    """Every class's recall must be at least this."""
    max_ece: float | None = None
    """The challenger's test expected calibration error must be at most this; None: calibration
    does not gate (and the decision has no `calibration` criterion)."""

    def __post_init__(self) -> None:
        numbers = ["min_accuracy", "min_improvement", "alpha", "min_class_recall"]
        if self.max_ece is not None:
            numbers.append("max_ece")
        for name in numbers:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float | np.number):
                raise ValueError(f"{name} must be a number, got {value!r}")
        # Written so that NaN fails every check rather than passing them all.
        for name in ("min_accuracy", "min_improvement", "min_class_recall", "max_ece"):
            if name in numbers and not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")


@dataclass(frozen=True)
class Criterion:
    name: str
    """accuracy_floor, class_recall_floor, improvement, mcnemar or calibration (and the gate's
    refusals: fair_test_split, comparable, new_model, not_rolled_back)."""
    passed: bool
    observed: float
    """The value judged: accuracy, lowest recall, accuracy gain, McNemar's p-value, or the
    expected calibration error (NaN when it was not measured)."""
    threshold: float
    detail: str
    """One sentence for a person: the observed value, the threshold and the verdict."""


_NUMBERS = ("passed", "observed", "threshold")


@dataclass(frozen=True)
class Decision:
    passed: bool
    criteria: tuple[Criterion, ...]
    challenger_accuracy: float
    champion_accuracy: float | None
    """None when there is no champion yet."""
    mcnemar: McNemarResult | None = None
    """The test behind the mcnemar criterion, when there is a champion."""
    champion_unusable: str | None = None
    """Why the champion could not be compared with (it cannot be loaded), and what to do."""

    def reasons(self) -> list[str]:
        """Why: the failed criteria's details, or every criterion's when all passed; first of
        all that the champion was unusable, when it was."""
        failed = [criterion.detail for criterion in self.criteria if not criterion.passed]
        details = failed or [criterion.detail for criterion in self.criteria]
        return [self.champion_unusable, *details] if self.champion_unusable else details

    def to_dict(self) -> dict:
        """JSON-ready, and DVC-metrics-ready: numbers and booleans per criterion, the sentences
        in a list (which `dvc metrics show` leaves out of its table)."""
        criteria = {}
        for criterion in self.criteria:
            entry = {key: value for key, value in asdict(criterion).items() if key in _NUMBERS}
            # A value that was never measured (NaN) is null: JSON has no NaN.
            if not np.isfinite(entry["observed"]):
                entry["observed"] = None
            if criterion.name == "mcnemar" and self.mcnemar is not None:
                entry.update(asdict(self.mcnemar))
            criteria[criterion.name] = entry
        return {
            "passed": self.passed,
            "criteria": criteria,
            "explanations": [criterion.detail for criterion in self.criteria],
            "challenger_accuracy": self.challenger_accuracy,
            "champion_accuracy": self.champion_accuracy,
            "champion_unusable": self.champion_unusable,
        }


def decide_promotion(
    y_true: np.ndarray,
    challenger_pred: np.ndarray,
    champion_pred: np.ndarray | None,
    classes: Sequence[str],
    thresholds: GateThresholds,
    challenger_ece: float | None = None,
) -> Decision:
    """Judge the challenger (and, when there is one, against the champion) on the same test
    labels; every array holds integer indices into `classes`. `challenger_ece` is its test
    expected calibration error (evaluation.json's `test_ece`), judged when
    `thresholds.max_ece` is set."""
    classes = list(classes)
    if not classes:
        raise ValueError("classes is empty: the gate needs the class names of the test split")
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes has duplicate names: {classes}")
    y_true = check_class_indices("y_true", y_true, len(classes))
    challenger_pred = check_class_indices(
        "challenger_pred", challenger_pred, len(classes), len(y_true), against="y_true"
    )
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
    if thresholds.max_ece is not None:
        criteria.append(_calibration_ceiling(challenger_ece, thresholds.max_ece))
    champion_accuracy = None
    test = None
    if champion_pred is not None:
        champion_pred = check_class_indices(
            "champion_pred", champion_pred, len(classes), len(y_true), against="y_true"
        )
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
        # McNemar's p-value is two-sided: a significant difference in the champion's favour
        # must not promote the challenger.
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
    y_true: np.ndarray, predictions: np.ndarray, classes: list[str], floor: float
) -> Criterion:
    """The lowest recall over the classes present in `y_true`, naming the worst class."""
    # A class with no test image has no recall. Counting it as 0 would fail every challenger
    # for a fault of the split, counting it as 1 would hide it: it is left out of the minimum
    # and named in the detail, so the decision says what it could not check. (The data gate
    # already fails a split that lacks a class; this is the gate's own guard.)
    recalls = {
        name: float(np.mean(predictions[y_true == index] == index))
        for index, name in enumerate(classes)
        if np.any(y_true == index)
    }
    absent = [name for name in classes if name not in recalls]
    worst = min(recalls, key=recalls.get)
    lowest = recalls[worst]
    detail = (
        f"the lowest class recall, of class {worst!r}, is {lowest:.4f}, "
        + ("at least" if lowest >= floor else "below")
        + f" the floor {floor:.4f}"
    )
    if absent:
        detail += f" (classes with no test image, so no recall: {', '.join(map(repr, absent))})"
    return Criterion("class_recall_floor", lowest >= floor, lowest, floor, detail)


def _calibration_ceiling(ece: float | None, ceiling: float) -> Criterion:
    """The challenger's test expected calibration error against `ceiling`; a challenger whose
    ECE was never measured (an evaluation from before calibration) fails, saying how to fix it."""
    if ece is None or isinstance(ece, bool) or not np.isfinite(ece):
        detail = (
            f"the challenger has no expected calibration error (got {ece!r}) to hold against "
            f"the ceiling {ceiling:.4f}: re-run its evaluation (dvc repro evaluate), which "
            "measures it, then promote again"
        )
        return Criterion("calibration", False, float("nan"), ceiling, detail)
    ece = float(ece)
    passed = ece <= ceiling
    detail = (
        f"test expected calibration error {ece:.4f} "
        + ("is within" if passed else "is above")
        + f" the ceiling {ceiling:.4f}"
    )
    return Criterion("calibration", passed, ece, ceiling, detail)


MIN_FAIR_FRACTION = 0.5
"""The gate refuses to decide when fewer of the test images than this share remain once those
either model trained on are excluded."""
MIN_FAIR_IMAGES = 10


@dataclass(frozen=True)
class TestOverlap:
    """Which test images either model trained on, by content digest (training manifests)."""

    test_images: int
    in_challenger_training: int
    in_champion_training: int | None
    """None when there is no champion, or it was registered without a manifest."""
    keep: np.ndarray
    """True for the test images neither model trained on: the ones the gate scores."""

    @property
    def excluded(self) -> int:
        return int(self.test_images - self.keep.sum())

    @property
    def fair(self) -> bool:
        """Enough images remain to judge on."""
        scored = self.test_images - self.excluded
        return scored >= MIN_FAIR_IMAGES and scored >= MIN_FAIR_FRACTION * self.test_images

    def to_dict(self) -> dict:
        return {
            "test_images": self.test_images,
            "in_challenger_training": self.in_challenger_training,
            "in_champion_training": self.in_champion_training,
            "excluded": self.excluded,
            "scored": self.test_images - self.excluded,
        }


def find_test_overlap(
    test_digests: Sequence[str],
    challenger_manifest: set[str] | None,
    champion_manifest: set[str] | None,
) -> TestOverlap:
    """Mark the test images that are in either model's training manifest (exact content)."""
    digests = np.asarray([str(digest) for digest in test_digests])

    def trained_on(manifest: set[str] | None) -> np.ndarray:
        if not manifest:
            return np.zeros(len(digests), dtype=bool)
        return np.isin(digests, np.array(sorted(manifest)))

    challenger = trained_on(challenger_manifest)
    champion = trained_on(champion_manifest)
    return TestOverlap(
        test_images=len(digests),
        in_challenger_training=int(challenger.sum()),
        in_champion_training=None if champion_manifest is None else int(champion.sum()),
        keep=~(challenger | champion),
    )


def unfair_decision(overlap: TestOverlap, challenger_accuracy: float) -> Decision:
    """The gate's refusal when too few test images remain that neither model trained on."""
    scored = overlap.test_images - overlap.excluded
    detail = (
        f"{overlap.excluded} of {overlap.test_images} test images are in a model's training "
        f"manifest; the {scored} left are fewer than {MIN_FAIR_FRACTION:.0%} of the test split "
        f"(or {MIN_FAIR_IMAGES}): the gate refuses to decide. Re-split the data (dvc repro "
        "split) so the test images are new to both models, or promote by hand"
    )
    criterion = Criterion(
        "fair_test_split", False, scored / max(overlap.test_images, 1), MIN_FAIR_FRACTION, detail
    )
    return Decision(
        passed=False,
        criteria=(criterion,),
        challenger_accuracy=challenger_accuracy,
        champion_accuracy=None,
    )


@dataclass(frozen=True)
class ScoredVersion:
    """A model (a registered version, or the challenger's file) and its test predictions."""

    version: str | None
    """The registry version; None for a model file that is no version (yet)."""
    classes: list[str]
    predictions: np.ndarray | None
    """Label indices into the test split's classes; None when its classes differ."""
    run_id: str | None
    training_manifest: set[str] | None = None
    """The content digests of its training images; None for versions registered without."""


def gate_challenger(
    y_true: np.ndarray,
    challenger: ScoredVersion,
    champion: ScoredVersion | None,
    classes: list[str],
    thresholds: GateThresholds,
    challenger_ece: float | None = None,
) -> Decision:
    """The gate's decision; a champion trained on other classes cannot be compared, and the
    challenger does not replace it without a person deciding so."""
    if champion is not None and champion.predictions is None:
        floors = decide_promotion(
            y_true, challenger.predictions, None, classes, thresholds, challenger_ece
        )
        detail = (
            f"champion version {champion.version} predicts classes {champion.classes}, "
            f"the test split has {classes}: promote by hand (set the alias) or register "
            "under another mlflow.registered_model"
        )
        incomparable = Criterion("comparable", False, 0.0, 1.0, detail)
        return replace(floors, passed=False, criteria=(*floors.criteria, incomparable))
    champion_pred = None if champion is None else champion.predictions
    return decide_promotion(
        y_true, challenger.predictions, champion_pred, classes, thresholds, challenger_ece
    )


@dataclass(frozen=True)
class UnusableChampion:
    """The champion's version when it cannot be loaded or scored (its model file changed or
    truncated in the artifact store), and why: the gate judges on the floors alone."""

    version: str
    reason: str

    def detail(self) -> str:
        """One sentence for a person: what broke, what the gate did, and how to recover."""
        return (
            f"champion unusable: version {self.version} cannot be loaded ({self.reason}); the "
            "challenger is judged on the floors alone. Until a challenger passes, serve a "
            "version that loads: `pipeline rollback --to <version> --reason ...`, or "
            f"re-register version {self.version}'s model"
        )


@dataclass(frozen=True)
class GateOutcome:
    """The gate's decision, and which test images it left out to make it."""

    decision: Decision
    overlap: TestOverlap


def judge_challenger(
    y_true: np.ndarray,
    test_digests: Sequence[str],
    challenger: ScoredVersion,
    champion: ScoredVersion | None,
    classes: list[str],
    thresholds: GateThresholds,
    rolled_back_versions: frozenset[str] = frozenset(),
    unusable_champion: UnusableChampion | None = None,
    challenger_ece: float | None = None,
) -> GateOutcome:
    """The whole gate on one test split: leave out the test images either model trained on,
    refuse when too few remain, judge the rest, never re-promote the champion itself, and
    never promote a model that a rollback took out of service (`rolled_back_versions`).
    With `unusable_champion` (and no `champion`) the floors alone judge, and the decision
    says the champion was unusable and how to recover. `challenger_ece`, the challenger's
    test expected calibration error (metrics.json's `test_ece`, of the whole test split), is
    held against `thresholds.max_ece` when that is set."""
    if champion is not None and unusable_champion is not None:
        raise ValueError("a champion is either scored or unusable, not both")
    overlap = find_test_overlap(
        test_digests,
        challenger.training_manifest,
        champion.training_manifest if champion is not None else None,
    )
    if overlap.fair:
        decision = gate_challenger(
            y_true[overlap.keep],
            _kept(challenger, overlap.keep),
            _kept(champion, overlap.keep),
            classes,
            thresholds,
            challenger_ece,
        )
    else:
        decision = unfair_decision(overlap, float(np.mean(challenger.predictions == y_true)))
    # The challenger has a version when its model file is already registered (looked up on
    # the main line only): the champion itself must not pass as a new challenger.
    if unusable_champion is not None:
        decision = replace(decision, champion_unusable=unusable_champion.detail())
    champion_version = champion.version if champion is not None else None
    if unusable_champion is not None:
        champion_version = unusable_champion.version
    # A SQLite store answers versions as numbers, a tracking server as text.
    if challenger.version is not None and str(challenger.version) == str(champion_version):
        detail = f"version {challenger.version} is already the champion: nothing to promote"
        criterion = Criterion("new_model", False, 0.0, 1.0, detail)
        decision = replace(decision, passed=False, criteria=(*decision.criteria, criterion))
    if challenger.version is not None and str(challenger.version) in rolled_back_versions:
        detail = (
            f"version {challenger.version} was rolled back: the same model is never promoted "
            "again; retrain it into a different model (pipeline retrain --force)"
        )
        criterion = Criterion("not_rolled_back", False, 0.0, 1.0, detail)
        decision = replace(decision, passed=False, criteria=(*decision.criteria, criterion))
    return GateOutcome(decision, overlap)


def _kept(scored: ScoredVersion | None, keep: np.ndarray) -> ScoredVersion | None:
    """`scored` with only the predictions of the test images the gate judges on."""
    if scored is None or scored.predictions is None:
        return scored
    return replace(scored, predictions=scored.predictions[keep])
