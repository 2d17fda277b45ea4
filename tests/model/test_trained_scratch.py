"""Behaviour of a trained scratch CNN on the bundled digits: it learns, and it is reproducible."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ScratchConfig
from pipeline.datasets.fetch import fetch_dataset
from pipeline.datasets.readers.arrays import read_digits
from pipeline.datasets.sources import DIGITS
from pipeline.datasets.split import split_indices
from pipeline.evaluation.metrics import evaluate_model
from pipeline.models.builders import ARCHITECTURES
from pipeline.training.fit import set_global_seed
from pipeline.training.interface import TrainingContext, TrainingData
from pipeline.training.scratch import train_scratch

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def digits_splits(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    fetch_dataset(DIGITS, raw, cache_dir=raw / "cache")
    dataset = read_digits(raw)
    images = dataset.load_all()
    indices = split_indices(dataset.labels, 0.15, 0.2, seed=42)
    return {name: (images[i], dataset.labels[i]) for name, i in indices.items()}


def _train(
    splits, seed: int, epochs: int, architecture: str = "small_convnet", batch_size: int = 32
):
    set_global_seed(seed, deterministic=True)
    config = ScratchConfig(epochs=epochs, batch_size=batch_size, learning_rate=1e-3)
    context = TrainingContext(architecture=ARCHITECTURES[architecture])
    result = train_scratch(TrainingData(splits["train"], splits["val"], 10), config, context)
    metrics, predictions = evaluate_model(result.model, *splits["test"])
    return result, metrics, predictions


def test_same_seed_gives_the_same_test_accuracy(digits_splits) -> None:
    """train.deterministic: two runs on a CPU give identical metrics, weights and history
    (digits_convnet has batch normalization, whose reductions are where order matters)."""
    first, first_metrics, first_predictions = _train(digits_splits, 7, 2, "digits_convnet")
    second, second_metrics, second_predictions = _train(digits_splits, 7, 2, "digits_convnet")
    for a, b in zip(first.model.get_weights(), second.model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert first_metrics["test_accuracy"] == second_metrics["test_accuracy"]
    assert np.array_equal(first_predictions, second_predictions)
    assert first.history == second.history


def test_scratch_cnn_learns_digits_far_above_chance(digits_splits) -> None:
    result, metrics, _ = _train(digits_splits, seed=42, epochs=10)
    assert metrics["test_accuracy"] > 0.85  # chance is 0.10
    assert result.history["loss"][-1] < result.history["loss"][0]
    x_test = digits_splits["test"][0]
    # Batch independence: an image's prediction does not depend on what it is batched with.
    alone = result.model.predict(x_test[:1], verbose=0)
    batched = result.model.predict(x_test[:64], verbose=0)[:1]
    np.testing.assert_allclose(alone, batched, rtol=1e-4, atol=1e-6)


def _as_mnist(images: np.ndarray) -> np.ndarray:
    """8x8 digits drawn at MNIST's geometry: each pixel 3x3, a 24x24 digit in a 28x28 frame."""
    big = np.kron(images[..., 0], np.ones((3, 3), images.dtype))
    return np.pad(big, ((0, 0), (2, 2), (2, 2)))[..., None]


def test_the_mnist_default_learns_28x28_digits(digits_splits) -> None:
    """mnist_bn_convnet (auto for MNIST and Fashion-MNIST) on a few hundred digits at MNIST's
    size: after a few epochs it is far above chance (0.10), jitter and dropout included.
    Small batches: batch norm's moving statistics, which inference uses, need a few hundred
    steps to settle."""
    counts = {"train": 480, "val": 150, "test": 200}
    splits = {
        name: (_as_mnist(digits_splits[name][0][:count]), digits_splits[name][1][:count])
        for name, count in counts.items()
    }
    assert splits["train"][0].shape[1:] == (28, 28, 1)
    result, metrics, _ = _train(splits, 0, 8, "mnist_bn_convnet", batch_size=16)
    # Early stopping keeps the best validation epoch, so the test set sees that epoch.
    assert max(result.history["val_accuracy"]) > 0.6
    assert metrics["test_accuracy"] > 0.6
    assert result.history["loss"][-1] < result.history["loss"][0] / 2
