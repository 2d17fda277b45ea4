"""A user's own folder of class subfolders: its layout is checked, bad images are listed or
fatal, and the snapshot under data/raw is what gets split."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig
from pipeline.datasets.folders import scan_image_folder, snapshot_image_folder
from pipeline.errors import DataError
from pipeline.stages.split import prepare_splits
from pipeline.store import open_splits
from tests import fakes
from tests.project import run_stage_alone


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "my_images"
    fakes.write_image_folder(root, {"apple": 12, "banana": 12, "cherry": 12})
    (root / "apple" / "notes.txt").write_text("not an image")
    (root / "banana" / "nested").mkdir()
    Image.new("RGB", (30, 20), (10, 200, 10)).save(root / "banana" / "nested" / "deep.GIF")
    return root


def _split(folder: Path, tmp_path: Path, **data):
    raw = tmp_path / "raw" / "image_folder"
    snapshot_image_folder(folder, raw)
    config = DataConfig(dataset="image_folder", image_folder=str(folder), **data)
    plan = prepare_splits(config, raw, tmp_path / "prepared", tmp_path / "skipped.csv")
    return plan, open_splits(tmp_path / "prepared")


def test_folder_is_snapshot_split_and_resized(folder, tmp_path) -> None:
    plan, splits = _split(folder, tmp_path, image_size=16, val_fraction=0.25, test_fraction=0.25)
    assert splits["train"].classes == ["apple", "banana", "cherry"]
    assert plan["images"] == 37  # 36 + the nested GIF; notes.txt is not an image
    train = splits["train"].read(np.arange(len(splits["train"])))
    assert train.shape[1:] == (16, 16, 3)
    raw = tmp_path / "raw" / "image_folder"
    assert (raw / "banana" / "nested" / "deep.GIF").is_file()
    assert not (raw / "apple" / "notes.txt").exists()
    # Colour ramps by class in the generated folder: labels follow the folders.
    means = [train[splits["train"].y == k].mean() for k in range(3)]
    assert means[0] < means[1] < means[2]


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        (None, "does not exist"),
        ({"only": 3}, "has 1 class subfolder"),
        ({}, r"has 0 class subfolder\(s\) \(found: none\)"),
    ],
)
def test_bad_folder_layouts_are_named(tmp_path, layout, message) -> None:
    root = tmp_path / "images"
    if layout is not None:
        root.mkdir()
        fakes.write_image_folder(root, layout)
    with pytest.raises(DataError, match=message) as error:
        scan_image_folder(root)
    assert str(root) in str(error.value) and "data.image_folder" in str(error.value)


def test_a_class_without_images_is_named(tmp_path) -> None:
    root = tmp_path / "images"
    fakes.write_image_folder(root, {"a": 2, "b": 2})
    (root / "empty").mkdir()
    (root / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(DataError, match="class subfolder.s. empty hold no image"):
        scan_image_folder(root)


def test_corrupt_and_empty_images_are_skipped_and_listed(folder, tmp_path) -> None:
    (folder / "apple" / "zero.jpg").write_bytes(b"")
    (folder / "cherry" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    plan, _ = _split(folder, tmp_path, image_size=16, val_fraction=0.25, test_fraction=0.25)
    with open(tmp_path / "skipped.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert {row["path"] for row in rows} == {"apple/zero.jpg", "cherry/broken.png"}
    assert all(row["reason"] for row in rows)
    assert plan["skipped"] == 2 and plan["images"] == 37


def test_on_bad_image_fail_stops_and_names_the_file(folder, tmp_path) -> None:
    (folder / "apple" / "zero.jpg").write_bytes(b"")
    with pytest.raises(DataError, match=r"1 image\(s\) could not be decoded, e.g. apple/zero.jpg"):
        _split(folder, tmp_path, image_size=16, on_bad_image="fail")
    assert not (tmp_path / "prepared").exists()


def test_a_class_left_with_no_readable_image_is_an_error(tmp_path) -> None:
    root = tmp_path / "images"
    fakes.write_image_folder(root, {"good": 8, "other": 8})
    (root / "ruined").mkdir()
    for index in range(3):
        (root / "ruined" / f"{index}.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match="class.es. ruined have no readable image; 3 unreadable"):
        _split(root, tmp_path, image_size=16)


def test_split_stage_exits_2_without_traceback_on_a_bad_image(folder, tmp_path) -> None:
    (folder / "apple" / "zero.jpg").write_bytes(b"")
    snapshot_image_folder(folder, tmp_path / "data" / "raw" / "image_folder")
    data = {
        "dataset": "image_folder",
        "image_folder": str(folder),
        "image_size": 16,
        "on_bad_image": "fail",
    }
    result = run_stage_alone(tmp_path, "split", data, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "apple/zero.jpg" in result.stderr and "data.on_bad_image" in result.stderr
    # A failed split writes none of its outs: the list is in the message, not in skipped.csv.
    assert not (tmp_path / "reports" / "data" / "skipped.csv").exists()
    assert not (tmp_path / "data" / "prepared").exists()


def test_exif_rotated_photos_in_a_folder_are_stored_upright(tmp_path) -> None:
    root = tmp_path / "images"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for index in range(4):
            exif = Image.Exif()
            exif[0x0112] = 6
            Image.new("RGB", (40, 20), (255, 255, 255 - index)).save(
                root / name / f"{index}.jpg", exif=exif.tobytes()
            )
    _, splits = _split(
        root, tmp_path, image_size=40, resize="pad", val_fraction=0.25, test_fraction=0.25
    )
    image = splits["train"].read([0])[0]
    assert image[:, :5].max() < 30 and np.median(image[:, 15:25]) > 225
