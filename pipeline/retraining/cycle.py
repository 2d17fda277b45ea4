"""A retraining cycle as a whole: its record (reports/retrain.json), its steps timed and
recorded as they run, and its own MLflow run, which the strategy runs become children of."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import PipelineConfig
from pipeline.errors import PipelineError, RetrainFailed
from pipeline.retraining.commands import run_command
from pipeline.retraining.lock import LOCK_FILE, cycle_lock
from pipeline.retraining.steps import run_steps
from pipeline.store import write_json
from pipeline.tracking.context import UNCOMMITTED_PARAMS_TAG, describe_params

logger = logging.getLogger(__name__)

RECORD_FILE = "reports/retrain.json"


@dataclass
class StepOutcome:
    name: str
    status: str  # ok | skipped | failed
    seconds: float
    detail: str = ""


@dataclass
class CycleRecord:
    """What reports/retrain.json holds."""

    started_at: str
    forced: bool
    outcome: str = "running"  # no new data | review queued | promoted | rejected | failed
    triggers: list[str] = field(default_factory=list)
    """What started it: "new data", "drift", "forced" (pipeline.retraining.triggers)."""
    drift_report: str | None = None
    """The monitor report whose drift verdict this cycle acted on."""
    review: dict | None = None
    """The review queue written when drift came without new labelled images."""
    steps: list[StepOutcome] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    decision: dict | None = None
    champion_unusable: str | None = None
    """Why the champion could not be loaded when the gate ran, and how to recover (the gate
    then judged the challenger on the floors alone)."""
    mlflow_run_id: str | None = None
    strategy_runs: dict[str, str] = field(default_factory=dict)
    params_uncommitted: dict[str, str] = field(default_factory=dict)
    lock: dict = field(default_factory=dict)
    failed_step: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


class Cycle:
    """The state one cycle carries from step to step."""

    def __init__(self, root: Path, force: bool, dvc: list[str]) -> None:
        self.root = root
        self.force = force
        self.dvc = dvc
        self.record = CycleRecord(
            started_at=datetime.now(UTC).isoformat(timespec="seconds"), forced=force
        )
        self.started = time.time()
        self.config: PipelineConfig | None = None
        self.fingerprint: dict | None = None
        self.recorder = None  # the cycle's MLflow run (pipeline.tracking.runs.RunRecorder)
        self.drift: dict | None = None  # the monitor report that says drift, not yet acted on

    def step(self, name: str, action: Callable[[], str | None]) -> None:
        """Run one step, timing it; on any error, record the step as failed and stop."""
        logger.info("retrain: %s", name)
        start = time.monotonic()
        try:
            detail = action() or ""
        except Exception as error:
            seconds = round(time.monotonic() - start, 2)
            message = str(error) if isinstance(error, PipelineError) else _describe(error)
            self.record.steps.append(StepOutcome(name, "failed", seconds, message))
            self.record.outcome, self.record.failed_step = "failed", name
            self.record.error = message
            raise RetrainFailed(
                f"retraining failed at step '{name}': {message}\n"
                "The champion model was left where it was."
            ) from error
        status = "skipped" if detail.startswith("skipped") else "ok"
        self.record.steps.append(
            StepOutcome(name, status, round(time.monotonic() - start, 2), detail)
        )
        logger.info("retrain: %s %s %s", name, status, detail)

    def run_dvc(self, *arguments: str, env: dict | None = None) -> None:
        """`dvc <arguments>` in the project, its output shown as it comes; on failure, raise
        with the last lines, where DVC and the stages say what went wrong."""
        result = run_command([*self.dvc, *arguments], self.root, env, show=True)
        if result.status != 0:
            lines = "\n".join(f"    {line}" for line in result.stdout.splitlines() if line)
            raise PipelineError(
                f"`dvc {' '.join(arguments)}` exited with status {result.status}:\n{lines}"
            )

    def start_run(self) -> None:
        """The cycle's own MLflow run; the strategy runs become its children."""
        from pipeline.tracking.cycle_runs import open_cycle_run

        config = self.config
        tags = {
            "retrain": "true",
            "pipeline.kind": "retrain",
            "dataset": config.data.dataset,
            "data_change": self.record.data.get("summary", "")[:500],
            "forced": str(self.force).lower(),
            "trigger": ",".join(self.record.triggers),
        }
        if self.record.drift_report:
            tags["drift_report"] = self.record.drift_report
        if self.record.params_uncommitted:
            tags[UNCOMMITTED_PARAMS_TAG] = describe_params(self.record.params_uncommitted)
        self.recorder = open_cycle_run(
            self.root, config.mlflow.experiment_name, f"{config.data.dataset}-retrain", tags
        )
        self.record.mlflow_run_id = self.recorder.run_id

    def finish(self, status: str) -> None:
        """Write reports/retrain.json and close the cycle's MLflow run with it."""
        record = self.record
        write_json(self.root / RECORD_FILE, record.to_dict())
        if self.recorder is None:
            return
        from pipeline.tracking.cycle_runs import close_cycle_run

        tags = {"outcome": record.outcome}
        if record.failed_step:
            tags["failed_step"] = record.failed_step
        for strategy, run_id in record.strategy_runs.items():
            tags[f"strategy_run.{strategy}"] = str(run_id)
        if record.decision:
            tags["promotion.passed"] = str(record.decision["passed"]).lower()
            tags["promotion.challenger_version"] = str(record.decision["challenger"]["version"])
            tags["promotion.run_id"] = str(record.decision["challenger"]["run_id"])
        if record.champion_unusable:
            tags["promotion.champion_unusable"] = record.champion_unusable[:1000]
        seconds = {step.name: step.seconds for step in record.steps}
        close_cycle_run(self.recorder, record.to_dict(), tags, seconds, status)


def run_cycle(root: Path, force: bool = False, dvc: list[str] | None = None) -> CycleRecord:
    """One retraining cycle in the project at `root` (see pipeline/retraining/__init__.py).

    Returns the record (also written to reports/retrain.json); raises LockHeld when another
    cycle runs, RetrainFailed naming the step that failed.
    """
    root = root.resolve()
    cycle = Cycle(root, force, dvc or [sys.executable, "-m", "dvc"])
    with cycle_lock(root / LOCK_FILE) as lock:
        cycle.record.lock = lock
        try:
            run_steps(cycle)
        except RetrainFailed:
            cycle.finish("FAILED")
            raise
        cycle.finish("FINISHED")
    return cycle.record


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
