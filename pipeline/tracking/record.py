"""The run record: what a strategy's model folder says about the MLflow run that trained it.

Training writes it once (`models/<strategy>/run.json`); evaluate, promote, retrain and
`pipeline sync-mlflow` read it through `RunRecord.read`, never as a loose dict. It holds
enough to log the run again from scratch when the tracking server was lost.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, PositiveFloat, ValidationError

from pipeline.errors import PipelineError
from pipeline.store import RUN_FILE, write_json


class RunRecord(BaseModel):
    """One strategy's training run, as its model folder records it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run_id: str
    experiment_id: str
    experiment_name: str
    run_name: str
    model_uri: str | None = None
    """The logged model's URI (MLflow 3: `models:/m-...`); None when it could not be logged."""
    backbone_weights: str
    """The weights the backbone really had (`none` for a strategy without one)."""
    tracked: bool
    """False when the tracking server was lost: `pipeline sync-mlflow` logs the run again."""
    tracking_error: str | None = None
    tags: dict[str, str]
    params: dict[str, Any]
    validation_summary: dict[str, Any]
    """The data gate's summary of the data trained on (logged as validation/summary.json)."""
    training_seconds: float
    phase_boundaries: list[int] = []
    """Epochs where a new training phase starts (fine-tuning's unfreezing)."""
    augmentation: dict[str, Any] | None = None
    """The augmentation as resolved for the dataset; None when off."""
    temperature: PositiveFloat | None = None
    """The temperature folded into the saved model's output layer (fitted on val); 1 when
    none was fitted (`train.calibration: none`, no val image, no val mistake); None for models
    trained before calibration existed (their probabilities are the network's own)."""
    val_nll_before: float | None = None
    """The val split's NLL before temperature scaling; None when no temperature was fitted."""
    val_nll_after: float | None = None
    """The val split's NLL after temperature scaling; None when no temperature was fitted."""
    class_weights: dict[str, float] | None = None
    """Each class index's loss weight as training used it (`train.<strategy>.class_weight`
    resolved on the train split); None when unweighted, and for runs recorded before."""

    @property
    def strategy(self) -> str:
        return self.tags.get("strategy", "")

    def calibration_metrics(self) -> dict[str, float]:
        """What the training run logs once training is done: `temperature`, `val_nll_before`
        and `val_nll_after` when a temperature was fitted, and `class_weight_<index>` per class
        when the loss was weighted."""
        fields = ("temperature", "val_nll_before", "val_nll_after")
        values = {name: getattr(self, name) for name in fields if getattr(self, name) is not None}
        values.update(class_weight_metrics(self.class_weights))
        return values

    def write(self, model_dir: Path) -> Path:
        """Write `model_dir/run.json` atomically."""
        path = Path(model_dir) / RUN_FILE
        write_json(path, self.model_dump(mode="json"))
        return path

    @classmethod
    def read(cls, model_dir: Path) -> RunRecord:
        """The record in `model_dir/run.json`; a clear error when it is missing or malformed."""
        return cls.read_file(Path(model_dir) / RUN_FILE)

    @classmethod
    def read_file(cls, path: Path) -> RunRecord:
        """The record in the run.json at `path` (a stage given the file itself)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise PipelineError(
                f"{path} is missing: train the strategy first (dvc repro train_<strategy>)"
            ) from None
        except (OSError, json.JSONDecodeError) as error:
            raise PipelineError(f"{path} cannot be read ({error}): retrain the strategy") from None
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            raise PipelineError(
                f"{path} is not a run record this version understands ({error.error_count()} "
                f"problem(s), first: {error.errors()[0]['loc']}): retrain the strategy"
            ) from None


def class_weight_metrics(weights: dict[str, float] | None) -> dict[str, float]:
    """The class weights a training used as MLflow metrics, `class_weight_<class index>`."""
    return {f"class_weight_{index}": float(value) for index, value in (weights or {}).items()}
