"""Fetching source files: verified by SHA-256, never left half-written under the final name."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.datasets.download import fetch_file, sha256_of
from pipeline.datasets.sources import DIGITS, SourceFile
from pipeline.errors import DataError


def test_bundled_digits_are_copied_and_verified(tmp_path: Path) -> None:
    path = fetch_file(DIGITS.files[0], tmp_path)
    assert path == tmp_path / "digits.csv.gz"
    assert sha256_of(path) == DIGITS.files[0].sha256


def test_checksum_mismatch_keeps_nothing_and_names_both_hashes(tmp_path: Path) -> None:
    wrong = SourceFile("digits.csv.gz", DIGITS.files[0].url, "0" * 64)
    with pytest.raises(DataError) as error:
        fetch_file(wrong, tmp_path)
    assert "0" * 64 in str(error.value) and DIGITS.files[0].sha256 in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_corrupted_local_copy_is_replaced(tmp_path: Path) -> None:
    (tmp_path / "digits.csv.gz").write_bytes(b"truncated")
    path = fetch_file(DIGITS.files[0], tmp_path)
    assert sha256_of(path) == DIGITS.files[0].sha256


def test_missing_package_resource_is_a_clear_error(tmp_path: Path) -> None:
    absent = SourceFile("x.csv", "package://sklearn/datasets/data/absent.csv", "0" * 64)
    with pytest.raises(DataError, match="no such file in the installed package 'sklearn'"):
        fetch_file(absent, tmp_path)
