"""One strategy interface: a fourth strategy is one `Strategy` entry and its train function.

A toy strategy (a Dense layer on the raw images) is registered and trained through the train
stage's own code path (`stages/train.py`'s `train_strategy`, what `main` calls), into a local
SQLite MLflow store in tmp_path: no server, no subprocess.
"""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
import pandas as pd
import pytest
from keras import layers
from pydantic import BaseModel

from pipeline.config import AugmentationConfig, PipelineConfig, ReduceLrConfig, load_config
from pipeline.store import (
    CLASSES_FILE,
    HISTORY_FILE,
    MODEL_FILE,
    RUN_FILE,
    read_json,
    write_json,
    write_store_from_arrays,
)
from pipeline.tracking.record import RunRecord
from pipeline.training.fit import (
    HISTORY_KEYS,
    FitOptions,
    TrainingResult,
    compile_classifier,
)
from pipeline.training.interface import Strategy, TrainingContext, TrainingData
from tests.project import PROJECT_ROOT

CLASSES = ["zero", "one", "two"]


class ToyConfig(BaseModel):
    """The toy's own block: what FitOptions reads, and no augmentation. It lives here, not in
    config.train, so the strategy finds it with `config_block`."""

    epochs: int = 1
    batch_size: int = 4
    learning_rate: float = 1e-2
    optimizer: str = "adam"
    early_stopping_patience: int = 0
    early_stopping_monitor: str = "val_accuracy"
    reduce_lr: ReduceLrConfig = ReduceLrConfig()
    augmentation: AugmentationConfig = AugmentationConfig(enabled=False)


def train_toy(data: TrainingData, config: ToyConfig, context: TrainingContext) -> TrainingResult:
    """A Dense softmax on the rescaled, flattened images."""
    inputs = keras.Input(shape=data.input_shape)
    x = layers.Rescaling(1 / 255)(inputs)
    x = layers.Flatten()(x)
    outputs = layers.Dense(data.num_classes, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="toy")
    compile_classifier(model, config.optimizer, config.learning_rate)
    history = context.fit(model, data, FitOptions.of(config))
    return TrainingResult(model, history)


TOY = Strategy("toy", train_toy, uses_backbone=False, config_block=lambda config: ToyConfig())


def write_prepared(root: Path, images: int = 12) -> Path:
    """Three tiny splits of 8x8 gray images, as the split stage stores them."""
    prepared = root / "data" / "prepared"
    rng = np.random.default_rng(0)
    labels = (np.arange(images) % len(CLASSES)).astype(np.int64)
    splits = {
        name: (rng.integers(0, 256, size=(images, 8, 8, 1), dtype=np.uint8), labels)
        for name in ("train", "val", "test")
    }
    write_store_from_arrays(prepared, splits, CLASSES)
    return prepared


def write_gate(root: Path) -> Path:
    gate = root / "reports" / "validation" / "summary.json"
    gate.parent.mkdir(parents=True)
    write_json(gate, {"passed": True, "failures": 0, "warnings": 0})
    return gate


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    """A project root whose embedded MLflow store (mlflow.db, mlruns/) is in tmp_path."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    previous = mlflow.get_tracking_uri()
    yield tmp_path
    mlflow.set_tracking_uri(previous)


def project_config() -> PipelineConfig:
    return load_config(PROJECT_ROOT / "params.yaml")


def train_toy_run(root: Path, config: PipelineConfig) -> Path:
    """Train the toy as the train stage would; return its model folder."""
    from pipeline.stages.train import train_strategy

    out = root / "models" / TOY.name
    train_strategy(TOY, config, write_prepared(root), write_gate(root), None, out, root)
    return out


def test_a_registered_toy_strategy_trains_through_the_train_stage(project, monkeypatch) -> None:
    from pipeline.training import strategies

    monkeypatch.setitem(strategies.STRATEGIES, TOY.name, TOY)
    config = project_config()
    out = train_toy_run(project, config)

    assert keras.saving.load_model(out / MODEL_FILE).name == "toy"
    assert read_json(out / CLASSES_FILE) == CLASSES
    history = pd.read_csv(out / HISTORY_FILE)
    assert list(history["epoch"]) == [0]
    record = RunRecord.read(out)
    assert (out / RUN_FILE).is_file() and record.tracked and record.strategy == "toy"
    assert record.params["train.epochs"] == 1 and "backbone.name" not in record.params
    assert record.backbone_weights == "none" and record.augmentation is None
    assert record.model_uri is not None

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    run = client.get_run(record.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == f"{config.data.dataset}-toy"
    assert run.data.tags["strategy"] == "toy"
    # The history, and the temperature fitted on val (train.calibration: temperature).
    calibration = {"temperature", "val_nll_before", "val_nll_after"}
    assert set(run.data.metrics) == set(HISTORY_KEYS) | calibration
    assert run.data.metrics["temperature"] == pytest.approx(record.temperature)
    assert record.val_nll_after <= record.val_nll_before
    assert run.data.params["train.calibration"] == "temperature"
    assert run.data.metrics["learning_rate"] == pytest.approx(ToyConfig().learning_rate)
    assert run.data.params["train.batch_size"] == "4"


def test_each_strategy_declares_what_it_trains_on() -> None:
    from pipeline.training.strategies import STRATEGIES

    config = project_config()
    feature_extraction = STRATEGIES["feature_extraction"]
    cached = config.train.feature_extraction
    end_to_end = cached.model_copy(update={"mode": "end_to_end"})
    assert feature_extraction.trains_on_features(cached)
    assert not feature_extraction.builds_backbone(cached)
    assert feature_extraction.builds_backbone(end_to_end)
    assert not STRATEGIES["fine_tune"].trains_on_features(config.train.fine_tune)
    assert STRATEGIES["fine_tune"].builds_backbone(config.train.fine_tune)
    scratch = STRATEGIES["scratch"]
    assert not scratch.uses_backbone
    assert scratch.architecture(config.train.scratch, "digits") is not None


def test_scratch_logs_its_resolved_architecture_as_a_run_param() -> None:
    from pipeline.training.strategies import STRATEGIES
    from pipeline.training.tracked import run_params

    config = project_config()
    architecture = STRATEGIES["scratch"].architecture(config.train.scratch, config.data.dataset)
    assert run_params(STRATEGIES["scratch"], config)["train.architecture"] == architecture.name
    assert "train.architecture" not in run_params(STRATEGIES["fine_tune"], config)
    assert "backbone.name" in run_params(STRATEGIES["fine_tune"], config)
