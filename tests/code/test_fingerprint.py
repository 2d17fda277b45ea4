"""New-data detection for `pipeline retrain`: content hashes, not timestamps."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.datasets.fingerprint import compare_fingerprints, fingerprint_dataset
from tests import fakes


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    fakes.write_image_folder(root, {"red": 3, "blue": 3}, size=8)
    return root


def _fingerprint(folder: Path) -> dict:
    return fingerprint_dataset("image_folder", folder, None, {})


def test_an_unchanged_folder_is_no_new_data_even_when_touched(folder: Path) -> None:
    before = _fingerprint(folder)
    for path in folder.rglob("*.*"):
        os.utime(path, (1e9, 1e9))
    change = compare_fingerprints(before, _fingerprint(folder))
    assert not change.changed
    assert "no new data" in change.summary


def test_added_removed_and_modified_images_are_each_seen(folder: Path) -> None:
    before = _fingerprint(folder)
    images = sorted((folder / "red").iterdir())
    images[0].unlink()
    stat = images[1].stat()
    images[1].write_bytes(images[2].read_bytes())
    os.utime(images[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same timestamp, new content
    for index, source in enumerate(sorted((folder / "blue").iterdir())[:2]):
        (folder / "blue" / f"new-{index}{source.suffix}").write_bytes(source.read_bytes())
    change = compare_fingerprints(before, _fingerprint(folder))
    assert change.changed
    assert change.removed == (str(images[0].relative_to(folder)),)
    assert change.modified == (str(images[1].relative_to(folder)),)
    assert len(change.added) == 2 and all(name.startswith("blue/") for name in change.added)
    assert "2 added, 1 removed, 1 modified image(s)" in change.summary


def test_a_new_checksum_for_a_download_is_new_data() -> None:
    before = fingerprint_dataset("mnist", Path("unused"), None, {})
    sources = {"mnist": _Source(url="https://example.org/mnist.npz", sha256="a" * 64)}
    change = compare_fingerprints(before, fingerprint_dataset("mnist", Path(), None, sources))
    assert change.changed and change.modified == ("mnist.npz",)
    assert "1 modified source file(s)" in change.summary


def test_no_record_and_another_dataset_are_new_data() -> None:
    digits = fingerprint_dataset("digits", Path("unused"), None, {})
    assert compare_fingerprints(None, digits).changed
    assert not compare_fingerprints(digits, digits).changed
    mnist = fingerprint_dataset("mnist", Path("unused"), None, {})
    assert "changed from digits to mnist" in compare_fingerprints(digits, mnist).summary


class _Source:
    def __init__(self, url: str, sha256: str) -> None:
        self.url, self.sha256 = url, sha256
