"""Suspected label errors of the train and val splits: out-of-fold probabilities of a cheap
classifier on the cached backbone features, ranked by cleanlab's confident learning.

Every image is scored by a classifier fitted on the other folds only: a model that has seen an
image has learnt its label, wrong or not, and would vouch for it. The classifier is a logistic
regression on the backbone's features, averaged over their spatial positions and standardized,
so K fits over thousands of images take seconds. Identical images stored under two classes
(split.json's `label_conflicts`) are listed first, whatever any model says.

The test split is never read: it judges the models, and a label fixed because a model disagreed
with it would no longer judge them fairly.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.store import SOURCES_COLUMNS, NpyRows, open_split

logger = logging.getLogger(__name__)

# scikit-learn and cleanlab are imported where they are used: the report stage imports this
# module for its column names alone.

SCORED_SPLITS: tuple[str, ...] = ("train", "val")
"""The splits whose labels are checked; never the test split."""
DROPPED_SPLIT = "dropped"
"""The `split` of an image left out of the store as a label conflict (it is in none)."""
COLUMNS: tuple[str, ...] = ("path", "digest", "split", "given", "suggested", "score", "issue")
"""reports/label_issues.csv's header, worst first."""
SUSPECT = "suspect"
"""`issue` of an image cleanlab flags: its label is among the least probable out of fold."""
CONFLICT = "label_conflict"
"""`issue` of an image stored, pixel for pixel, under another class too (score 0)."""

RANK_METHOD = "self_confidence"
"""cleanlab's label quality score: the out-of-fold probability of the given label."""
FILTER_BY = "low_self_confidence"
"""cleanlab's filter: as many suspects as confident learning counts off the diagonal of its
confident joint, taken by lowest label quality score. On digits with 5% of the files moved
(bench/bench_label_issues.py, three seeds) it put 89-99% of them among the first 2 x planted
rows where `prune_by_noise_rate` put 82-95%, with fewer rows flagged."""
REGULARIZATION = 1.0
"""The logistic regression's C, on standardized features: stronger regularization (0.01-0.1)
classified 2-3% more images right but flagged fewer of the planted ones (the bench)."""
MAX_ITERATIONS = 1000
FEATURE_CHUNK_BYTES = 64 << 20
"""The most feature bytes read at once before pooling (VGG16 at 224 px: 100 KB an image)."""


@dataclass(frozen=True)
class ScoredImages:
    """The train and val images as the ranking sees them, one row each: pooled features,
    label, content digest, split name and source file ("" where unknown)."""

    features: np.ndarray
    labels: np.ndarray
    digests: np.ndarray
    splits: np.ndarray
    paths: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class LabelIssue:
    """One row of label_issues.csv."""

    path: str
    digest: str
    split: str
    given: str
    suggested: str
    score: float
    issue: str = SUSPECT

    def as_row(self) -> tuple[str, ...]:
        return (
            self.path,
            self.digest,
            self.split,
            self.given,
            self.suggested,
            f"{self.score:.6g}",
            self.issue,
        )


@dataclass(frozen=True)
class LabelIssueReport:
    """What the ranking found: the rows, worst first, and how they were found."""

    issues: list[LabelIssue]
    images: int
    """Train and val images checked."""
    folds: int
    """The folds used (fewer than asked when even the largest class has fewer images)."""
    unscored: list[str] = field(default_factory=list)
    """Classes with too few images to be scored out of fold."""
    test_conflicts: int = 0
    """Identical images under two classes in the test split: not listed (never read here)."""

    @property
    def suspects(self) -> int:
        return sum(issue.issue == SUSPECT for issue in self.issues)

    @property
    def conflicts(self) -> int:
        return sum(issue.issue == CONFLICT for issue in self.issues)


# --- features ---------------------------------------------------------------------------------


def pool_features(path: Path, expected_rows: int, split_name: str) -> np.ndarray:
    """The cached features of one split, averaged over their spatial positions: float32
    (rows, channels). Read a chunk at a time, so the whole spatial map is never held."""
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path} not found: the features of split '{split_name}' are missing; run the "
            "features stage first (dvc repro features)"
        )
    rows = NpyRows(path)
    try:
        if len(rows) != expected_rows:
            raise DataError(
                f"{path} holds {len(rows)} feature rows for the {expected_rows} images of split "
                f"'{split_name}': rerun the features stage (dvc repro features)"
            )
        if len(rows.shape) < 2:
            raise DataError(f"{path}: features of shape {rows.shape}, expected (rows, ...)")
        step = max(1, FEATURE_CHUNK_BYTES // max(1, rows.row_bytes))
        pooled = np.empty((len(rows), rows.shape[-1]), dtype=np.float32)
        spatial = tuple(range(1, len(rows.shape) - 1))
        for start in range(0, len(rows), step):
            chunk = rows.read(np.arange(start, min(start + step, len(rows))))
            chunk = chunk.astype(np.float32, copy=False)
            pooled[start : start + len(chunk)] = chunk.mean(axis=spatial) if spatial else chunk
    finally:
        rows.close()
    if not np.isfinite(pooled).all():
        raise DataError(f"{path} holds features that are not finite: rerun the features stage")
    return pooled


def load_scored_images(
    prepared_dir: Path, features_dir: Path, sources_file: Path | None
) -> tuple[ScoredImages, list[str]]:
    """The train and val images' pooled features, labels, digests, splits and source files,
    and the class names. Only those two splits of the store are opened."""
    parts = []
    classes: list[str] = []
    for name in SCORED_SPLITS:
        split = open_split(prepared_dir, name)
        try:
            classes = list(split.classes)
            features = pool_features(features_dir / f"{name}.npy", len(split), name)
            parts.append((features, split.y, split.digests(), np.full(len(split), name)))
        finally:
            split.close()
    features, labels, digests, splits = (
        np.concatenate(column) for column in zip(*parts, strict=True)
    )
    paths = assign_paths(splits, digests, read_sources(sources_file))
    return ScoredImages(features, labels, digests, splits, paths), classes


# --- where each image came from ---------------------------------------------------------------


def read_sources(
    path: Path | None, splits: Sequence[str] = SCORED_SPLITS
) -> dict[tuple[str, str], list[str]]:
    """The split stage's sources table as (split, digest) -> the files of that image, sorted
    (two files of one image in one class are one digest), for `splits` only: a folder's path
    names its class, and the test split's are not read. {} without a table."""
    if path is None:
        return {}
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path} not found: rerun the split stage (dvc repro split)")
    sources: dict[tuple[str, str], list[str]] = {}
    with open(path, newline="", encoding="utf-8") as stream:
        reader = csv.reader(stream)
        header = tuple(next(reader, ()))
        if header != SOURCES_COLUMNS:
            raise DataError(
                f"{path} has the columns {list(header)}, expected {list(SOURCES_COLUMNS)}: "
                "rerun the split stage (dvc repro split)"
            )
        for row in reader:
            if len(row) != len(SOURCES_COLUMNS):
                raise DataError(f"{path}: a row of {len(row)} cells, expected 3; rerun split")
            digest, split, source = row
            if split not in splits:
                continue
            sources.setdefault((split, digest), []).append(unescape_cell(source))
    for files in sources.values():
        files.sort()
    return sources


def unescape_cell(value: str) -> str:
    """A cell as it was before `spreadsheet_safe` (pipeline.store) wrote it: without the
    apostrophe it puts before a leading =, +, -, @, tab or carriage return."""
    if len(value) > 1 and value[0] == "'" and value[1] in "=+-@\t\r":
        return value[1:]
    return value


def assign_paths(
    splits: Sequence[str], digests: Sequence[str], sources: Mapping[tuple[str, str], list[str]]
) -> np.ndarray:
    """The source file of each row ("" where the table has none). Rows of one image under
    one class and split share a digest: they take its files in turn."""
    taken: Counter = Counter()
    paths = []
    for split, digest in zip(splits, digests, strict=True):
        files = sources.get((str(split), str(digest)), [])
        position = taken[(split, digest)]
        taken[(split, digest)] += 1
        paths.append(files[position] if position < len(files) else (files[-1] if files else ""))
    return np.array(paths, dtype=object)


# --- out-of-fold probabilities ----------------------------------------------------------------


def logistic_classifier(seed: int):
    """The cheap classifier: standardized features, a multinomial logistic regression."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(
        StandardScaler(),
        LogisticRegression(C=REGULARIZATION, max_iter=MAX_ITERATIONS, random_state=seed),
    )


def plan_folds(labels: np.ndarray, folds: int) -> tuple[int, np.ndarray, list[int]]:
    """The folds to use, which rows can be scored, and the classes that cannot.

    A class needs an image in at least two folds to be scored out of fold (one fold's model
    must have seen it): classes of a single image are left out, with a warning. A small class
    does not lower the folds for everyone (each fold's model would see less of every class):
    its images spread over as many folds as it has, and the folds drop only when even the
    largest class has fewer images than folds (at least 2)."""
    labels = np.asarray(labels)
    counts = Counter(int(label) for label in labels)
    unscored = sorted(label for label, count in counts.items() if count < 2)
    scored = np.isin(labels, unscored, invert=True)
    remaining = [count for label, count in counts.items() if count >= 2]
    used = max(2, min(int(folds), max(remaining))) if remaining else int(folds)
    return used, scored, unscored


def out_of_fold_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    folds: int,
    seed: int,
    make_classifier: Callable[[int], object] = logistic_classifier,
) -> np.ndarray:
    """Each row's class probabilities (num_classes columns) from a classifier fitted on the
    other folds only (stratified, shuffled with `seed`). Every class of `labels` must have at
    least 2 rows (`plan_folds`): a class of fewer rows than folds is in some folds only."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.model_selection import StratifiedKFold

    features = np.asarray(features)
    labels = np.asarray(labels)
    probabilities = np.zeros((len(labels), num_classes), dtype=np.float64)
    splitter = StratifiedKFold(n_splits=int(folds), shuffle=True, random_state=int(seed))
    with warnings.catch_warnings():
        # A class with fewer images than folds is spread over as many folds as it has
        # (plan_folds chose so): scikit-learn's warning about it says nothing new.
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        assignments = list(splitter.split(features, labels))
    unconverged = 0
    for fitted_rows, scored_rows in assignments:
        classifier = make_classifier(seed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            classifier.fit(features[fitted_rows], labels[fitted_rows])
        unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        # A fold's model knows only the classes it was fitted on: its columns go to theirs.
        columns = np.asarray(classifier.classes_, dtype=np.int64)
        probabilities[np.ix_(scored_rows, columns)] = classifier.predict_proba(
            features[scored_rows]
        )
    if unconverged:
        logger.warning(
            "the logistic regression did not converge in %d iterations on %d of %d folds; "
            "the ranking may be rougher",
            MAX_ITERATIONS,
            unconverged,
            folds,
        )
    return probabilities


# --- ranking ----------------------------------------------------------------------------------


def rank_suspects(labels: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's suspects (FILTER_BY), worst first, and every row's label quality score
    (lower: the label is less likely right)."""
    from cleanlab.filter import find_label_issues as cleanlab_find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = np.asarray(labels, dtype=np.int64)
    scores = get_label_quality_scores(labels, probabilities, method=RANK_METHOD)
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64), scores
    # One process: cleanlab's pool would fork a stage that may hold TensorFlow's threads.
    flagged = cleanlab_find_label_issues(labels, probabilities, filter_by=FILTER_BY, n_jobs=1)
    rows = np.flatnonzero(flagged)
    # Worst first; ties by row (the rows are in a canonical order).
    return rows[np.lexsort((rows, scores[rows]))], scores


def suggest_classes(labels: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """The most probable class other than the given one, for each row."""
    others = np.array(probabilities, dtype=np.float64, copy=True)
    others[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = -np.inf
    return others.argmax(axis=1)


def conflict_issues(
    conflicts: Iterable[Mapping], split_of: Mapping[str, str]
) -> tuple[list[LabelIssue], int]:
    """split.json's `label_conflicts` as rows (score 0, suggested: the other class(es)), for
    the images in train or val (`split_of`: digest -> split); and how many are in test."""
    issues: list[LabelIssue] = []
    elsewhere = 0
    for conflict in conflicts:
        digest = str(conflict.get("digest", ""))
        split = split_of.get(digest)
        if split is None:
            elsewhere += 1
            continue
        files = [(str(item["path"]), str(item["class"])) for item in conflict.get("files", [])]
        classes = sorted({name for _, name in files})
        for path, given in sorted(files):
            others = [name for name in classes if name != given]
            issues.append(LabelIssue(path, digest, split, given, " | ".join(others), 0.0, CONFLICT))
    return issues, elsewhere


def find_label_issues(
    images: ScoredImages,
    class_names: Sequence[str],
    folds: int,
    seed: int,
    conflicts: Iterable[Mapping] = (),
    dropped_conflicts: Iterable[Mapping] = (),
) -> LabelIssueReport:
    """The label issues of `images` (train and val), worst first: identical images under two
    classes (`conflicts` in the store, then `dropped_conflicts`, left out of it by
    `validate.label_conflicts: drop`, listed with split `dropped`), then cleanlab's suspects
    by label quality score."""
    class_names = [str(name) for name in class_names]
    # A canonical row order (digest, label, split), so the folds depend on the data alone and
    # not on how the store happens to lay its shards out.
    order = np.lexsort((images.splits, images.labels, images.digests))
    labels = np.asarray(images.labels, dtype=np.int64)[order]
    features = np.asarray(images.features)[order]
    digests = np.asarray(images.digests).astype(str)[order]
    splits = np.asarray(images.splits).astype(str)[order]
    paths = np.asarray(images.paths, dtype=object)[order]

    split_of = {digest: split for digest, split in zip(digests, splits, strict=True)}
    conflict_rows, test_conflicts = conflict_issues(conflicts, split_of)
    dropped = list(dropped_conflicts)
    dropped_rows, _ = conflict_issues(
        dropped, {str(conflict.get("digest", "")): DROPPED_SPLIT for conflict in dropped}
    )
    conflict_rows += dropped_rows
    listed = {issue.digest for issue in conflict_rows}

    used, scored, unscored = plan_folds(labels, folds)
    unscored_names = [class_names[label] for label in unscored]
    if unscored:
        logger.warning(
            "class(es) %s have a single image in train and val: they cannot be scored out of "
            "fold and are left out of the ranking",
            ", ".join(unscored_names),
        )
    if used < folds:
        logger.warning(
            "%d folds instead of %d: the largest class has %d images in train and val",
            used,
            folds,
            used,
        )
    suspects: list[LabelIssue] = []
    rows = np.flatnonzero(scored)
    if len(np.unique(labels[rows])) < 2:
        logger.warning("fewer than two classes can be scored: no label issue can be found")
    else:
        probabilities = out_of_fold_probabilities(
            features[rows], labels[rows], len(class_names), used, seed
        )
        ranked, scores = rank_suspects(labels[rows], probabilities)
        suggested = suggest_classes(labels[rows], probabilities)
        for position in ranked:
            row = rows[position]
            if digests[row] in listed:
                continue
            suspects.append(
                LabelIssue(
                    path=str(paths[row]),
                    digest=str(digests[row]),
                    split=str(splits[row]),
                    given=class_names[labels[row]],
                    suggested=class_names[int(suggested[position])],
                    score=float(scores[position]),
                )
            )
    return LabelIssueReport(
        conflict_rows + suspects, len(images), used, unscored_names, test_conflicts
    )
