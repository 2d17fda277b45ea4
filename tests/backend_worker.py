"""Train the scratch and fine-tune paths under the Keras backend this process was started with
(KERAS_BACKEND), and print what a test checks, as JSON on the last line.

Run by tests/model/test_backends.py: Keras picks its backend once, at import, so another
backend needs another process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np
from sklearn.datasets import load_digits

from pipeline.config import FineTuneConfig, ScratchConfig
from pipeline.evaluation.metrics import evaluate_model
from pipeline.models.backbones import BACKBONES
from pipeline.models.builders import ARCHITECTURES
from pipeline.training.fine_tune import train_fine_tune
from pipeline.training.fit import set_global_seed
from pipeline.training.interface import BackboneSetup, TrainingContext, TrainingData
from pipeline.training.scratch import train_scratch


def main(out: Path) -> None:
    digits = load_digits()
    images = (digits.images * 255 / 16).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    train, val, test = (
        (images[:1000], labels[:1000]),
        (images[1000:1300], labels[1000:1300]),
        (
            images[1300:],
            labels[1300:],
        ),
    )
    set_global_seed(0)
    scratch = train_scratch(
        TrainingData(train, val, 10),
        ScratchConfig(epochs=3, batch_size=64),
        TrainingContext(architecture=ARCHITECTURES["small_convnet"]),
    )
    scratch_metrics, _ = evaluate_model(scratch.model, *test)
    scratch.model.save(out / "scratch.keras")
    reloaded = keras.saving.load_model(out / "scratch.keras")
    same = np.allclose(
        reloaded.predict(test[0][:8], verbose=0),
        scratch.model.predict(test[0][:8], verbose=0),
        atol=1e-5,
    )

    backbone = BACKBONES["vgg16"]
    base = backbone.build(32, None)
    frozen_before = {
        layer.name: [w.copy() for w in layer.get_weights()]
        for layer in base.layers
        if layer.weights and not layer.name.startswith("block5")
    }
    tuned = train_fine_tune(
        TrainingData((train[0][:256], train[1][:256]), (val[0][:64], val[1][:64]), 10),
        FineTuneConfig(epochs=1, head_epochs=1, batch_size=64),
        TrainingContext(backbone=BackboneSetup(backbone, base, "block5_conv1")),
    )
    frozen_same = all(
        all(
            np.array_equal(a, b)
            for a, b in zip(before, base.get_layer(name).get_weights(), strict=True)
        )
        for name, before in frozen_before.items()
    )
    result = {
        "backend": keras.backend.backend(),
        "scratch_accuracy": scratch_metrics["test_accuracy"],
        "scratch_epochs": len(scratch.history["loss"]),
        "reloaded_same": bool(same),
        "fine_tune_epochs": len(tuned.history["loss"]),
        "fine_tune_frozen_unchanged": bool(frozen_same),
        "fine_tune_output": list(tuned.model.output_shape),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
