"""Evaluate one strategy's model on the test split (`dvc.yaml`'s `evaluate@<strategy>`): its
metrics, confusion matrices, per-class figures, curves, galleries and explanations, in its
report folder and in evaluation.json, and logged once to MLflow. The val split is scored too,
for the val figures that choices between models are made on.

One stage per strategy, so changing one strategy re-evaluates only that one. The evaluation is
logged into the strategy's own run when that run has none yet (the execution that trained the
model); a finished run that already holds an evaluation is never written to again: a
re-evaluation of the same model (other `evaluate.*` params, say) gets a run of its own, tagged
with the run it evaluates. A run that lost the tracking server (run.json says `tracked: false`)
is evaluated as usual; `pipeline sync-mlflow` logs it later.

The report folder is written into a staging folder that replaces it whole once the evaluation
is written and logged (DVC persists it), so an evaluation that fails leaves the previous one.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.config import STRATEGY_NAMES, AugmentationConfig, load_config
from pipeline.entry import run_entry
from pipeline.errors import ConfigError, DataError
from pipeline.evaluation.layout import EVALUATION_JSON
from pipeline.store import atomic_directory, open_split, write_json
from pipeline.tracking.context import execution_tags
from pipeline.tracking.record import RunRecord

logger = logging.getLogger("pipeline.stages.evaluate")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument(
        "--model", type=Path, required=True, help="the strategy's model folder (named after it)"
    )
    parser.add_argument("--out", type=Path, required=True, help="the strategy's report folder")
    args = parser.parse_args(argv)
    strategy = args.model.name
    if strategy not in STRATEGY_NAMES:
        raise ConfigError(
            f"--model {args.model}: its folder must be named after a strategy "
            f"({', '.join(STRATEGY_NAMES)})"
        )
    config = load_config()

    from pipeline.tracking.server import check_tracking_server, tracking_uri

    check_tracking_server(tracking_uri(Path.cwd()))

    # Keras and MLflow load only after the server check (see the train stage).
    from pipeline.evaluation.report import evaluate_strategy
    from pipeline.explain.cache import explanation_cache
    from pipeline.models.backbones import BACKBONES
    from pipeline.tracking.runs import configure_tracking
    from pipeline.training.precision import explanation_precision

    experiment_id = configure_tracking(Path.cwd(), config.mlflow.experiment_name)
    # The test images are read a batch at a time (labels and digests are held): the split
    # is never in memory whole.
    test = open_split(args.prepared, "test")
    if not len(test):
        raise DataError(f"{args.prepared}: the test split is empty; rerun the split stage")
    # Scored for the val figures that choices are made on (promote.strategy best, tune).
    val = open_split(args.prepared, "val")
    run = RunRecord.read(args.model)
    train_image = None
    if run.augmentation and config.evaluate.augmented_versions > 0:
        train_image = read_first_image(args.prepared, "train")
    backbone = BACKBONES.get(run.params.get("backbone.name", ""))
    patterns = config.evaluate.patterns
    options = config.evaluate.model_copy(
        update={
            "patterns": patterns.model_copy(
                update={"precision": explanation_precision(patterns.precision)}
            )
        }
    )
    # Every file goes into `staging`, which replaces args.out only when all are written.
    with atomic_directory(args.out) as staging:
        try:
            evaluation = evaluate_strategy(
                strategy,
                args.model,
                staging,
                test,
                options,
                phase_boundary=run.phase_boundaries[0] if run.phase_boundaries else None,
                augmentation=AugmentationConfig(**run.augmentation) if run.augmentation else None,
                training_seconds=run.training_seconds,
                train_image=train_image,
                backbone_layers=backbone.pattern_layers if backbone else (),
                # Outside every DVC out (see pipeline/explain/cache.py): a model evaluated
                # before, with the same weights and params, reuses its filter patterns.
                cache=explanation_cache(Path.cwd()),
                # Folded into the model by the train stage: the evaluation recovers the
                # probabilities before it, for the ECE before and after.
                # A model trained before calibration existed holds no temperature: T = 1.
                temperature=run.temperature or 1.0,
                val=val,
            )
        finally:
            test.close()
            val.close()
        logger.info("%s: %s", strategy, evaluation["metrics"])
        record_evaluation(
            run,
            evaluation,
            staging,
            experiment_id,
            tags={"dataset": config.data.dataset, **execution_tags(Path.cwd())},
        )


def read_first_image(prepared: Path, split_name: str) -> np.ndarray | None:
    """The first image of a split (the augmentation figure's, as the course's listing 5.12),
    read alone; None when the split is empty."""
    split = open_split(prepared, split_name)
    try:
        return split.read([0])[0] if len(split) else None
    finally:
        split.close()


def record_evaluation(
    run: RunRecord, evaluation: dict, out: Path, experiment_id: str, tags: dict[str, str]
) -> dict:
    """Write the evaluation to `out`/evaluation.json and log that same dict and the report
    folder to MLflow (`pipeline sync-mlflow` logs the file the same way when the training run
    lost the server). Return the dict written."""
    from pipeline.tracking.strategy_runs import log_evaluation

    evaluation = {**evaluation, "run_id": run.run_id, "backbone_weights": run.backbone_weights}
    write_json(out / EVALUATION_JSON, evaluation)
    if not run.tracked:
        logger.warning(
            "%s: its MLflow run is incomplete (%s); `pipeline sync-mlflow` will log it",
            evaluation["strategy"],
            run.tracking_error,
        )
    else:
        log_evaluation(run.run_id, evaluation, out, experiment_id, tags)
    return evaluation


if __name__ == "__main__":
    run_entry(main, "stage 'evaluate'")
