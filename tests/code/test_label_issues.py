"""Label issues on tiny arrays: out-of-fold scoring never sees the scored rows, suspects are
ranked worst first with the file they came from, identical images under two classes come
first, small classes reduce the folds instead of failing, and missing inputs are named."""

from __future__ import annotations

import csv
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.datasets.folders import snapshot_image_folder
from pipeline.errors import DataError
from pipeline.evaluation import label_issues as core
from pipeline.evaluation.label_issues import (
    COLUMNS,
    CONFLICT,
    SUSPECT,
    ScoredImages,
    assign_paths,
    conflict_issues,
    find_label_issues,
    out_of_fold_probabilities,
    plan_folds,
    pool_features,
    rank_suspects,
    read_sources,
)
from pipeline.stages import label_issues as stage
from pipeline.stages.split import prepare_splits
from pipeline.store import (
    PLAN_FILE,
    SOURCES_COLUMNS,
    image_digests,
    open_splits,
    read_json,
    write_csv,
    write_json,
    write_store_from_arrays,
)
from tests import fakes
from tests.project import PROJECT_ROOT

CLASSES = ["ant", "bee", "cat"]


def _blobs(per_class: int = 20, dims: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three well-separated clusters: a classifier of the other folds gets each right."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), per_class)
    centres = np.eye(3, dims) * 12.0
    return (centres[labels] + rng.normal(size=(len(labels), dims))).astype(np.float32), labels


def _images(features, labels, splits=None, paths=None) -> ScoredImages:
    count = len(labels)
    return ScoredImages(
        features=np.asarray(features, dtype=np.float32),
        labels=np.asarray(labels),
        digests=np.array([f"{i:032x}" for i in range(count)]),
        splits=np.asarray(splits if splits is not None else ["train"] * count),
        paths=np.asarray(
            paths if paths is not None else [f"file_{i}.png" for i in range(count)], dtype=object
        ),
    )


class _Recorder:
    """A classifier that remembers the rows it was fitted on (feature 0 is the row number)
    and fails if asked to score one of them."""

    fits: list[set[int]] = []

    def __init__(self, seed: int) -> None:
        self.seen: set[int] = set()

    def fit(self, features, labels):
        self.seen = {int(row) for row in features[:, 0]}
        self.classes_ = np.unique(labels)
        _Recorder.fits.append(self.seen)
        return self

    def predict_proba(self, features):
        scored = {int(row) for row in features[:, 0]}
        assert not scored & self.seen, "a row was scored by a model fitted on it"
        return np.full((len(features), len(self.classes_)), 1 / len(self.classes_))


def test_no_row_is_scored_by_a_model_that_saw_it() -> None:
    labels = np.repeat(np.arange(3), 10)
    features = np.arange(len(labels), dtype=np.float64)[:, None]
    _Recorder.fits = []
    probabilities = out_of_fold_probabilities(
        features, labels, 3, 5, seed=1, make_classifier=_Recorder
    )
    assert len(_Recorder.fits) == 5
    # Every row was scored exactly once (each fold's model left it out, the others saw it).
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    for row in range(len(labels)):
        assert sum(row not in seen for seen in _Recorder.fits) == 1


def test_a_fold_model_missing_a_class_fills_that_column_with_zero() -> None:
    class TwoClasses(_Recorder):
        def fit(self, features, labels):
            super().fit(features, labels)
            self.classes_ = np.array([0, 2])
            return self

    labels = np.repeat(np.arange(3), 4)
    features = np.arange(len(labels), dtype=np.float64)[:, None]
    probabilities = out_of_fold_probabilities(features, labels, 3, 2, 0, make_classifier=TwoClasses)
    assert np.all(probabilities[:, 1] == 0) and np.allclose(probabilities[:, [0, 2]], 0.5)


def test_flipped_labels_are_ranked_first_with_their_files_and_suggestions() -> None:
    features, labels = _blobs()
    given = labels.copy()
    flipped = [3, 25, 47]
    given[flipped] = [1, 2, 0]
    report = find_label_issues(_images(features, given), CLASSES, folds=5, seed=0)
    assert report.images == 60 and report.folds == 5 and report.conflicts == 0
    found = [issue.path for issue in report.issues]
    assert set(found[:3]) == {f"file_{row}.png" for row in flipped}
    first = {issue.path: issue for issue in report.issues}
    assert first["file_3.png"].given == "bee" and first["file_3.png"].suggested == "ant"
    assert first["file_25.png"].given == "cat" and first["file_25.png"].suggested == "bee"
    scores = [issue.score for issue in report.issues]
    assert scores == sorted(scores) and all(0 <= score < 0.5 for score in scores[:3])
    assert all(issue.issue == SUSPECT and issue.split == "train" for issue in report.issues)


def test_the_ranking_does_not_depend_on_the_store_row_order() -> None:
    features, labels = _blobs(seed=2)
    labels[[4, 30]] = [2, 0]
    images = _images(features, labels)
    order = np.random.default_rng(0).permutation(len(labels))
    shuffled = ScoredImages(*(np.asarray(part)[order] for part in (
        images.features, images.labels, images.digests, images.splits, images.paths
    )))  # fmt: skip
    first = find_label_issues(images, CLASSES, 5, 7).issues
    second = find_label_issues(shuffled, CLASSES, 5, 7).issues
    assert first == second and first


def test_rank_suspects_uses_cleanlab_and_sorts_by_label_quality() -> None:
    labels = np.array([0] * 10 + [1] * 10)
    probabilities = np.where(labels[:, None] == np.arange(2), 0.95, 0.05)
    probabilities[[2, 15]] = [[0.1, 0.9], [0.97, 0.03]]  # two confident contradictions
    ranked, scores = rank_suspects(labels, probabilities)
    assert list(ranked) == [15, 2]
    assert scores[15] == pytest.approx(0.03) and scores[2] == pytest.approx(0.1)


def test_conflicts_come_first_and_test_ones_are_only_counted() -> None:
    features, labels = _blobs()
    images = _images(features, labels)
    conflicts = [
        {
            "digest": images.digests[5],
            "files": [{"path": "bee/x.png", "class": "bee"}, {"path": "ant/x.png", "class": "ant"}],
        },
        {"digest": "f" * 32, "files": [{"path": "a/t.png", "class": "ant"}]},
    ]
    report = find_label_issues(images, CLASSES, 5, 0, conflicts)
    assert report.test_conflicts == 1 and report.conflicts == 2
    top = report.issues[:2]
    assert [(i.path, i.given, i.suggested, i.score, i.issue) for i in top] == [
        ("ant/x.png", "ant", "bee", 0.0, CONFLICT),
        ("bee/x.png", "bee", "ant", 0.0, CONFLICT),
    ]
    # The conflicting image is not listed a second time as a suspect.
    assert [issue.digest for issue in report.issues].count(images.digests[5]) == 2


def test_conflicts_dropped_from_the_store_are_listed_with_their_files() -> None:
    """validate.label_conflicts: drop leaves the copies out of every split: the files to fix
    are still listed, first, with split `dropped`."""
    features, labels = _blobs()
    dropped = [
        {
            "digest": "e" * 32,
            "files": [{"path": "ant/y.png", "class": "ant"}, {"path": "bee/y.png", "class": "bee"}],
        }
    ]
    report = find_label_issues(_images(features, labels), CLASSES, 5, 0, (), dropped)
    assert [(i.path, i.split, i.suggested, i.issue) for i in report.issues[:2]] == [
        ("ant/y.png", "dropped", "bee", CONFLICT),
        ("bee/y.png", "dropped", "ant", CONFLICT),
    ]
    assert report.test_conflicts == 0


def test_conflict_with_three_classes_suggests_the_other_two() -> None:
    issues, elsewhere = conflict_issues(
        [{"digest": "d", "files": [{"path": p, "class": p[0]} for p in ("a/1", "b/1", "c/1")]}],
        {"d": "val"},
    )
    assert elsewhere == 0
    assert [(i.given, i.suggested, i.split) for i in issues] == [
        ("a", "b | c", "val"),
        ("b", "a | c", "val"),
        ("c", "a | b", "val"),
    ]


def test_a_small_class_keeps_the_folds_and_is_still_scored_out_of_fold(caplog) -> None:
    """One class of 3 images does not cut every class's folds to 3: its images spread over
    3 of the 5 folds, each scored by a model fitted without it."""
    features, labels = _blobs(per_class=12)
    keep = np.r_[0:12, 12:24, 24:27]  # "cat" keeps 3 images
    with caplog.at_level(logging.WARNING):
        report = find_label_issues(_images(features[keep], labels[keep]), CLASSES, 5, 0)
    assert report.folds == 5 and "folds instead of" not in caplog.text
    assert report.images == len(keep) and not report.unscored


def test_the_folds_drop_only_when_every_class_is_smaller(caplog) -> None:
    features, labels = _blobs(per_class=3)
    with caplog.at_level(logging.WARNING):
        report = find_label_issues(_images(features, labels), CLASSES, 5, 0)
    assert report.folds == 3
    assert "3 folds instead of 5" in caplog.text


def test_a_class_of_one_image_is_left_out_not_fatal(caplog) -> None:
    features, labels = _blobs(per_class=10)
    keep = np.r_[0:20, 20]  # "cat" has a single image
    with caplog.at_level(logging.WARNING):
        report = find_label_issues(_images(features[keep], labels[keep]), CLASSES, 5, 0)
    assert report.unscored == ["cat"] and report.folds == 5
    assert all(issue.given != "cat" for issue in report.issues)
    assert "cat" in caplog.text and "cannot be scored out of fold" in caplog.text
    assert plan_folds(np.array([0, 0, 1]), 5)[0] == 2


def test_a_single_scorable_class_finds_nothing(caplog) -> None:
    features, _ = _blobs(per_class=4)
    labels = np.array([0] * 11 + [1])
    with caplog.at_level(logging.WARNING):
        report = find_label_issues(_images(features, labels), CLASSES, 5, 0)
    assert report.issues == [] and "fewer than two classes" in caplog.text


def test_pooled_features_average_the_spatial_map(tmp_path, monkeypatch) -> None:
    maps = np.arange(5 * 2 * 3 * 4, dtype=np.float32).reshape(5, 2, 3, 4)
    np.save(tmp_path / "train.npy", maps)
    monkeypatch.setattr(core, "FEATURE_CHUNK_BYTES", 2 * maps[0].nbytes)  # three chunks
    assert np.allclose(pool_features(tmp_path / "train.npy", 5, "train"), maps.mean(axis=(1, 2)))


def test_missing_or_stale_features_are_named(tmp_path) -> None:
    with pytest.raises(DataError, match=r"train\.npy not found.*dvc repro features"):
        pool_features(tmp_path / "train.npy", 3, "train")
    np.save(tmp_path / "val.npy", np.zeros((4, 2), np.float32))
    with pytest.raises(DataError, match=r"4 feature rows for the 3 images of split 'val'"):
        pool_features(tmp_path / "val.npy", 3, "val")


def test_sources_give_each_copy_of_a_digest_its_own_file(tmp_path) -> None:
    table = tmp_path / "sources.csv"
    write_csv(
        table,
        SOURCES_COLUMNS,
        [("d1", "train", "a/2.png"), ("d1", "train", "a/1.png"), ("d2", "val", "=evil.png"),
         ("d3", "test", "b/secret.png")],
    )  # fmt: skip
    sources = read_sources(table)
    # The test split's rows are not read; a cell escaped for spreadsheets is read back as is.
    assert sources == {("train", "d1"): ["a/1.png", "a/2.png"], ("val", "d2"): ["=evil.png"]}
    paths = assign_paths(["train", "val", "train", "val"], ["d1", "d2", "d1", "dx"], sources)
    assert list(paths) == ["a/1.png", "=evil.png", "a/2.png", ""]
    (tmp_path / "bad.csv").write_text("digest,path\n")
    with pytest.raises(DataError, match="expected .'digest', 'split', 'path'."):
        read_sources(tmp_path / "bad.csv")


def test_split_writes_a_sorted_sources_table_and_rewrites_it_identically(tmp_path) -> None:
    folder = tmp_path / "images"
    fakes.write_image_folder(folder, {"apple": 6, "banana": 6})
    raw = tmp_path / "raw"
    snapshot_image_folder(folder, raw)
    config = DataConfig(dataset="image_folder", image_folder=str(folder), image_size=8)
    sources = tmp_path / "sources.csv"
    prepare_splits(
        config, raw, tmp_path / "prepared", tmp_path / "skipped.csv", sources_file=sources
    )
    first = sources.read_bytes()
    with open(sources, newline="") as stream:
        rows = list(csv.reader(stream))
    assert tuple(rows[0]) == SOURCES_COLUMNS and len(rows) == 13
    body = rows[1:]
    order = {"train": 0, "val": 1, "test": 2}
    assert body == sorted(body, key=lambda row: (order[row[1]], row[2], row[0]))
    suffixes = ("png", "jpg", "bmp", "webp")  # tests.fakes.write_image_folder's, in turn
    files = {f"{name}/{i:04d}.{suffixes[i % 4]}" for name in ("apple", "banana") for i in range(6)}
    assert {row[2] for row in body} == files
    # The store's digests are the table's: every stored image has its file.
    stored = {
        (name, str(digest))
        for name, split in open_splits(tmp_path / "prepared").items()
        for digest in split.digests()
    }
    assert {(row[1], row[0]) for row in body} == stored
    prepare_splits(
        config, raw, tmp_path / "prepared", tmp_path / "skipped.csv", sources_file=sources
    )
    assert sources.read_bytes() == first


# --- the stage ----------------------------------------------------------------------------------


def _project(tmp_path: Path, monkeypatch, flipped=(2, 31)) -> tuple[Path, np.ndarray]:
    """A store of three classes of distinct images (train and val), their features as the
    features stage writes them (rows, 1, 1, channels), a sources table and params.yaml."""
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    features, labels = _blobs(per_class=20)
    given = labels.copy()
    given[list(flipped)] = (labels[list(flipped)] + 1) % 3
    # The moved images are typical of their true class (at its centre): cleanlab counts an
    # image as another class's only where it is at least as sure as that class's average.
    features[list(flipped)] = np.eye(3, features.shape[1])[labels[list(flipped)]] * 12.0
    x = rng.integers(0, 256, size=(len(labels), 4, 4, 3), dtype=np.uint8)
    halves = {"train": np.arange(0, 60, 2), "val": np.arange(1, 60, 2)}
    test = (x[:3], np.arange(3))
    write_store_from_arrays(
        tmp_path / "prepared",
        {**{name: (x[rows], given[rows]) for name, rows in halves.items()}, "test": test},
        CLASSES,
    )
    write_json(tmp_path / "prepared" / PLAN_FILE, {"label_conflicts": []})
    (tmp_path / "features").mkdir()
    rows_of = {}
    for name, rows in halves.items():
        np.save(tmp_path / "features" / f"{name}.npy", features[rows][:, None, None, :])
        rows_of.update({int(row): name for row in rows})
    digests = image_digests(x)
    write_csv(
        tmp_path / "sources.csv",
        SOURCES_COLUMNS,
        sorted((digests[row], name, f"{CLASSES[given[row]]}/{row:03d}.png")
               for row, name in rows_of.items()),
    )  # fmt: skip
    return tmp_path, given


def _run_stage(root: Path, *extra: str) -> list[dict]:
    with pytest.raises(SystemExit) as exit_:
        from pipeline.entry import run_entry

        run_entry(
            stage.main,
            "stage 'label_issues'",
            ["--prepared", str(root / "prepared"), "--features", str(root / "features"),
             "--out", str(root / "label_issues.csv"), *extra],
        )  # fmt: skip
    assert exit_.value.code == 0
    with open(root / "label_issues.csv", newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames) == COLUMNS
        return list(reader)


def test_stage_writes_the_suspects_worst_first_with_their_files(tmp_path, monkeypatch, caplog):
    root, given = _project(tmp_path, monkeypatch)
    with caplog.at_level(logging.INFO):
        rows = _run_stage(root, "--sources", str(root / "sources.csv"))
    top = {row["path"] for row in rows[:2]}
    assert top == {f"{CLASSES[given[2]]}/002.png", f"{CLASSES[given[31]]}/031.png"}
    assert [float(row["score"]) for row in rows] == sorted(float(row["score"]) for row in rows)
    assert {row["split"] for row in rows} <= {"train", "val"}
    assert rows[0]["given"] != rows[0]["suggested"]
    assert "suspect(s) among 60 train and val images; the worst:" in caplog.text


def test_stage_without_sources_leaves_the_path_empty(tmp_path, monkeypatch) -> None:
    root, _ = _project(tmp_path, monkeypatch)
    rows = _run_stage(root)
    assert rows and all(row["path"] == "" and len(row["digest"]) == 32 for row in rows)


def test_stage_never_reads_the_test_split(tmp_path, monkeypatch) -> None:
    root, _ = _project(tmp_path, monkeypatch)
    opened = []
    real = core.open_split
    monkeypatch.setattr(core, "open_split", lambda r, name: opened.append(name) or real(r, name))
    _run_stage(root)
    assert sorted(opened) == ["train", "val"]
    assert read_json(root / "prepared" / PLAN_FILE) == {"label_conflicts": []}


def test_stage_names_missing_features_without_a_traceback(tmp_path, monkeypatch, capsys):
    root, _ = _project(tmp_path, monkeypatch)
    (root / "features" / "val.npy").unlink()
    with pytest.raises(SystemExit) as exit_:
        from pipeline.entry import run_entry

        run_entry(
            stage.main,
            "stage 'label_issues'",
            ["--prepared", str(root / "prepared"), "--features", str(root / "features"),
             "--out", str(root / "label_issues.csv")],
        )  # fmt: skip
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert "val.npy not found" in error and "dvc repro features" in error
    assert "Traceback" not in error and not (root / "label_issues.csv").exists()
