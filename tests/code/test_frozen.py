"""Training above frozen layers on activations computed once (`training.frozen`): the same
training as the whole model's, and the whole model wherever the activations would change."""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np
import pytest

from pipeline.config import AugmentationConfig, FineTuneConfig
from pipeline.errors import ModelError
from pipeline.models.backbones import BACKBONES
from pipeline.models.heads import build_fine_tune_model, cut_below, set_trainable_from
from pipeline.training import frozen
from pipeline.training.fine_tune import train_fine_tune
from pipeline.training.fit import FitOptions
from pipeline.training.interface import BackboneSetup, TrainingContext, TrainingData
from tests.crash import CrashAt, Killed


def _data(count: int = 48) -> TrainingData:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (count, 8, 8, 1), dtype=np.uint8)
    xv = rng.integers(0, 256, (count // 2, 8, 8, 1), dtype=np.uint8)
    label = lambda images: (images.reshape(len(images), -1).mean(axis=1) > 127).astype(int)  # noqa: E731
    return TrainingData((x, label(x)), (xv, label(xv)), 2)


def _context(**kwargs) -> TrainingContext:
    backbone = BACKBONES["vgg16"]
    return TrainingContext(
        backbone=BackboneSetup(backbone, backbone.build(32, None), "block5_conv1"), **kwargs
    )


def _fine_tune() -> tuple:
    keras.utils.set_random_seed(3)
    config = FineTuneConfig(head_epochs=1, epochs=1, batch_size=16)
    result = train_fine_tune(_data(), config, _context())
    return result.history, [np.asarray(weight) for weight in result.model.weights], result.model


def test_fine_tuning_above_the_cut_trains_the_whole_models_weights_alike(
    monkeypatch, caplog
) -> None:
    """Both phases on block4's activations computed once end with the history and the weights
    the whole model's training ends with, and the model saved is the whole model, its
    optimizer built for all its trainable weights."""
    with caplog.at_level(logging.INFO, logger="pipeline.training.frozen"):
        cut_history, cut_weights, model = _fine_tune()
    assert "activations below block5_conv1 computed once (2x2x512" in caplog.text
    assert "activations below the head computed once (1x1x512" in caplog.text
    monkeypatch.setattr(frozen, "_why_whole", lambda *args: "this test trains it whole")
    whole_history, whole_weights, _ = _fine_tune()
    for key in whole_history:
        np.testing.assert_allclose(cut_history[key], whole_history[key], rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(cut_weights, whole_weights, strict=True):
        np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)
    assert model.input.dtype == "uint8" and model.name == "fine_tune"
    # iterations, learning rate, then one RMSprop slot per trainable weight of the whole model
    assert len(model.optimizer.variables) == 2 + len(model.trainable_weights)


def test_the_view_falls_back_to_the_whole_model_where_activations_change(caplog) -> None:
    """Augmentation redraws every epoch's images: the whole model trains, and the log says
    why."""
    data = _data(16)
    context = _context(augmentation=AugmentationConfig(enabled=True))
    backbone = context.backbone
    model = build_fine_tune_model(
        data.input_shape, 2, backbone.descriptor, backbone.base, 8, 0.5, context.augmentation
    )
    with (
        caplog.at_level(logging.INFO, logger="pipeline.training.frozen"),
        frozen.frozen_view(model, "block5_conv1", data, context) as view,
    ):
        assert view.model is model and view.data is data
    assert "training fine_tune whole: augmentation" in caplog.text


def test_a_trainable_layer_below_the_cut_is_refused_and_the_activations_are_deleted() -> None:
    data = _data(16)
    context = _context()
    backbone = context.backbone
    model = build_fine_tune_model(data.input_shape, 2, backbone.descriptor, backbone.base, 8, 0.5)
    with frozen.frozen_view(model, "block5_conv1", data, context) as view:
        assert view.model is not model
        folder = Path(view.data.train.inputs.path).parent
        assert folder.is_dir()
        set_trainable_from(backbone.base, "block4_conv1")
        view.compile("rmsprop", 1e-5)
        with pytest.raises(ModelError, match="below the cut at block5_conv1 are trainable"):
            view.fit(context, FitOptions(epochs=1, batch_size=8))
    assert not folder.exists()


def test_a_cut_crossed_by_a_residual_connection_is_not_made() -> None:
    """ResNet50's conv5_block1_2_conv sits inside a residual block (the shortcut bypasses it):
    no single tensor separates what is below it from what is above, so there is no cut; at a
    block's input there is one."""
    backbone = BACKBONES["resnet50"]
    base = backbone.build(32, None)
    model = build_fine_tune_model((8, 8, 1), 3, backbone, base, 8, 0.5)
    assert cut_below(model, "conv5_block1_2_conv") is None
    cut = cut_below(model, "conv5_block1_1_conv")
    assert cut is not None
    images = np.random.default_rng(1).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    np.testing.assert_allclose(
        cut.above.predict_on_batch(cut.below.predict_on_batch(images)),
        model.predict_on_batch(images),
        rtol=1e-5,
        atol=1e-6,
    )


def test_fine_tuning_above_the_cut_resumes_after_a_crash_in_the_tune_phase(tmp_path) -> None:
    """A run killed in the tune phase resumes from its backup of the trained part (the head
    phase skipped) and ends with the weights an uninterrupted run ends with."""
    from pipeline.training.backup import TrainingBackup

    config = FineTuneConfig(head_epochs=1, epochs=2, batch_size=16)

    def run(callbacks, backup):
        keras.utils.set_random_seed(3)
        context = _context(callbacks=callbacks, backup=backup)
        return train_fine_tune(_data(), config, context)

    whole = run([], None)
    backup = TrainingBackup(tmp_path / "backup", "fingerprint")
    with pytest.raises(Killed):
        run([CrashAt(2)], backup)
    assert backup.load().phase == "tune" and backup.load().epoch == 2
    resumed = run([], backup)
    assert resumed.history["loss"] == pytest.approx(whole.history["loss"], rel=1e-5)
    for ours, theirs in zip(resumed.model.weights, whole.model.weights, strict=True):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-4, atol=1e-6)
