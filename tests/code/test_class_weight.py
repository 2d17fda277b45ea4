"""Class weights (`train.<strategy>.class_weight: auto | none | balanced`): how the choice is
resolved for a train split, that the weights reach the training loss (and never the validation
loss), that every strategy applies them in each of its fits, and that `auto` on balanced data
changes nothing."""

from __future__ import annotations

import logging

import keras
import numpy as np
import pytest
from keras import layers
from sklearn.utils.class_weight import compute_class_weight

from pipeline.config import FeatureExtractionConfig, FineTuneConfig, ScratchConfig
from pipeline.errors import ConfigError, DataError
from pipeline.models.backbones import BACKBONES
from pipeline.models.builders import ARCHITECTURES
from pipeline.training import feature_extraction, interface
from pipeline.training.feature_extraction import train_feature_extraction
from pipeline.training.fine_tune import train_fine_tune
from pipeline.training.fit import (
    HISTORY_KEYS,
    FitOptions,
    compile_classifier,
    fit_model,
    resolve_class_weights,
    set_global_seed,
)
from pipeline.training.interface import BackboneSetup, TrainingContext, TrainingData
from pipeline.training.scratch import train_scratch


def _labels(*counts: int) -> np.ndarray:
    return np.concatenate([np.full(count, label) for label, count in enumerate(counts)])


def test_auto_leaves_a_split_at_most_three_to_one_unweighted() -> None:
    weights, reason = resolve_class_weights("auto", _labels(30, 10, 20), 3)
    assert weights is None
    assert reason == "auto: largest class 3.0x the smallest (at most 3x) -> none"


def test_auto_above_three_to_one_is_balanced_as_scikit_learn_computes_it() -> None:
    labels = _labels(100, 10, 40)
    weights, reason = resolve_class_weights("auto", labels, 3)
    expected = compute_class_weight("balanced", classes=np.arange(3), y=labels)
    assert weights == {0: expected[0], 1: expected[1], 2: expected[2]}
    assert all(type(key) is int and type(value) is float for key, value in weights.items())
    assert reason == "auto: largest class 10.0x the smallest -> balanced: {0: 0.5, 1: 5, 2: 1.25}"


def test_none_is_unweighted_and_balanced_weights_even_a_balanced_split() -> None:
    assert resolve_class_weights("none", _labels(100, 10), 2) == (None, "none: unweighted")
    weights, reason = resolve_class_weights("balanced", _labels(20, 20), 2)
    assert weights == {0: 1.0, 1: 1.0}
    assert reason.startswith("balanced (largest class 1.0x the smallest)")


def test_balanced_refuses_a_class_with_no_train_images() -> None:
    with pytest.raises(DataError) as caught:
        resolve_class_weights("balanced", _labels(5, 5, 0), 3, key="train.scratch.class_weight")
    message = str(caught.value)
    assert "class 2 has none in the train split" in message
    assert "[5, 5, 0]" in message and "set train.scratch.class_weight: none" in message


def test_auto_trains_unweighted_when_a_class_has_no_train_images() -> None:
    """The data gate fails on a class absent from a split; data that skipped it (a notebook)
    still trains under `auto`, unweighted, and the log says why."""
    assert resolve_class_weights("auto", _labels(5, 0, 1), 3) == (
        None,
        "auto: class 1 has no train images -> none",
    )


def test_labels_outside_the_classes_and_unknown_choices_are_refused() -> None:
    with pytest.raises(DataError, match="labels run from 0 to 3, outside the 3 classes 0..2"):
        resolve_class_weights("balanced", np.array([0, 1, 2, 3]), 3)
    with pytest.raises(ConfigError, match="'inverse' is not one of auto, none, balanced"):
        resolve_class_weights("inverse", _labels(3, 3), 2)
    # `none` never looks at the labels.
    assert resolve_class_weights("none", np.array([7]), 2)[0] is None


def test_the_training_data_logs_the_choice_it_resolved(caplog) -> None:
    data = TrainingData((np.zeros((44, 2)), _labels(40, 4)), (np.zeros((2, 2)), _labels(1, 1)), 2)
    with caplog.at_level(logging.INFO, logger="pipeline.training.interface"):
        weights = data.class_weights("auto", "scratch")
    assert weights == {0: 0.55, 1: 5.5}
    assert caplog.messages == [
        "class weights (train.scratch.class_weight) auto: largest class 10.0x the smallest -> "
        "balanced: {0: 0.55, 1: 5.5}"
    ]


def _tiny_model(num_classes: int) -> keras.Model:
    inputs = keras.Input(shape=(4,))
    units = 1 if num_classes == 2 else num_classes
    outputs = layers.Dense(units, activation="sigmoid" if units == 1 else "softmax")(inputs)
    return keras.Model(inputs, outputs)


@pytest.mark.parametrize("num_classes", [2, 3], ids=["one-sigmoid-unit", "softmax"])
def test_the_weights_scale_each_class_in_the_training_loss_and_never_in_val_loss(
    num_classes: int,
) -> None:
    """One batch, a learning rate of 0: the epoch's training loss is the mean of the per-image
    losses each times its class's weight (a one-unit sigmoid's labels 0 and 1 included), and
    val_loss is the plain mean, the same as an unweighted fit's."""
    rng = np.random.default_rng(0)
    counts = (40, 4) if num_classes == 2 else (40, 4, 10)
    y = _labels(*counts)
    x = rng.normal(size=(len(y), 4)).astype(np.float32)
    val = (rng.normal(size=(12, 4)).astype(np.float32), np.arange(12) % num_classes)
    weights, _ = resolve_class_weights("balanced", y, num_classes)

    def run(class_weights):
        set_global_seed(1)
        model = _tiny_model(num_classes)
        compile_classifier(model, "sgd", 0.0)
        options = FitOptions(epochs=1, batch_size=len(y), class_weights=class_weights)
        return model, fit_model(model, (x, y), val, options)

    model, weighted = run(weights)
    _, unweighted = run(None)
    probabilities = model.predict(x, verbose=0)
    if num_classes == 2:
        losses = keras.losses.binary_crossentropy(y[:, None].astype("float32"), probabilities)
    else:
        losses = keras.losses.sparse_categorical_crossentropy(y, probabilities)
    losses = keras.ops.convert_to_numpy(losses)
    per_image = np.array([weights[int(label)] for label in y])
    assert weighted["loss"][0] == pytest.approx(float((losses * per_image).mean()), rel=1e-5)
    assert unweighted["loss"][0] == pytest.approx(float(losses.mean()), rel=1e-5)
    assert weighted["loss"][0] != pytest.approx(unweighted["loss"][0], rel=1e-3)
    assert weighted["val_loss"] == unweighted["val_loss"]


def _images(counts: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = _labels(*counts)
    return rng.integers(0, 256, (len(labels), 8, 8, 1), dtype=np.uint8), labels


def _train_scratch(choice: str, counts: tuple[int, ...]):
    set_global_seed(5)
    config = ScratchConfig(
        epochs=2, batch_size=8, conv_filters=[4], dense_units=8, class_weight=choice
    )
    context = TrainingContext(architecture=ARCHITECTURES["small_convnet"])
    data = TrainingData(_images(counts, 0), _images((6, 6), 1), 2)
    return train_scratch(data, config, context)


def test_auto_on_a_balanced_split_trains_exactly_as_unweighted() -> None:
    """What keeps every balanced dataset's figures (digits') unchanged: the same history and
    weights to the bit, and no weights recorded."""
    auto = _train_scratch("auto", (20, 16))
    none = _train_scratch("none", (20, 16))
    assert auto.class_weights is None and none.class_weights is None
    assert auto.history == none.history
    for ours, theirs in zip(auto.model.get_weights(), none.model.get_weights(), strict=True):
        np.testing.assert_array_equal(ours, theirs)


def test_scratch_weights_an_imbalanced_split_and_records_the_weights() -> None:
    weighted = _train_scratch("auto", (40, 4))
    unweighted = _train_scratch("none", (40, 4))
    assert weighted.class_weights == {0: 0.55, 1: 5.5}
    assert unweighted.class_weights is None
    assert weighted.history["loss"] != unweighted.history["loss"]
    assert weighted.history["val_loss"] != unweighted.history["val_loss"]


@pytest.fixture
def fits(monkeypatch) -> list[FitOptions]:
    """Every fit a strategy runs through its context, as the options it asked for (the fit
    itself skipped: only what reaches it matters here)."""
    seen: list[FitOptions] = []

    def record(model, train, val, options, **kwargs):
        seen.append(options)
        return {key: [0.0] * options.epochs for key in HISTORY_KEYS}

    monkeypatch.setattr(interface, "fit_model", record)
    return seen


def _backbone_context() -> TrainingContext:
    backbone = BACKBONES["vgg16"]
    return TrainingContext(
        backbone=BackboneSetup(backbone, backbone.build(32, None), "block5_conv1")
    )


def test_fine_tuning_weights_both_of_its_phases(fits) -> None:
    config = FineTuneConfig(head_epochs=1, epochs=1, batch_size=8, class_weight="balanced")
    data = TrainingData(_images((40, 4), 0), _images((6, 6), 1), 2)
    result = train_fine_tune(data, config, _backbone_context())
    assert result.class_weights == {0: 0.55, 1: 5.5}
    assert [options.class_weights for options in fits] == [result.class_weights] * 2


def _head_only(extractor: keras.Model, head: keras.Model) -> keras.Model:
    return head


@pytest.mark.parametrize("mode", ["cached", "end_to_end"])
def test_feature_extraction_weights_its_head_in_either_mode(fits, monkeypatch, mode: str) -> None:
    config = FeatureExtractionConfig(epochs=1, batch_size=8, mode=mode, class_weight="auto")
    if mode == "cached":
        rng = np.random.default_rng(0)
        features = rng.normal(size=(44, 1, 1, 8)).astype(np.float32)
        # Only the head's fit matters here, not the model assembled around it afterwards.
        monkeypatch.setattr(feature_extraction, "assemble_feature_extraction_model", _head_only)
        extractor = keras.Sequential([keras.Input((8, 8, 1)), layers.Conv2D(8, 8)])
        data = TrainingData(
            (features, _labels(40, 4)),
            (features[:6], _labels(3, 3)),
            2,
            kind="features",
            extractor=extractor,
        )
        context = TrainingContext()
    else:
        data = TrainingData(_images((40, 4), 0), _images((6, 6), 1), 2)
        context = _backbone_context()
    result = train_feature_extraction(data, config, context)
    assert result.class_weights == {0: 0.55, 1: 5.5}
    assert [options.class_weights for options in fits] == [result.class_weights]
