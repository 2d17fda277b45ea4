"""The backbone registry: name -> builder, preprocessing, layer names and weights source.

Adding a backbone is one `Backbone` entry and its builder. Importing this module stays cheap
(no Keras): `check_params` reads layer names and input limits from it before any stage runs.
Keras is imported by the builders, when a model is really built.

`backbone.weights` takes `imagenet`, `random`, a path to a notop `.h5` file, or `auto`: ImageNet
weights when they are cached or can be downloaded, otherwise random weights with a loud warning.
The resolved kind is recorded so runs and metrics say which weights they really used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ModelError, PipelineError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightsSource:
    """A notop ImageNet weights file as Keras itself downloads it, with its checksum."""

    filename: str
    url: str
    md5: str


@dataclass(frozen=True)
class Backbone:
    """A pretrained convolutional base: how to build it, feed it, and which layers it has."""

    name: str
    build: Callable[[int, str | None], object]
    """(image_size, weights file or None for random init) -> the Keras base model."""
    preprocess: Callable[[object], object]
    """Keras tensor of RGB floats in [0, 255] -> the base's expected input."""
    trainable_from: tuple[str, ...]
    """The layers with weights, where fine-tuning can start (`backbone.unfreeze_from`)."""
    min_image_size: int
    imagenet: WeightsSource


def _build_vgg16(image_size: int, weights_file: str | None):
    import keras

    base = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    if weights_file is not None:
        base.load_weights(weights_file)
    return base


# `keras.applications.vgg16.preprocess_input` ("caffe" mode): RGB -> BGR, minus ImageNet's mean.
VGG16_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)
_RGB_TO_BGR = np.eye(3, dtype=np.float32)[::-1]


def _vgg16_preprocess(x):
    """`vgg16.preprocess_input` as a frozen 1x1 linear map (channel swap, mean subtraction).

    A built-in Dense layer keeps saved models loadable without custom objects.
    """
    from keras import layers

    layer = layers.Dense(3, trainable=False, name="vgg16_preprocess")
    outputs = layer(x)
    layer.set_weights([_RGB_TO_BGR.T.copy(), -VGG16_BGR_MEAN])
    return outputs


VGG16 = Backbone(
    name="vgg16",
    build=_build_vgg16,
    preprocess=_vgg16_preprocess,
    trainable_from=tuple(
        f"block{block}_conv{conv}"
        for block, convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
        for conv in range(1, convs + 1)
    ),
    # Five 2x2 poolings: anything smaller than 32x32 pools to nothing.
    min_image_size=32,
    imagenet=WeightsSource(
        filename="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        url="https://storage.googleapis.com/tensorflow/keras-applications/vgg16/"
        "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        # The MD5 that keras.applications.vgg16 checks the file against.
        md5="6d6bbae143d832006294945121d1f1fc",
    ),
)

BACKBONES: dict[str, Backbone] = {backbone.name: backbone for backbone in (VGG16,)}
DEFAULT_BACKBONE = "vgg16"


def check_backbone_input(backbone: Backbone, image_size: int) -> None:
    """Raise ModelError if `backbone` cannot take inputs of `image_size` squared."""
    if image_size < backbone.min_image_size:
        raise ModelError(
            f"{backbone.name} needs inputs of at least {backbone.min_image_size}x"
            f"{backbone.min_image_size}, got {image_size}x{image_size}"
        )


def check_backbone_layer(backbone: Backbone, layer: str) -> None:
    """Raise ModelError if fine-tuning `backbone` cannot start at `layer`: it must be one of
    its layers with weights (unfreezing from a pooling layer would train the head alone)."""
    if layer not in backbone.trainable_from:
        raise ModelError(
            f"{layer!r} is not a layer of {backbone.name} with weights to fine-tune; choose one "
            f"of {', '.join(backbone.trainable_from)}"
        )


@dataclass(frozen=True)
class ResolvedWeights:
    """`kind` is what a run reports as `backbone_weights`: imagenet, random or file."""

    kind: str
    path: str | None

    def describe(self) -> str:
        return self.kind if self.path is None else f"{self.kind} ({self.path})"


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(home) / "models"


def resolve_weights(
    spec: str,
    backbone: Backbone = VGG16,
    cache_dir: Path | None = None,
    url: str | None = None,
    known_hash: str | None = None,
    timeout: float = 30.0,
) -> ResolvedWeights:
    """Turn a weights spec (`backbone.weights`) into a weights file, or none for random init.

    `url` and `known_hash` default to the backbone's real ImageNet file; a mirror can be given.
    """
    if spec == "random":
        return ResolvedWeights("random", None)
    if spec not in ("imagenet", "auto"):
        return ResolvedWeights("file", spec)
    source = backbone.imagenet
    url = url or source.url
    known_hash = known_hash or f"md5:{source.md5}"
    cache_dir = cache_dir or keras_cache_dir()
    target = cache_dir / source.filename
    try:
        return ResolvedWeights("imagenet", str(_fetch_imagenet(target, url, known_hash, timeout)))
    except Exception as exc:  # noqa: BLE001 - any failure to get the file has the same remedy
        reason = f"{type(exc).__name__}: {exc}"
        if spec == "imagenet":
            raise PipelineError(
                f"backbone.weights=imagenet, but the ImageNet weights are not cached and could not "
                f"be downloaded ({reason}). Download {url} and put it at {target}, or set "
                f"backbone.weights to the path of a notop {backbone.name} .h5 file, or to 'random'."
            ) from None
    banner = "!" * 78
    logger.warning(
        "\n%s\nbackbone.weights=auto: ImageNet weights for %s are NOT available (%s).\n"
        "Falling back to RANDOM weights: feature extraction and fine-tuning will not transfer\n"
        "anything learnt on ImageNet. Put %s at %s to use them.\n%s",
        banner,
        backbone.name,
        reason,
        source.filename,
        target,
        banner,
    )
    return ResolvedWeights("random", None)


def _fetch_imagenet(target: Path, url: str, known_hash: str, timeout: float) -> Path:
    """The cached weights file, downloaded and checksum-verified on first use.

    pooch downloads to a temporary file and moves it into place only once verified.
    """
    import pooch

    target.parent.mkdir(parents=True, exist_ok=True)
    path = pooch.retrieve(
        url,
        known_hash=known_hash,
        fname=target.name,
        path=target.parent,
        downloader=pooch.HTTPDownloader(timeout=timeout, progressbar=True),
    )
    return Path(path)


def extract_features(extractor, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Run the conv base over `images` in batches, with Keras' progress bar."""
    features = extractor.predict(images, batch_size=batch_size, verbose=2)
    return np.asarray(features, dtype=np.float32)
