"""The backbone registry: name -> builder, preprocessing, layer names and weights source.

Adding a backbone is one `Backbone` entry and its builder. Importing this module stays cheap
(no Keras): `check_params` reads layer names and input limits from it before any stage runs.
Keras is imported by the builders, when a model is really built.

`backbone.weights` (`auto`, `imagenet`, `hed`, `random` or a file) is resolved by
pipeline/models/weights.py, re-exported here; HED's VGG16 weights come from pipeline/models/hed.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from pipeline.errors import ModelError

# Re-exported: the stages and training import weights resolution from the backbone registry.
from pipeline.models.weights import (  # noqa: F401
    ResolvedWeights,
    keras_cache_dir,
    resolve_weights,
)

_HASH_LENGTHS = {"md5": 32, "sha256": 64}


@dataclass(frozen=True)
class WeightsSource:
    """A notop ImageNet weights file as Keras itself downloads it, with its checksum.

    `known_hash` is a pooch-style `"md5:<hex>"` or `"sha256:<hex>"`, the checksum Keras checks
    the file against; None where Keras pins none (the file is then downloaded unverified, and
    pooch logs the SHA-256 it computed).
    """

    filename: str
    url: str
    known_hash: str | None = None

    def __post_init__(self) -> None:
        if self.known_hash is None:
            return
        algorithm, _, digest = self.known_hash.partition(":")
        length = _HASH_LENGTHS.get(algorithm)
        if length is None or len(digest) != length or not _is_hex(digest):
            raise ValueError(
                f"WeightsSource {self.filename}: known_hash {self.known_hash!r} must be "
                f"'md5:<32 hex digits>', 'sha256:<64 hex digits>' or None"
            )


def _is_hex(text: str) -> bool:
    return all(char in "0123456789abcdefABCDEF" for char in text)


@dataclass(frozen=True)
class Backbone:
    """A pretrained convolutional base: how to build it, feed it, and which layers it has."""

    name: str
    build: Callable[[int, str | None], object]
    """(image_size, weights file or None for random init) -> the Keras base model."""
    preprocess: Callable[[object], object]
    """Keras tensor of RGB floats in [0, 255] -> the base's expected input."""
    trainable_from: tuple[str, ...]
    """The layers with weights, in model order: where fine-tuning can start
    (`backbone.unfreeze_from`)."""
    default_unfreeze_from: str
    """Where fine-tuning starts when `backbone.unfreeze_from` is `auto`: the last stage."""
    min_image_size: int
    """The smallest square input the Keras builder accepts."""
    imagenet: WeightsSource
    pattern_layers: tuple[str, ...] = ()
    """The conv layers whose filter patterns the report shows, from the first stage to the
    last (the course's block1_conv1 ... block5_conv1 for VGG16)."""

    def __post_init__(self) -> None:
        if self.default_unfreeze_from not in self.trainable_from:
            raise ValueError(
                f"backbone {self.name}: default_unfreeze_from {self.default_unfreeze_from!r} is "
                f"not one of its layers with weights"
            )
        unknown = [name for name in self.pattern_layers if name not in self.trainable_from]
        if unknown:
            raise ValueError(f"backbone {self.name}: pattern_layers {unknown} are not its layers")


# Keras' "caffe" mode: RGB -> BGR, minus ImageNet's mean (in BGR order), no scaling.
CAFFE_BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)
VGG16_BGR_MEAN = CAFFE_BGR_MEAN
_RGB_TO_BGR = np.eye(3, dtype=np.float32)[::-1]


def _caffe_preprocess(x, name: str):
    """`preprocess_input` in Keras' "caffe" mode (vgg16, resnet50): RGB -> BGR, minus ImageNet's
    BGR mean, as a frozen 1x1 linear map.

    A built-in Dense layer keeps saved models loadable without custom objects; `name` tells,
    in a saved model, whose preprocessing it is.
    """
    from keras import layers

    layer = layers.Dense(3, trainable=False, name=name)
    outputs = layer(x)
    layer.set_weights([_RGB_TO_BGR.T.copy(), -CAFFE_BGR_MEAN])
    return outputs


def _build_application(application: str, image_size: int, weights_file: str | None, **options):
    """`keras.applications.<application>` without its top, randomly initialised, then given
    `weights_file`: weights come from `resolve_weights`, never from Keras' own download."""
    import keras

    builder = getattr(keras.applications, application)
    base = builder(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3), **options
    )
    if weights_file is not None:
        base.load_weights(weights_file)
    return base


KERAS_APPLICATIONS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


# --- vgg16 ---------------------------------------------------------------------------------


def _build_vgg16(image_size: int, weights_file: str | None):
    return _build_application("VGG16", image_size, weights_file)


def _vgg16_preprocess(x):
    """`keras.applications.vgg16.preprocess_input`."""
    return _caffe_preprocess(x, name="vgg16_preprocess")


VGG16 = Backbone(
    name="vgg16",
    build=_build_vgg16,
    preprocess=_vgg16_preprocess,
    trainable_from=tuple(
        f"block{block}_conv{conv}"
        for block, convs in ((1, 2), (2, 2), (3, 3), (4, 3), (5, 3))
        for conv in range(1, convs + 1)
    ),
    default_unfreeze_from="block5_conv1",
    pattern_layers=tuple(f"block{block}_conv1" for block in range(1, 6)),
    # Five 2x2 poolings: anything smaller than 32x32 pools to nothing.
    min_image_size=32,
    imagenet=WeightsSource(
        filename="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        url=KERAS_APPLICATIONS_URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
        # The MD5 that keras.applications.vgg16 checks the file against.
        known_hash="md5:6d6bbae143d832006294945121d1f1fc",
    ),
)


# --- resnet50 ------------------------------------------------------------------------------


def _build_resnet50(image_size: int, weights_file: str | None):
    return _build_application("ResNet50", image_size, weights_file)


def _resnet50_preprocess(x):
    """`keras.applications.resnet50.preprocess_input`: the same "caffe" mode as vgg16."""
    return _caffe_preprocess(x, name="resnet50_preprocess")


def _resnet50_layers_with_weights() -> tuple[str, ...]:
    """ResNet50's conv and batch-norm layers, in the order Keras lists them.

    Four stages of 3, 4, 6 and 3 bottleneck blocks. A stage's first block also has a projection
    shortcut (`_0_conv`, `_0_bn`), which Keras lists between the block's last convolution and
    its batch norm.
    """
    names = ["conv1_conv", "conv1_bn"]
    for stage, blocks in ((2, 3), (3, 4), (4, 6), (5, 3)):
        for block in range(1, blocks + 1):
            prefix = f"conv{stage}_block{block}"
            parts = ["1_conv", "1_bn", "2_conv", "2_bn"]
            parts += ["0_conv", "3_conv", "0_bn", "3_bn"] if block == 1 else ["3_conv", "3_bn"]
            names += [f"{prefix}_{part}" for part in parts]
    return tuple(names)


RESNET50 = Backbone(
    name="resnet50",
    build=_build_resnet50,
    preprocess=_resnet50_preprocess,
    trainable_from=_resnet50_layers_with_weights(),
    # The first convolution of the last stage: fine-tuning trains all of stage 5.
    default_unfreeze_from="conv5_block1_1_conv",
    pattern_layers=(
        "conv1_conv",
        "conv2_block1_1_conv",
        "conv3_block1_1_conv",
        "conv4_block1_1_conv",
        "conv5_block1_1_conv",
    ),
    # keras.applications.ResNet50 refuses inputs under 32x32 (five halvings).
    min_image_size=32,
    imagenet=WeightsSource(
        filename="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        url=KERAS_APPLICATIONS_URL + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
        # keras.applications.resnet WEIGHTS_HASHES["resnet50"][1], checked as MD5.
        known_hash="md5:4d473c1dd8becc155b73f8504c6f6626",
    ),
)


# --- mobilenet_v2 --------------------------------------------------------------------------


def _build_mobilenet_v2(image_size: int, weights_file: str | None):
    return _build_application("MobileNetV2", image_size, weights_file, alpha=1.0)


def _mobilenet_v2_preprocess(x):
    """`keras.applications.mobilenet_v2.preprocess_input` ("tf" mode): [0, 255] -> [-1, 1]."""
    from keras import layers

    return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="mobilenet_v2_preprocess")(x)


def _mobilenet_v2_layers_with_weights() -> tuple[str, ...]:
    """MobileNetV2's conv and batch-norm layers (alpha 1.0), in the order Keras lists them.

    A stem, the expansion-free first block (`expanded_conv`), inverted residual blocks 1 to 16
    (expand, depthwise, project), and the last 1x1 convolution.
    """
    names = ["Conv1", "bn_Conv1"]
    names += [f"expanded_conv_{part}" for part in ("depthwise", "depthwise_BN")]
    names += [f"expanded_conv_{part}" for part in ("project", "project_BN")]
    for block in range(1, 17):
        for part in ("expand", "depthwise", "project"):
            names += [f"block_{block}_{part}", f"block_{block}_{part}_BN"]
    names += ["Conv_1", "Conv_1_bn"]
    return tuple(names)


MOBILENET_V2 = Backbone(
    name="mobilenet_v2",
    build=_build_mobilenet_v2,
    preprocess=_mobilenet_v2_preprocess,
    trainable_from=_mobilenet_v2_layers_with_weights(),
    # The last inverted residual block (320 filters) and the final 1x1 convolution.
    default_unfreeze_from="block_16_expand",
    pattern_layers=(
        "Conv1",
        "block_1_expand",
        "block_3_expand",
        "block_6_expand",
        "block_13_expand",
    ),
    # keras.applications.MobileNetV2 refuses inputs under 32x32.
    min_image_size=32,
    # Keras picks the file by input size (96, 128, 160, 192 or 224) and falls back to 224 for any
    # other; the convolutions are the same shape at every size, so the 224 file serves them all.
    imagenet=WeightsSource(
        filename="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        url=KERAS_APPLICATIONS_URL
        + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        # keras.applications.mobilenet_v2 downloads this file without any checksum.
        known_hash=None,
    ),
)

BACKBONES: dict[str, Backbone] = {
    backbone.name: backbone for backbone in (VGG16, RESNET50, MOBILENET_V2)
}
BACKBONE_NAMES: tuple[str, ...] = tuple(BACKBONES)
DEFAULT_BACKBONE = "vgg16"
UNFREEZE_AUTO = "auto"


def resolve_unfreeze_from(backbone: Backbone, spec: str) -> str:
    """The layer fine-tuning starts at: `backbone.unfreeze_from`, or the backbone's own default
    for `auto`. The name is checked by `check_backbone_layer`, not here."""
    return backbone.default_unfreeze_from if spec == UNFREEZE_AUTO else spec


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
