"""Behaviour of class weights on a trained model: on a 10:1 split of two overlapping classes,
`class_weight: balanced` raises the minority's recall on a balanced test set, where an
unweighted model learns to answer the majority."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import ScratchConfig
from pipeline.evaluation.metrics import evaluate_model
from pipeline.models.builders import ARCHITECTURES
from pipeline.training.fit import set_global_seed
from pipeline.training.interface import TrainingContext, TrainingData
from pipeline.training.strategies import STRATEGIES

pytestmark = pytest.mark.slow

SHIFT = 25.0
"""How much brighter, on average, the minority's pixels are than the majority's."""
NOISE = 60.0
"""Each pixel's spread: the mean of 64 pixels separates the classes only in part (the mean's
spread is 7.5, a third of SHIFT), so a model must weigh the classes' priors."""


def _images(counts: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8 x 8 gray images: class 0 (the majority) around 120, class 1 around 120 + SHIFT."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for label, count in enumerate(counts):
        pixels = rng.normal(120 + label * SHIFT, NOISE, size=(count, 8, 8, 1))
        images.append(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
        labels.append(np.full(count, label, dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def _minority_and_balanced_recall(choice: str, test: tuple[np.ndarray, np.ndarray]):
    set_global_seed(0)
    config = ScratchConfig(
        epochs=20,
        batch_size=32,
        conv_filters=[8],
        dense_units=16,
        dropout_rate=0.0,
        early_stopping_patience=0,
        class_weight=choice,
    )
    context = TrainingContext(architecture=ARCHITECTURES["small_convnet"])
    data = TrainingData(_images((500, 50), 1), _images((100, 10), 2), 2)
    result = STRATEGIES["scratch"].train(data, config, context)
    _, predicted = evaluate_model(result.model, *test)
    recall = [float((predicted[test[1] == label] == label).mean()) for label in (0, 1)]
    return result.class_weights, recall[1], float(np.mean(recall))


def test_balanced_class_weights_raise_the_minority_recall_on_a_ten_to_one_split() -> None:
    test = _images((300, 300), 3)
    none_weights, none_minority, none_balanced = _minority_and_balanced_recall("none", test)
    weights, minority, balanced = _minority_and_balanced_recall("balanced", test)

    assert none_weights is None and weights == {0: 0.55, 1: 5.5}
    # Unweighted, the overlap goes to the majority: few of the minority's images are found.
    assert none_minority < 0.3
    assert minority > none_minority + 0.4
    # Not by calling everything the minority: the weighted model is better on both classes
    # together (chance is 0.5).
    assert balanced > none_balanced + 0.15 and balanced > 0.7
