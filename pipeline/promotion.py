"""One pass of the promotion gate against the registry: score, decide, register, record.

The walk has three steps, each in its own layer: the registry scores the challenger (a model
file) and the current champion on the test split; the pure gate (pipeline.evaluation.promotion)
decides; the registry then registers the challenger, tags its version with the verdict, and,
last of all, moves `champion` when the gate passed. A failure at any step leaves `champion`
where it was. Inside a DVC experiment the decision is computed and returned, and nothing is
registered: only the main line (`dvc repro` in the workspace, `pipeline retrain`) moves the
registry.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

from pipeline import registry
from pipeline.errors import DataError
from pipeline.evaluation.promotion import (
    Decision,
    GateThresholds,
    ScoredVersion,
    TestOverlap,
    UnusableChampion,
    judge_challenger,
)
from pipeline.store import MANIFEST_FILE, MODEL_FILE, data_version, open_split, sha256_of
from pipeline.tracking.context import execution_tags
from pipeline.tracking.runs import configure_tracking
from pipeline.tracking.strategy_runs import input_example

logger = logging.getLogger(__name__)


def promote_challenger(
    *,
    registered_model: str,
    experiment_name: str,
    dataset: str,
    strategy: str,
    model_dir: Path,
    source_run_id: str,
    prepared: Path,
    thresholds: GateThresholds,
    project_root: Path,
    dvc_experiment: str | None,
    resize: str = "stretch",
    max_pixels: int | None = None,
) -> dict:
    """Run the gate on `strategy`'s model (`model_dir`, trained in run `source_run_id`) against
    the champion of `registered_model`, on the test split in `prepared`; return the decision
    record that reports/promotion.json holds. `dvc_experiment` is the DVC experiment this runs
    in (None on the main line), `project_root` the project whose MLflow store is used, and
    `resize` and `max_pixels` the split's `data.resize` and `data.max_pixels`, with which the
    registered model decodes image files."""
    model_file = model_dir / MODEL_FILE
    manifest_file = model_dir / MANIFEST_FILE
    # Labels and digests are held; the images are read a batch at a time, once per model
    # (its files close with it, when this returns).
    test = open_split(prepared, "test")
    if not len(test):
        raise DataError(f"{prepared}: the test split is empty; rerun the split stage")
    main_line = dvc_experiment is None
    experiment_id = configure_tracking(project_root, experiment_name)
    version_of_data = data_version(prepared)
    model_sha256 = sha256_of(model_file)
    tags = {
        "dataset": dataset,
        "strategy": strategy,
        **execution_tags(project_root),
        "data_version": version_of_data,
        "pipeline.kind": "promotion",
        "source_run_id": str(source_run_id),
        registry.MODEL_SHA_TAG: model_sha256,
    }
    with registry.decision_run(experiment_id, f"{dataset}-promote", tags) as run_id:
        # Outside the main line nothing is registered, so which version already holds the
        # model file does not matter there.
        challenger, champion, unusable = registry.score_contenders(
            registered_model,
            model_file,
            manifest_file,
            test,
            test.classes,
            model_sha256 if main_line else None,
        )
        _warn_without_manifest(champion)
        rolled_back = registry.rolled_back_versions(registered_model) if main_line else frozenset()
        outcome = judge_challenger(
            test.y,
            test.digests(),
            challenger,
            champion,
            test.classes,
            thresholds,
            rolled_back,
            unusable,
        )
        decision = outcome.decision
        if decision.champion_unusable:
            logger.error("%s", decision.champion_unusable)
        _warn_about_overlap(outcome.overlap)
        version = None
        if main_line:
            version, new = registry.enter_challenger(
                registered_model,
                challenger,
                model_file,
                manifest_file,
                test.classes,
                input_example(test),
                {**tags, "promotion_run_id": run_id},
                resize=resize,
                monitoring_splits=(open_split(prepared, "train"), test),
                **({} if max_pixels is None else {"max_pixels": max_pixels}),
            )
            if new:
                logger.info(
                    "registered %s version %s (%s) as challenger",
                    registered_model,
                    version,
                    strategy,
                )
            else:
                logger.info(
                    "%s's model is already %s version %s: not registered again",
                    strategy,
                    registered_model,
                    version,
                )
        else:
            logger.info(
                "inside DVC experiment %s: the gate is computed and written to promotion.json; "
                "nothing is registered and no alias moves",
                dvc_experiment,
            )
        record = {
            "passed": decision.passed,
            "registered_model": registered_model,
            "strategy": strategy,
            # Registration happens on the main line only (dvc repro, pipeline retrain).
            "registered": version is not None,
            "dvc_experiment": dvc_experiment,
            "challenger": {
                "version": int(version) if version is not None else None,
                "run_id": run_id,
                "source_run_id": source_run_id,
                "model_sha256": model_sha256,
                "test_accuracy": decision.challenger_accuracy,
            },
            "champion": _champion_entry(champion, decision, unusable),
            # Test images either model trained on, excluded from the scores: 0 when fair.
            "train_test_overlap": outcome.overlap.excluded,
            "overlap": outcome.overlap.to_dict(),
            **{key: value for key, value in decision.to_dict().items() if key != "passed"},
            "reasons": decision.reasons(),
            "data_version": version_of_data,
            "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        # An unusable champion still holds the alias: it is what a rollback moves away from.
        champion_version = champion.version if champion else (unusable and unusable.version)
        if registry.record_outcome(registered_model, version, decision, champion_version, record):
            record["champion_after"] = int(version)
            logger.info("promoted %s version %s to champion", registered_model, version)
        else:
            record["champion_after"] = int(champion_version) if champion_version else None
            _log_kept(decision, champion_version, main_line)
    return record


def _champion_entry(
    champion: ScoredVersion | None, decision: Decision, unusable: UnusableChampion | None
) -> dict | None:
    if unusable is not None:
        return {
            "version": int(unusable.version),
            "usable": False,
            "unusable_reason": unusable.reason,
            "test_accuracy": None,
        }
    if champion is None:
        return None
    return {
        "version": int(champion.version),
        "usable": True,
        "run_id": champion.run_id,
        "test_accuracy": decision.champion_accuracy,
        "has_training_manifest": champion.training_manifest is not None,
    }


def _warn_without_manifest(champion: ScoredVersion | None) -> None:
    if champion is not None and champion.training_manifest is None:
        logger.warning(
            "champion version %s was registered without a training manifest: the gate "
            "cannot check that it never trained on today's test images",
            champion.version,
        )


def _warn_about_overlap(overlap: TestOverlap) -> None:
    # The gate is fair by proof: test images either model trained on are left out.
    if overlap.excluded:
        logger.warning(
            "%d of %d test images are in a model's training manifest (challenger %d, "
            "champion %s): the gate leaves them out",
            overlap.excluded,
            overlap.test_images,
            overlap.in_challenger_training,
            overlap.in_champion_training,
        )


def _log_kept(decision: Decision, champion: str | None, main_line: bool) -> None:
    reasons = "; ".join(decision.reasons())
    if main_line:
        kept = f"version {champion}" if champion else "none yet"
        logger.warning("kept the champion (%s): %s", kept, reasons)
    else:
        verb = "promote" if decision.passed else "keep the champion"
        logger.info("the gate would %s: %s", verb, reasons)
