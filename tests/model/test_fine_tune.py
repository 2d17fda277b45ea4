"""Fine-tuning follows the course's five steps and leaves what is frozen alone: the frozen
layers' weights are bit-identical after training, and BatchNormalization layers in the frozen
part stay in inference mode (their moving statistics do not move)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from pipeline.config import FineTuneConfig
from pipeline.models.backbones import BACKBONES
from pipeline.training.fine_tune import train_fine_tune
from pipeline.training.fit import set_global_seed
from pipeline.training.interface import BackboneSetup, TrainingContext, TrainingData

pytestmark = pytest.mark.slow


def _data(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    images = rng.integers(0, 60, (count, 32, 32, 3)).astype(np.uint8)
    # A class-coloured square, so the head has something to learn.
    for image, label in zip(images, labels, strict=True):
        image[8:24, 8:24, label] = 230
    return images, labels.astype(np.int64)


def _weights(base: keras.Model) -> dict[str, list[np.ndarray]]:
    return {layer.name: [np.array(w) for w in layer.get_weights()] for layer in base.layers}


@pytest.mark.parametrize(
    ("name", "unfreeze_from"),
    [("mobilenet_v2", "block_16_expand"), ("vgg16", "block5_conv1")],
)
def test_frozen_layers_are_bit_identical_after_fine_tuning(
    name: str, unfreeze_from: str, hed_vgg16_weights
) -> None:
    backbone = BACKBONES[name]
    set_global_seed(0)
    # VGG16 starts from real pretrained weights (HED's VGG16, a test fixture), mobilenet_v2
    # from random ones: what matters is which weights move.
    base = backbone.build(32, str(hed_vgg16_weights) if name == "vgg16" else None)
    before = _weights(base)
    result = train_fine_tune(
        TrainingData(_data(96, 1), _data(32, 2), 3),
        FineTuneConfig(epochs=1, head_epochs=1, batch_size=32, dense_units=16),
        TrainingContext(backbone=BackboneSetup(backbone, base, unfreeze_from)),
    )
    assert len(result.history["loss"]) == 2  # one epoch per phase, on one axis
    after = _weights(base)
    names = [layer.name for layer in base.layers]
    first_trainable = names.index(unfreeze_from)
    frozen = [n for n in names[:first_trainable] if before[n]]
    tuned = [n for n in names[first_trainable:] if before[n]]
    assert frozen and tuned
    for layer in frozen:
        for old, new in zip(before[layer], after[layer], strict=True):
            np.testing.assert_array_equal(old, new, err_msg=f"frozen layer {layer} changed")
    changed = [
        layer
        for layer in tuned
        if not all(np.array_equal(o, n) for o, n in zip(before[layer], after[layer], strict=True))
    ]
    assert unfreeze_from in changed  # step 5 really trained the unfrozen part
    frozen_batch_norms = [
        layer
        for layer in base.layers[:first_trainable]
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert (len(frozen_batch_norms) > 0) == (name == "mobilenet_v2")
    for layer in frozen_batch_norms:
        assert not layer.trainable
        # Inference mode: the moving mean and variance were not updated by training.
        np.testing.assert_array_equal(before[layer.name][2], after[layer.name][2])
        np.testing.assert_array_equal(before[layer.name][3], after[layer.name][3])
