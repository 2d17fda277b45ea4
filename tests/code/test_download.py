"""Fetching source files: pooch downloads verified by SHA-256, cached, retried, mirrored, and
never left half-written; bad downloads end in one clear error and leave earlier data alone."""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path

import pytest

from pipeline.datasets.fetch import (
    SourceOverride,
    data_cache_dir,
    fetch_dataset,
    fetch_file,
    resolve_source,
)
from pipeline.datasets.sources import DATASETS, DIGITS, FASHION_MNIST, MINI_CIFAR, MNIST, SourceFile
from pipeline.errors import DataError
from pipeline.store import sha256_of
from tests import fakes


@pytest.fixture
def served(tmp_path: Path) -> Path:
    """A generated mnist.npz under served/mnist/, as a mirror lays it out."""
    folder = tmp_path / "served" / "mnist"
    folder.mkdir(parents=True)
    fakes.write_mnist_npz(folder / "mnist.npz")
    return folder.parent


def _spec_for(served: Path, url: str | None = None):
    source = dataclasses.replace(
        MNIST.files[0], url=url, sha256=sha256_of(served / "mnist" / "mnist.npz")
    )
    return dataclasses.replace(MNIST, files=(source,))


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def test_bundled_digits_are_copied_and_verified(tmp_path: Path) -> None:
    paths = fetch_dataset(DIGITS, tmp_path / "raw" / "digits", cache_dir=tmp_path / "cache")
    assert paths == [tmp_path / "raw" / "digits" / "digits.csv.gz"]
    assert sha256_of(paths[0]) == DIGITS.files[0].sha256


def test_package_checksum_mismatch_keeps_nothing_and_names_both_hashes(tmp_path: Path) -> None:
    wrong = SourceFile("digits.csv.gz", DIGITS.files[0].url, "0" * 64)
    with pytest.raises(DataError) as error:
        fetch_file(wrong, tmp_path)
    assert "0" * 64 in str(error.value) and DIGITS.files[0].sha256 in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_download_lands_in_the_cache_and_is_reused(tmp_path, served, http_server) -> None:
    base = http_server(served)
    spec = _spec_for(served, f"{base}/mnist/mnist.npz")
    cache = tmp_path / "cache"
    fetch_dataset(spec, tmp_path / "raw" / "mnist", cache_dir=cache)
    fetch_dataset(spec, tmp_path / "other_project" / "mnist", cache_dir=cache)
    assert http_server.requests == {"/mnist/mnist.npz": 1}  # the second project used the cache
    assert sha256_of(tmp_path / "other_project" / "mnist" / "mnist.npz") == spec.files[0].sha256
    assert _leftovers(cache) == ["mnist.npz"]


def test_checksum_mismatch_deletes_the_download_names_url_and_hashes_and_keeps_old_raw(
    tmp_path, served, http_server
) -> None:
    base = http_server(served)
    raw = tmp_path / "raw" / "mnist"
    raw.mkdir(parents=True)
    (raw / "mnist.npz").write_bytes(b"the earlier, good copy")
    url = f"{base}/mnist/mnist.npz"
    spec = dataclasses.replace(MNIST, files=(dataclasses.replace(MNIST.files[0], url=url),))
    with pytest.raises(DataError) as error:
        fetch_dataset(spec, raw, cache_dir=tmp_path / "cache", retries=0)
    message = str(error.value)
    actual = sha256_of(served / "mnist" / "mnist.npz")
    expected = MNIST.files[0].sha256
    assert message.startswith(f"checksum mismatch for {url}: expected SHA-256 {expected}, got ")
    assert f"got {actual}. The download was deleted." in message
    assert _leftovers(tmp_path / "cache") == []
    assert (raw / "mnist.npz").read_bytes() == b"the earlier, good copy"
    assert sorted(p.name for p in raw.parent.iterdir()) == ["mnist"]  # no staging folder left


def test_checksum_mismatch_from_a_file_url_names_the_actual_hash(tmp_path, served) -> None:
    url = f"file://{served}/mnist/mnist.npz"
    source = dataclasses.replace(MNIST.files[0], url=url)
    with pytest.raises(DataError, match=r"checksum mismatch for file://") as error:
        fetch_file(source, tmp_path / "cache", retries=0)
    actual = sha256_of(served / "mnist" / "mnist.npz")
    assert f"expected SHA-256 {MNIST.files[0].sha256}, got {actual}." in str(error.value)
    assert _leftovers(tmp_path / "cache") == []


def test_a_value_error_that_is_no_checksum_mismatch_keeps_its_own_message(tmp_path) -> None:
    source = dataclasses.replace(MNIST.files[0], url="nosuch://host/mnist.npz")
    with pytest.raises(DataError, match=r"^nosuch://host/mnist\.npz: ") as error:
        fetch_file(source, tmp_path / "cache", retries=0)
    assert "checksum mismatch" not in str(error.value)


def test_http_404_is_a_clear_error(tmp_path, served, http_server) -> None:
    base = http_server(served)
    spec = _spec_for(served, f"{base}/nowhere/mnist.npz")
    with pytest.raises(DataError, match=r"/nowhere/mnist.npz answered HTTP 404"):
        fetch_dataset(spec, tmp_path / "raw" / "mnist", cache_dir=tmp_path / "cache", retries=0)
    assert not (tmp_path / "raw" / "mnist").exists()


def test_unreachable_host_is_a_clear_error(tmp_path, served) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = _spec_for(served, f"http://127.0.0.1:{port}/mnist/mnist.npz")
    with pytest.raises(DataError, match=rf"cannot reach http://127.0.0.1:{port}/mnist/mnist.npz"):
        fetch_dataset(spec, tmp_path / "raw" / "mnist", cache_dir=tmp_path / "cache", retries=0)


def test_truncated_download_is_refused_and_nothing_is_kept(tmp_path, served, http_server) -> None:
    base = http_server(served, truncate=("/mnist/mnist.npz",))
    spec = _spec_for(served, f"{base}/mnist/mnist.npz")
    with pytest.raises(DataError, match=r"cut off before the end \(truncated\) in each of 2"):
        fetch_dataset(spec, tmp_path / "raw" / "mnist", cache_dir=tmp_path / "cache", retries=1)
    assert http_server.requests["/mnist/mnist.npz"] == 2
    assert _leftovers(tmp_path / "cache") == []
    assert not (tmp_path / "raw" / "mnist").exists()


def test_an_interrupted_download_is_retried(tmp_path, served, http_server) -> None:
    base = http_server(served, truncate_once=("/mnist/mnist.npz",))
    spec = _spec_for(served, f"{base}/mnist/mnist.npz")
    fetch_dataset(spec, tmp_path / "raw" / "mnist", cache_dir=tmp_path / "cache", retries=1)
    assert http_server.requests["/mnist/mnist.npz"] == 2
    assert sha256_of(tmp_path / "raw" / "mnist" / "mnist.npz") == spec.files[0].sha256


def test_mirror_base_url_serves_dataset_slash_file(tmp_path, served, http_server) -> None:
    base = http_server(served)
    spec = _spec_for(served, url="https://unreachable.invalid/mnist.npz")
    fetch_dataset(spec, tmp_path / "raw" / "mnist", mirror=base + "/", cache_dir=tmp_path / "c")
    assert http_server.requests == {"/mnist/mnist.npz": 1}


def test_per_dataset_url_overrides_the_mirror(tmp_path, served, http_server) -> None:
    base = http_server(served)
    (served / "elsewhere").mkdir()
    (served / "elsewhere" / "copy.npz").write_bytes((served / "mnist" / "mnist.npz").read_bytes())
    spec = _spec_for(served, url="https://unreachable.invalid/mnist.npz")
    overrides = {"mnist": SourceOverride(url=f"{base}/elsewhere/copy.npz")}
    fetch_dataset(
        spec,
        tmp_path / "raw" / "mnist",
        mirror="https://also-unreachable.invalid",
        overrides=overrides,
        cache_dir=tmp_path / "c",
    )
    assert http_server.requests == {"/elsewhere/copy.npz": 1}
    assert (tmp_path / "raw" / "mnist" / "mnist.npz").is_file()  # stored under its real name


def test_folder_url_override_for_a_multi_file_dataset(tmp_path) -> None:
    override = SourceOverride(url="https://mirror.example/fmnist/")
    urls = [resolve_source(FASHION_MNIST, f, None, override).url for f in FASHION_MNIST.files]
    assert urls[0] == "https://mirror.example/fmnist/train-images-idx3-ubyte.gz"
    assert len(set(urls)) == 4


def test_file_url_mirror_on_a_mounted_share(tmp_path, served) -> None:
    spec = _spec_for(served, f"file://{served}/mnist/mnist.npz")
    fetch_dataset(spec, tmp_path / "raw" / "mnist", cache_dir=tmp_path / "cache")
    assert (tmp_path / "raw" / "mnist" / "mnist.npz").is_file()


def test_mini_cifar_needs_a_user_url_and_checksum() -> None:
    with pytest.raises(DataError, match=r"data.sources.mini_cifar.url"):
        resolve_source(MINI_CIFAR, MINI_CIFAR.files[0])
    only_url = SourceOverride(url="https://example.org/mini_cifar.h5")
    with pytest.raises(DataError, match=r"data.sources.mini_cifar.sha256"):
        resolve_source(MINI_CIFAR, MINI_CIFAR.files[0], None, only_url)
    both = SourceOverride(url="https://example.org/mini_cifar.h5", sha256="a" * 64)
    assert resolve_source(MINI_CIFAR, MINI_CIFAR.files[0], None, both).sha256 == "a" * 64


def test_cache_location_follows_the_environment(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PIPELINE_DATA_CACHE", str(tmp_path / "shared"))
    assert data_cache_dir() == tmp_path / "shared"
    monkeypatch.delenv("PIPELINE_DATA_CACHE")
    assert data_cache_dir().name == "image-pipeline"


def test_the_source_table_has_a_url_and_sha256_for_every_remote_file() -> None:
    for spec in DATASETS.values():
        for source in spec.files:
            if spec.name == "mini_cifar":  # no public record to copy from: see sources.py
                assert source.url is None and source.sha256 is None
                continue
            assert re.fullmatch(r"[0-9a-f]{64}", source.sha256 or ""), source
            assert source.url.startswith(("https://", "http://", "package://")), source
            assert source.url.endswith(source.filename), source
