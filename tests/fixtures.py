"""Small data that tests build themselves: splits and VGG16 weight files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.store import ArraySplit


def make_split(
    num_classes: int = 3, per_class: int = 4, shape: tuple[int, int, int] = (8, 8, 1), seed: int = 0
) -> ArraySplit:
    """A small valid split: `per_class` random uint8 images of each class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    x = rng.integers(0, 256, size=(len(y), *shape), dtype=np.uint8)
    return ArraySplit(x, y, [f"class_{i}" for i in range(num_classes)])


def write_legacy_vgg16_notop(path: Path, image_size: int = 32, seed: int = 7) -> list[np.ndarray]:
    """Write VGG16 notop weights in the legacy Keras .h5 layout that the real ImageNet file has
    (root `layer_names`, one group per layer with `weight_names`); return the weights written."""
    import h5py
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    written = []
    with h5py.File(path, "w") as handle:
        names = []
        for layer in model.layers:
            weights = layer.get_weights()
            if not weights:
                continue
            names.append(layer.name.encode())
            group = handle.create_group(layer.name)
            weight_names = [f"{layer.name}/{kind}:0" for kind in ("kernel", "bias")]
            group.attrs["weight_names"] = [name.encode() for name in weight_names]
            for name, value in zip(weight_names, weights, strict=True):
                group.create_dataset(name, data=value)
                written.append(value)
        handle.attrs["layer_names"] = names
        handle.attrs["keras_version"] = b"2.2.4"
        handle.attrs["backend"] = b"tensorflow"
    return written
