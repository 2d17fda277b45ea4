"""Scratch architectures, by name: the course's listings, written as layer specs.

Each architecture is a list of layer specs (`Conv`, `Pool`, `Dense`, ...) that one builder turns
into a Keras model and one checker walks with plain arithmetic, so `check_params` rejects an
impossible model without Keras, before DVC deletes anything. Adding an architecture is one
`Architecture` entry. The output layer is added by `heads.output_layer`: one sigmoid unit for
two classes (binary cross-entropy, as the course does), else a softmax.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pipeline.config import AugmentationConfig
from pipeline.errors import ModelError


@dataclass(frozen=True)
class Conv:
    filters: int
    kernel_size: int = 3
    padding: str = "valid"
    batch_norm: bool = False
    """Conv (no bias), BatchNormalization, then ReLU, instead of Conv with ReLU."""
    batch_norm_momentum: float = 0.99
    """Keras' default; 0.9 (PyTorch's) settles the moving statistics that inference uses in
    tens of steps instead of hundreds, which a small training set (max_images) needs."""


@dataclass(frozen=True)
class Pool:
    kind: str = "max"  # max | average
    size: int = 2


@dataclass(frozen=True)
class Flatten:
    pass


@dataclass(frozen=True)
class GlobalPool:
    """Global average pooling: one value per channel, whatever the image size."""


@dataclass(frozen=True)
class Dense:
    units: int


@dataclass(frozen=True)
class Dropout:
    rate: float


@dataclass(frozen=True)
class Upsample:
    """Nearest-neighbour upsampling, so small images survive more conv layers."""

    factor: int = 2


@dataclass(frozen=True)
class Jitter:
    """A network's own mild augmentation, active only in training: small shifts, turns and
    zooms that keep a digit the digit it is (no flips), filling with black."""

    translation: float = 0.1
    rotation: float = 0.03  # a fraction of a full turn: about 11 degrees
    zoom: float = 0.1


LayerSpec = Conv | Pool | Flatten | GlobalPool | Dense | Dropout | Upsample | Jitter


@dataclass(frozen=True)
class Architecture:
    """A scratch network: `layers(**options)` gives its layer specs (fixed for the course's
    listings; from `train.scratch` options for small_convnet)."""

    name: str
    description: str
    layers: Callable[..., list[LayerSpec]]


def _fixed(*specs: LayerSpec) -> Callable[..., list[LayerSpec]]:
    return lambda **_: list(specs)


def _small_convnet(
    conv_filters: Sequence[int] = (32, 64), dense_units: int = 64, dropout_rate: float = 0.5, **_
) -> list[LayerSpec]:
    blocks: list[LayerSpec] = []
    for filters in conv_filters:
        blocks += [Conv(filters, 3, "same"), Pool("max")]
    return [*blocks, Flatten(), Dense(dense_units), Dropout(dropout_rate)]


ARCHITECTURES: dict[str, Architecture] = {
    architecture.name: architecture
    for architecture in (
        Architecture(
            "course_a",
            "mini-CIFAR model A: conv 15 3x3 same, flatten, dense 16, dropout 0.2",
            _fixed(Conv(15, 3, "same"), Flatten(), Dense(16), Dropout(0.2)),
        ),
        Architecture(
            "course_b",
            "mini-CIFAR model B: conv 15 5x5, max-pool, conv 60 5x5, flatten, dense 16, "
            "dropout 0.2",
            _fixed(Conv(15, 5), Pool(), Conv(60, 5), Flatten(), Dense(16), Dropout(0.2)),
        ),
        Architecture(
            "course_c",
            "mini-CIFAR model C: conv 96 11x11, max-pool, conv 60 11x11, flatten, dense 16, "
            "dropout 0.2",
            _fixed(Conv(96, 11), Pool(), Conv(60, 11), Flatten(), Dense(16), Dropout(0.2)),
        ),
        Architecture(
            "mnist_convnet",
            "Chollet 5.1/5.2: conv 32-64-64 3x3 with two max-pools, flatten, dense 64",
            _fixed(Conv(32), Pool(), Conv(64), Pool(), Conv(64), Flatten(), Dense(64)),
        ),
        Architecture(
            "catsdogs_convnet",
            "Chollet 5.5/5.13: conv blocks 32-64-128-128, flatten, dropout 0.5, dense 512",
            _fixed(
                Conv(32),
                Pool(),
                Conv(64),
                Pool(),
                Conv(128),
                Pool(),
                Conv(128),
                Pool(),
                Flatten(),
                Dropout(0.5),
                Dense(512),
            ),
        ),
        Architecture(
            "malaria_convnet",
            "the malaria slide: conv 32 same, pool, conv 64, pool, flatten, dropout 0.5",
            _fixed(Conv(32, 3, "same"), Pool(), Conv(64), Pool(), Flatten(), Dropout(0.5)),
        ),
        Architecture(
            "lenet5",
            "the LeNet-5 slide: conv 6 3x3, average-pool, conv 16 3x3, average-pool, dense 120-84",
            _fixed(
                Conv(6),
                Pool("average"),
                Conv(16),
                Pool("average"),
                Flatten(),
                Dense(120),
                Dense(84),
            ),
        ),
        Architecture(
            "small_convnet",
            "conv blocks (train.scratch.conv_filters, 3x3 same, max-pool), dense, dropout",
            _small_convnet,
        ),
        Architecture(
            "digits_convnet",
            "for 8x8 digits (beats an RBF SVM): mild jitter, conv 32-32 / 64-64 / 128, 3x3 same "
            "with batch norm, two max-pools, global average pooling, dropout 0.3",
            _fixed(
                Jitter(),
                Conv(32, 3, "same", True),
                Conv(32, 3, "same", True),
                Pool(),
                Conv(64, 3, "same", True),
                Conv(64, 3, "same", True),
                Pool(),
                Conv(128, 3, "same", True),
                GlobalPool(),
                Dropout(0.3),
            ),
        ),
        Architecture(
            "mnist_bn_convnet",
            "for 28x28 digits and clothes (MNIST, Fashion-MNIST): digits_convnet's mild jitter "
            "and batch-normalised 3x3 same convs, one more stage for the larger image: conv "
            "32-32 / 64-64 / 128-128, two max-pools, global average pooling, dropout 0.4; batch "
            "norm momentum 0.9",
            _fixed(
                Jitter(),
                Conv(32, 3, "same", True, 0.9),
                Conv(32, 3, "same", True, 0.9),
                Pool(),
                Conv(64, 3, "same", True, 0.9),
                Conv(64, 3, "same", True, 0.9),
                Pool(),
                Conv(128, 3, "same", True, 0.9),
                Conv(128, 3, "same", True, 0.9),
                GlobalPool(),
                Dropout(0.4),
            ),
        ),
    )
}
DEFAULT_ARCHITECTURE = "small_convnet"

AUTO_ARCHITECTURES: dict[str, str] = {
    "digits": "digits_convnet",
    # Regularised, batch-normalised: the course's mnist_convnet (by name) tops out near 0.99.
    "mnist": "mnist_bn_convnet",
    "fashion_mnist": "mnist_bn_convnet",
    "mini_cifar": "course_b",
    "cats_vs_dogs": "catsdogs_convnet",
    "malaria": "malaria_convnet",
}
"""`train.scratch.architecture: auto`: the course's network for each dataset, or ours where the
course's falls short of it (digits, MNIST, Fashion-MNIST)."""


def resolve_architecture(name: str, dataset: str) -> Architecture:
    """The registry entry `train.scratch.architecture` names (`auto`: the dataset's own)."""
    if name == "auto":
        name = AUTO_ARCHITECTURES.get(dataset, DEFAULT_ARCHITECTURE)
    if name not in ARCHITECTURES:
        raise ModelError(
            f"unknown architecture {name!r}; choose auto or one of {', '.join(ARCHITECTURES)}"
        )
    return ARCHITECTURES[name]


def check_architecture(architecture: Architecture, input_shape: Sequence[int], **options) -> None:
    """Raise ModelError if the image shrinks to nothing on its way through the layers."""
    vanishing = _vanishing_layer(architecture, input_shape[:2], **options)
    if vanishing is not None:
        index, spec = vanishing
        raise ModelError(
            f"{architecture.name} cannot take {input_shape[0]}x{input_shape[1]} images: "
            f"layer {index} ({_describe(spec)}) leaves nothing of them; "
            f"{_smallest_hint(architecture, **options)}"
        )


def _vanishing_layer(
    architecture: Architecture, size: Sequence[int], **options
) -> tuple[int, LayerSpec] | None:
    """The first layer (1-based index, spec) after which nothing of the image is left."""
    height, width = size
    for index, spec in enumerate(architecture.layers(**options), start=1):
        if isinstance(spec, Upsample):
            height, width = height * spec.factor, width * spec.factor
        elif isinstance(spec, Conv) and spec.padding == "valid":
            height, width = height - spec.kernel_size + 1, width - spec.kernel_size + 1
        elif isinstance(spec, Pool):
            height, width = height // spec.size, width // spec.size
        if height < 1 or width < 1:
            return index, spec
    return None


def _smallest_hint(architecture: Architecture, **options) -> str:
    for side in range(1, 1025):
        if _vanishing_layer(architecture, (side, side), **options) is None:
            return f"it needs at least {side}x{side}"
    return "it needs larger images"


def _describe(spec: LayerSpec) -> str:
    if isinstance(spec, Conv):
        return f"conv {spec.filters} {spec.kernel_size}x{spec.kernel_size} {spec.padding}"
    if isinstance(spec, Pool):
        return f"{spec.kind}-pool {spec.size}x{spec.size}"
    return type(spec).__name__.lower()


def check_pooling_blocks(input_shape: Sequence[int], blocks: int) -> None:
    """Each 2x2 pooling halves the image: `blocks` of them need a side of 2**blocks."""
    smallest_side = min(input_shape[:2])
    if smallest_side < 2**blocks:
        raise ModelError(
            f"{blocks} conv blocks, each halving the image, need images of at least "
            f"{2**blocks}x{2**blocks}, but these are {input_shape[0]}x{input_shape[1]}: use at "
            f"most {int(math.log2(smallest_side))} blocks"
        )


def build_architecture(
    architecture: Architecture,
    input_shape: tuple[int, int, int],
    num_classes: int,
    augmentation: AugmentationConfig | None = None,
    **options,
):
    """Raw uint8 images -> rescale, augment (training only), the listing's layers, output."""
    import keras
    from keras import layers

    from pipeline.models.heads import output_layer
    from pipeline.models.preprocessing import augment, rescale

    if architecture.name == "small_convnet":
        check_pooling_blocks(input_shape, len(options.get("conv_filters", (32, 64))))
    check_architecture(architecture, input_shape, **options)
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = augment(rescale(inputs), augmentation)
    counts: dict[str, int] = {}

    def name(kind: str) -> str:
        counts[kind] = counts.get(kind, 0) + 1
        return f"{kind}{counts[kind]}"

    for spec in architecture.layers(**options):
        if isinstance(spec, Conv) and spec.batch_norm:
            x = layers.Conv2D(
                spec.filters,
                spec.kernel_size,
                padding=spec.padding,
                use_bias=False,
                name=name("conv"),
            )(x)
            x = layers.BatchNormalization(
                momentum=spec.batch_norm_momentum, name=name("batch_norm")
            )(x)
            x = layers.Activation("relu", name=name("relu"))(x)
        elif isinstance(spec, Conv):
            x = layers.Conv2D(
                spec.filters,
                spec.kernel_size,
                padding=spec.padding,
                activation="relu",
                name=name("conv"),
            )(x)
        elif isinstance(spec, Pool):
            pool = layers.MaxPooling2D if spec.kind == "max" else layers.AveragePooling2D
            x = pool(spec.size, name=name("pool"))(x)
        elif isinstance(spec, Upsample):
            x = layers.UpSampling2D(spec.factor, name=name("upsample"))(x)
        elif isinstance(spec, Jitter):
            x = layers.RandomTranslation(
                spec.translation, spec.translation, fill_mode="constant", name="jitter_shift"
            )(x)
            x = layers.RandomRotation(spec.rotation, fill_mode="constant", name="jitter_turn")(x)
            x = layers.RandomZoom(spec.zoom, fill_mode="constant", name="jitter_zoom")(x)
        elif isinstance(spec, Flatten):
            x = layers.Flatten(name="flatten")(x)
        elif isinstance(spec, GlobalPool):
            x = layers.GlobalAveragePooling2D(name="global_pool")(x)
        elif isinstance(spec, Dense):
            x = layers.Dense(spec.units, activation="relu", name=name("dense"))(x)
        elif isinstance(spec, Dropout):
            x = layers.Dropout(spec.rate, name=name("dropout"))(x)
    outputs = output_layer(x, num_classes)
    return keras.Model(inputs, outputs, name=architecture.name)


def build_small_convnet(
    input_shape: tuple[int, int, int],
    num_classes: int,
    conv_filters: list[int],
    dense_units: int,
    dropout_rate: float,
    augmentation: AugmentationConfig | None = None,
):
    """Today's default: Conv-MaxPool blocks, a dense layer, dropout, the output layer."""
    return build_architecture(
        ARCHITECTURES["small_convnet"],
        input_shape,
        num_classes,
        augmentation,
        conv_filters=conv_filters,
        dense_units=dense_units,
        dropout_rate=dropout_rate,
    )
