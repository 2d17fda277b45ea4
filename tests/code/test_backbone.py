"""VGG16 weights resolution: random, file, ImageNet downloaded from a mirror, and the offline
fallbacks (auto warns and goes random; imagenet fails, saying where to put the file)."""

from __future__ import annotations

import hashlib
import logging
import socket
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.models.backbones import VGG16, resolve_weights
from tests.fixtures import write_legacy_vgg16_notop


def _closed_port_url() -> str:
    """A loopback URL nothing listens on: a download from it fails at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/{VGG16.imagenet.filename}"


def test_random_and_file_need_no_download(tmp_path: Path) -> None:
    assert resolve_weights("random").kind == "random"
    resolved = resolve_weights(str(tmp_path / "mine.h5"))
    assert (resolved.kind, resolved.path) == ("file", str(tmp_path / "mine.h5"))


def test_auto_offline_falls_back_to_random_loudly(tmp_path: Path, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="pipeline.models.backbones"):
        resolved = resolve_weights("auto", cache_dir=tmp_path, url=_closed_port_url(), timeout=5)
    assert resolved.kind == "random" and resolved.path is None
    assert (
        "RANDOM weights" in caplog.text and str(tmp_path / VGG16.imagenet.filename) in caplog.text
    )


def test_imagenet_offline_fails_naming_where_to_put_the_file(tmp_path: Path) -> None:
    with pytest.raises(PipelineError) as error:
        resolve_weights("imagenet", cache_dir=tmp_path, url=_closed_port_url(), timeout=5)
    assert str(tmp_path / VGG16.imagenet.filename) in str(error.value)
    assert not (tmp_path / VGG16.imagenet.filename).exists()


def test_imagenet_downloads_verifies_caches_and_loads(tmp_path: Path, http_server) -> None:
    served = tmp_path / "served"
    served.mkdir()
    expected = write_legacy_vgg16_notop(served / VGG16.imagenet.filename)
    md5 = hashlib.md5((served / VGG16.imagenet.filename).read_bytes()).hexdigest()
    url = f"{http_server(served)}/{VGG16.imagenet.filename}"
    cache = tmp_path / "cache"

    resolved = resolve_weights("imagenet", cache_dir=cache, url=url, known_hash=f"md5:{md5}")
    assert resolved.kind == "imagenet"
    assert Path(resolved.path) == cache / VGG16.imagenet.filename
    base = VGG16.build(32, resolved.path)
    loaded = [w for layer in base.layers for w in layer.get_weights()]
    assert all(np.array_equal(a, b) for a, b in zip(loaded, expected, strict=True))

    # The cache is reused: with the server gone, the file is still found and verified.
    again = resolve_weights(
        "imagenet", cache_dir=cache, url=_closed_port_url(), known_hash=f"md5:{md5}"
    )
    assert again.path == resolved.path


def test_imagenet_with_wrong_checksum_is_refused(tmp_path: Path, http_server) -> None:
    served = tmp_path / "served"
    served.mkdir()
    (served / VGG16.imagenet.filename).write_bytes(b"not the weights")
    url = f"{http_server(served)}/{VGG16.imagenet.filename}"
    with pytest.raises(PipelineError, match="md5"):
        resolve_weights(
            "imagenet", cache_dir=tmp_path / "cache", url=url, known_hash="md5:" + "0" * 32
        )
    assert not (tmp_path / "cache" / VGG16.imagenet.filename).exists()
