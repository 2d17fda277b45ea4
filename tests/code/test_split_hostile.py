"""The split stage against hostile or contradictory data: identical images under two classes
(kept and recorded for the gate, or dropped and listed), and failures that must leave every
out (data/prepared, reports/data/skipped.csv) byte-identical."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

import pipeline.stages.split as split_stage
from pipeline.config import DataConfig
from pipeline.datasets.folders import snapshot_image_folder
from pipeline.errors import DataError
from pipeline.stages.split import find_label_conflicts, prepare_splits
from pipeline.store import NpyRows, open_splits, read_store_index
from tests import fakes

BROKEN_PNG = b"\x89PNG\r\n\x1a\n not really a png"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    fakes.write_image_folder(root, {"circle": 12, "square": 12, "triangle": 12})
    return root


def _config(folder: Path, **data) -> DataConfig:
    options = {"image_size": 16, "val_fraction": 0.25, "test_fraction": 0.25} | data
    return DataConfig(dataset="image_folder", image_folder=str(folder), **options)


def _split(folder: Path, project: Path, label_conflicts: str = "fail", **data) -> dict:
    snapshot_image_folder(folder, project / "raw")
    return prepare_splits(
        _config(folder, **data),
        project / "raw",
        project / "prepared",
        project / "reports" / "skipped.csv",
        label_conflicts=label_conflicts,
    )


def _rows(project: Path) -> list[dict]:
    with open(project / "reports" / "skipped.csv", newline="") as stream:
        return list(csv.DictReader(stream))


def _outs(project: Path) -> dict[str, bytes]:
    """Every file of the split's outs, by path."""
    files = sorted((project / "prepared").rglob("*")) + [project / "reports" / "skipped.csv"]
    return {str(path.relative_to(project)): path.read_bytes() for path in files if path.is_file()}


def _conflicted(folder: Path) -> None:
    """The same file under circle/ and square/ (and a second copy under circle/)."""
    shutil.copy(folder / "circle" / "0000.png", folder / "square" / "same.png")
    shutil.copy(folder / "circle" / "0000.png", folder / "circle" / "again.png")


def test_identical_images_under_two_classes_are_kept_and_recorded_for_the_gate(
    folder, tmp_path
) -> None:
    _conflicted(folder)
    plan = _split(folder, tmp_path)
    assert plan["images"] == 38  # kept: the gate, not the split, refuses them
    [conflict] = plan["label_conflicts"]
    assert conflict["files"] == [
        {"path": "circle/0000.png", "class": "circle"},
        {"path": "circle/again.png", "class": "circle"},
        {"path": "square/same.png", "class": "square"},
    ]
    stored = {
        str(d) for split in open_splits(tmp_path / "prepared").values() for d in split.digests()
    }
    assert conflict["digest"] in stored
    assert _rows(tmp_path) == []


def test_identical_images_under_two_classes_are_dropped_and_listed(folder, tmp_path) -> None:
    _conflicted(folder)
    plan = _split(folder, tmp_path, label_conflicts="drop")
    assert plan["images"] == 35 and plan["label_conflicts"] == [] and plan["skipped"] == 3
    rows = {row["path"]: row["reason"] for row in _rows(tmp_path)}
    assert set(rows) == {"circle/0000.png", "circle/again.png", "square/same.png"}
    # Each names its own class and every other file with its class.
    assert "class circle" in rows["circle/0000.png"]
    assert "square/same.png (class square)" in rows["circle/0000.png"]
    assert "circle/again.png (class circle)" in rows["circle/0000.png"]
    assert "circle/0000.png (class circle)" in rows["square/same.png"]
    # No copy reached the store.
    stored = [
        str(d) for split in open_splits(tmp_path / "prepared").values() for d in split.digests()
    ]
    assert len(stored) == len(set(stored)) == 35
    # split.json keeps them apart from the gate's list, for reports/label_issues.csv.
    (dropped,) = plan["label_conflicts_dropped"]
    assert {(item["path"], item["class"]) for item in dropped["files"]} == {
        ("circle/0000.png", "circle"),
        ("circle/again.png", "circle"),
        ("square/same.png", "square"),
    }


def test_find_label_conflicts_ignores_copies_within_one_class() -> None:
    digests = np.array(["b", "a", "b", "c", "a", "c"])
    labels = np.array([0, 1, 1, 2, 1, 2])
    [(digest, members)] = find_label_conflicts(digests, labels)
    assert digest == "b" and members.tolist() == [0, 2]
    assert find_label_conflicts(np.array([], dtype=str), np.array([], dtype=np.int64)) == []


def _break_all_of(folder: Path, name: str) -> None:
    for path in (folder / name).iterdir():
        path.unlink()
        path.with_suffix(".png").write_bytes(BROKEN_PNG)


@pytest.mark.parametrize(
    ("ruin", "data", "message"),
    [
        # Every image of a class unreadable (PNG bytes, then garbage: copied, fails to decode).
        (lambda f: _break_all_of(f, "triangle"), {}, "class.es. triangle have no readable image"),
        # Unreadable images with data.on_bad_image: fail (notes.png, left out of the snapshot as
        # no image, counts as one).
        (
            lambda f: (f / "circle" / "bad.png").write_bytes(BROKEN_PNG),
            {"on_bad_image": "fail"},
            r"2 image\(s\) could not be decoded, e.g. circle/bad.png",
        ),
        # A class of one image cannot reach three splits: named by its name, not its number.
        (
            lambda f: [p.unlink() for p in sorted((f / "square").iterdir())[1:]],
            {},
            "class square would have no image",
        ),
    ],
    ids=["empty-class", "on-bad-image-fail", "one-image-class"],
)
def test_a_failed_split_leaves_its_outs_byte_identical(folder, tmp_path, ruin, data, message):
    (folder / "circle" / "notes.png").write_text("a text file named .png")
    _split(folder, tmp_path)
    before = _outs(tmp_path)
    assert _rows(tmp_path)  # a skipped.csv with rows, to be left as it is
    ruin(folder)
    with pytest.raises(DataError, match=message) as error:
        _split(folder, tmp_path, **data)
    assert _outs(tmp_path) == before
    assert "class 1" not in str(error.value) and "class 2" not in str(error.value)
    assert not list(tmp_path.glob(".prepared*"))  # no staging or spool left behind


def test_a_shard_that_cannot_be_repaired_stops_the_split_and_changes_nothing(
    folder, tmp_path, monkeypatch
) -> None:
    _split(folder, tmp_path)
    shard = read_store_index(tmp_path / "prepared").splits["train"][0]
    images = shard.path(tmp_path / "prepared", "images")
    images.write_bytes(images.read_bytes()[:-5])
    before = _outs(tmp_path)

    class Gone(NpyRows):
        """A source that no longer gives the images it held."""

        def read(self, rows):
            return np.zeros_like(super().read(rows))

    monkeypatch.setattr(split_stage, "NpyRows", Gone)
    with pytest.raises(DataError, match=rf"shard {shard.name} \(damaged in the previous store\)"):
        _split(folder, tmp_path)
    assert _outs(tmp_path) == before


def test_skipped_csv_cells_that_a_spreadsheet_would_run_are_escaped(tmp_path) -> None:
    root = tmp_path / "images"
    fakes.write_image_folder(root, {"=HYPERLINK(1)": 12, "@cmd": 12})
    (root / "@cmd" / "+bad.png").write_bytes(BROKEN_PNG)
    (root / "=HYPERLINK(1)" / "-1.png").write_text("not an image")
    _split(root, tmp_path)
    text = (tmp_path / "reports" / "skipped.csv").read_text()
    assert "'@cmd/+bad.png" in text and "'=HYPERLINK(1)/-1.png" in text
    assert not any(line.startswith(("=", "+", "-", "@")) for line in text.splitlines())
