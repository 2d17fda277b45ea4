"""Links and impostors in a user's image folder: links that lead outside it are skipped and
listed unless data.follow_links, loops end, and nothing reaches data/raw before its first bytes
say it is an image."""

from __future__ import annotations

import csv
import os
import signal
from pathlib import Path

import pytest
from PIL import Image

from pipeline.config import DataConfig
from pipeline.datasets.folders import (
    BROKEN_LINK,
    LINK_OUTSIDE,
    NOT_AN_IMAGE,
    SNAPSHOT_SKIPPED_FILE,
    is_image_signature,
    read_snapshot_skipped,
    scan_image_folder,
    snapshot_image_folder,
)
from pipeline.stages.split import prepare_splits
from tests import fakes


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A folder of two classes, and an `outside` folder holding an image and a secret."""
    root = tmp_path / "images"
    fakes.write_image_folder(root, {"circle": 8, "square": 8})
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (20, 20), (250, 0, 0)).save(outside / "red.png")
    (outside / "secret.png").write_text("password=hunter2\n")
    (outside / "more").mkdir()
    Image.new("RGB", (20, 20), (0, 0, 250)).save(outside / "more" / "blue.png")
    return root, outside


@pytest.fixture(autouse=True)
def _no_hang():
    """A walk that loops fails the test instead of hanging the suite."""
    signal.signal(signal.SIGALRM, lambda *_: pytest.fail("the folder walk did not end"))
    signal.alarm(30)
    yield
    signal.alarm(0)


def _snapshot_list(raw: Path) -> dict[str, str]:
    return dict(read_snapshot_skipped(raw))


def test_links_outside_the_folder_are_skipped_listed_and_never_copied(layout, tmp_path):
    root, outside = layout
    os.symlink(outside / "red.png", root / "circle" / "red.png")
    os.symlink(outside / "secret.png", root / "circle" / "secret.png")
    os.symlink(outside / "more", root / "square" / "more")
    os.symlink(outside, root / "stolen")  # a class folder that is a link out
    raw = tmp_path / "raw"
    scan = snapshot_image_folder(root, raw)
    assert scan.class_names == ["circle", "square"]
    expected = {
        "circle/red.png": LINK_OUTSIDE,
        "circle/secret.png": LINK_OUTSIDE,
        "square/more": LINK_OUTSIDE,
        "stolen": LINK_OUTSIDE,
    }
    assert _snapshot_list(raw) == expected
    copied = {str(p.relative_to(raw)) for p in raw.rglob("*") if p.is_file()}
    own = {
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and not p.is_symlink() and not p.parent.is_symlink()
    }
    assert len(own) == 16 and copied == own | {SNAPSHOT_SKIPPED_FILE}
    assert not any(b"hunter2" in p.read_bytes() for p in raw.rglob("*") if p.is_file())
    # The split lists them in reports/data/skipped.csv, with the reason.
    config = DataConfig(dataset="image_folder", image_folder=str(root), image_size=12)
    plan = prepare_splits(config, raw, tmp_path / "prepared", tmp_path / "skipped.csv")
    with open(tmp_path / "skipped.csv", newline="") as stream:
        rows = {row["path"]: row["reason"] for row in csv.DictReader(stream)}
    assert rows == expected
    assert plan["images"] == 16 and plan["skipped"] == 4


def test_follow_links_reads_outside_images_but_never_a_text_file(layout, tmp_path):
    root, outside = layout
    os.symlink(outside / "red.png", root / "circle" / "red.png")
    os.symlink(outside / "secret.png", root / "circle" / "secret.png")
    os.symlink(outside / "more", root / "square" / "more")
    raw = tmp_path / "raw"
    scan = snapshot_image_folder(root, raw, follow_links=True)
    assert (raw / "circle" / "red.png").read_bytes() == (outside / "red.png").read_bytes()
    assert (raw / "square" / "more" / "blue.png").is_file()
    assert not (raw / "circle" / "secret.png").exists()
    assert _snapshot_list(raw) == {"circle/secret.png": NOT_AN_IMAGE}
    assert len(scan.files["circle"]) == 9 and len(scan.files["square"]) == 9


def test_a_text_file_named_png_is_not_copied_and_is_listed(layout, tmp_path):
    root, _ = layout
    (root / "circle" / "fake.png").write_text("<html>not an image</html>")
    (root / "square" / "empty.jpg").write_bytes(b"")
    raw = tmp_path / "raw"
    snapshot_image_folder(root, raw)
    assert (
        not (raw / "circle" / "fake.png").exists() and not (raw / "square" / "empty.jpg").exists()
    )
    assert _snapshot_list(raw) == {
        "circle/fake.png": NOT_AN_IMAGE,
        "square/empty.jpg": NOT_AN_IMAGE,
    }


@pytest.mark.parametrize("follow_links", [False, True])
def test_symlink_loops_end(layout, tmp_path, follow_links):
    root, _ = layout
    os.symlink("..", root / "circle" / "up")  # a folder that contains itself
    os.symlink(root, root / "square" / "all")  # the whole folder, inside itself
    os.symlink("b.png", root / "circle" / "a.png")  # a.png -> b.png -> a.png
    os.symlink("a.png", root / "circle" / "b.png")
    scan = scan_image_folder(root, follow_links=follow_links)
    skipped = dict(scan.skipped)
    assert skipped["circle/a.png"] == skipped["circle/b.png"] == BROKEN_LINK
    # Each real folder is walked once per class: the loops add no file twice to a class.
    assert len(scan.files["circle"]) == len(set(map(os.path.realpath, scan.files["circle"])))
    snapshot_image_folder(root, tmp_path / "raw", follow_links=follow_links)


def test_links_inside_the_folder_are_followed(layout, tmp_path):
    root, _ = layout
    (root / "shared").mkdir()
    Image.new("RGB", (20, 20), (9, 9, 9)).save(root / "shared" / "grey.png")
    os.symlink(root / "shared" / "grey.png", root / "circle" / "grey.png")
    scan = snapshot_image_folder(root, tmp_path / "raw")
    assert (tmp_path / "raw" / "circle" / "grey.png").is_file()
    assert scan.skipped == []


def test_the_snapshot_keeps_its_old_call():
    """The download stage calls snapshot_image_folder(root, raw_dir); follow_links is a keyword
    with a default."""
    import inspect

    parameters = inspect.signature(snapshot_image_folder).parameters
    assert list(parameters)[:2] == ["root", "raw_dir"]
    assert parameters["follow_links"].default is False
    assert parameters["follow_links"].kind is inspect.Parameter.KEYWORD_ONLY


@pytest.mark.parametrize(
    ("head", "image"),
    [
        (b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", True),
        (b"\xff\xd8\xff\xe0\0\x10JFIF", True),
        (b"GIF89a\x01\0", True),
        (b"BM6\0\0\0", True),
        (b"RIFF\x24\0\0\0WEBPVP8 ", True),
        (b"RIFF\x24\0\0\0WAVEfmt ", False),
        (b"<html>", False),
        (b"", False),
    ],
)
def test_image_signatures(head, image):
    assert is_image_signature(head) is image


def test_a_class_folder_named_like_an_answer_column_is_refused_at_every_scan(tmp_path) -> None:
    """download and the retraining fingerprint scan the folder too, not only check_params (which
    DVC re-runs only when params.yaml changes), so the name is refused before any copying."""
    from pipeline.errors import DataError

    for name in ("cat", "error"):
        (tmp_path / "images" / name).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(tmp_path / "images" / name / "a.png")
    with pytest.raises(DataError, match="'error' is the name of a column"):
        scan_image_folder(tmp_path / "images")
    with pytest.raises(DataError, match="'error'"):
        snapshot_image_folder(tmp_path / "images", tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
