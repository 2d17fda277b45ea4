"""One retraining cycle, as cron, a systemd timer or a CI schedule runs it (`pipeline retrain`):

    lock -> tracking -> detect -> prepare -> validate -> pipeline -> promote -> record

1. **lock**: one cycle at a time per project. A second one exits at once (status 75), naming
   the holder; a lock left by a killed cycle is taken over (the kernel drops a dead process's
   `flock`, so a lock file that can be locked is stale whatever it says).
2. **tracking**: the MLflow server answers, or the cycle stops in seconds.
3. **detect**: the dataset's source against the one last trained on (pipeline.datasets.
   fingerprint). With no change, and no `--force`, the cycle ends here, successfully.
4. **prepare**: `dvc repro split` (download and split the new data), keeping a copy of the
   previous prepared data.
5. **validate**: the data gate on the new data, with that copy as the drift reference.
6. **pipeline**: `dvc repro`, every strategy's run a child of this cycle's MLflow run.
7. **promote**: the promotion gate (the `promote` stage), forced when DVC found it up to date.
8. **record**: reports/retrain.json, and the cycle's own MLflow run, tagged `retrain`.

A failure at any step leaves the `champion` alias where it was, records the failed step, and
exits non-zero.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from pipeline.config import STRATEGY_NAMES, PipelineConfig, load_config
from pipeline.datasets.fingerprint import DataChange, compare_fingerprints, fingerprint_dataset
from pipeline.errors import PipelineError, RetrainFailed
from pipeline.store import PLAN_FILE, RUN_FILE, read_json, write_json
from pipeline.tracking.server import check_tracking_server, limit_http_retries, tracking_uri
from pipeline.wiring import is_path_under, load_stages, project_paths

logger = logging.getLogger(__name__)

STATE_DIR = ".pipeline"
LOCK_FILE = f"{STATE_DIR}/retrain.lock"
REFERENCE_DIR = f"{STATE_DIR}/reference"
RECORD_FILE = "reports/retrain.json"
TRAINED_DATA_FILE = "reports/retrain/trained_data.json"
DRIFT_DIR = "reports/retrain/validation"
TRAIN_STAGE_MODULE = "pipeline.stages.train"
LOCK_HELD_STATUS = 75  # EX_TEMPFAIL: try again later; systemd units list it as success


class LockHeld(PipelineError):
    """Another cycle holds the lock."""


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
    outcome: str = "running"  # no new data | promoted | rejected | failed
    steps: list[StepOutcome] = field(default_factory=list)
    data: dict = field(default_factory=dict)
    decision: dict | None = None
    mlflow_run_id: str | None = None
    strategy_runs: dict[str, str] = field(default_factory=dict)
    lock: dict = field(default_factory=dict)
    failed_step: str | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


# --- the lock ---------------------------------------------------------------------------------


@contextlib.contextmanager
def cycle_lock(path: Path) -> Iterator[dict]:
    """Hold the project's retraining lock; yield {"holder": ..., "took_over": previous|None}.

    The file holds the holder's pid, host and start time, for the message a second cycle
    prints. Raises LockHeld when another live process holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(descriptor)
        os.close(descriptor)
        raise LockHeld(
            "another retraining cycle is running: pid {pid} on host {host}, started {started} "
            "(lock file {path}); this one exits without doing anything".format(
                path=path, **{"pid": "?", "host": "?", "started": "?", **holder}
            )
        ) from None
    previous = _read_holder(descriptor) or None
    if previous:
        logger.warning(
            "took over a stale lock: the cycle of pid %s on host %s, started %s, is gone",
            previous.get("pid"),
            previous.get("host"),
            previous.get("started"),
        )
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(holder).encode(), 0)
    os.fsync(descriptor)
    try:
        yield {"holder": holder, "took_over": previous}
    finally:
        os.ftruncate(descriptor, 0)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def _read_holder(descriptor: int) -> dict:
    raw = os.pread(descriptor, 4096, 0)
    try:
        holder = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {"pid": "?", "host": "?", "started": "? (unreadable lock file)"}
    return holder if isinstance(holder, dict) else {}


# --- the cycle --------------------------------------------------------------------------------


class _Cycle:
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
        command = [*self.dvc, *arguments]
        tail: deque[str] = deque(maxlen=25)
        # DVC runs each stage's `python -m ...` with the first python on PATH: make it this
        # environment's, even under cron or systemd, whose PATH knows no virtualenv.
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
        with subprocess.Popen(
            command,
            cwd=self.root,
            env={**os.environ, "PATH": path, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as process:
            for line in process.stdout:
                sys.stderr.write(line)
                tail.append(line.rstrip())
        if process.returncode != 0:
            lines = "\n".join(f"    {line}" for line in tail if line)
            raise PipelineError(
                f"`dvc {' '.join(arguments)}` exited with status {process.returncode}:\n{lines}"
            )


def run_cycle(root: Path, force: bool = False, dvc: list[str] | None = None) -> CycleRecord:
    """One retraining cycle in the project at `root` (see the module docstring).

    Returns the record (also written to reports/retrain.json); raises LockHeld when another
    cycle runs, RetrainFailed naming the step that failed.
    """
    root = root.resolve()
    cycle = _Cycle(root, force, dvc or [sys.executable, "-m", "dvc"])
    with cycle_lock(root / LOCK_FILE) as lock:
        cycle.record.lock = lock
        try:
            _run_steps(cycle)
        except RetrainFailed:
            _finish(cycle, "FAILED")
            raise
        _finish(cycle, "FINISHED")
    return cycle.record


def _run_steps(cycle: _Cycle) -> None:
    root, record = cycle.root, cycle.record

    def check_tracking() -> str:
        limit_http_retries()
        uri = tracking_uri(root)
        check_tracking_server(uri)
        return f"{uri} answers"

    def detect() -> str:
        cycle.config = load_config(root / "params.yaml")
        data = cycle.config.data
        folder = Path(data.image_folder)
        cycle.fingerprint = fingerprint_dataset(
            data.dataset,
            folder if folder.is_absolute() else root / folder,
            data.mirror,
            data.sources,
        )
        previous = _read_optional(root / TRAINED_DATA_FILE)
        if previous is None and _pipeline_up_to_date(cycle):
            # No cycle has run yet, but `dvc repro` (make repro) trained on this very data:
            # that is the record to compare with from now on.
            write_json(root / TRAINED_DATA_FILE, cycle.fingerprint)
            previous = cycle.fingerprint
        change = compare_fingerprints(previous, cycle.fingerprint)
        record.data = _describe_change(change)
        if not change.changed and not cycle.force:
            return f"skipped: {change.summary}"
        return change.summary + (" (forced)" if not change.changed else "")

    cycle.step("tracking", check_tracking)
    cycle.step("detect", detect)
    if record.steps[-1].status == "skipped":
        record.outcome = "no new data"
        return
    _start_cycle_run(cycle)
    paths = project_paths(root)
    prepared = root / paths["prepared"]
    reference = root / REFERENCE_DIR

    def prepare() -> str:
        shutil.rmtree(reference, ignore_errors=True)
        kept = ""
        if (prepared / PLAN_FILE).is_file():
            shutil.copytree(prepared, reference)
            kept = f"; the previous data kept in {REFERENCE_DIR} as the drift reference"
        cycle.run_dvc("repro", "split")
        return f"dvc repro split{kept}"

    def validate() -> str:
        if not (reference / PLAN_FILE).is_file():
            return "skipped: no previous training data to test drift against"
        drift_dir = root / DRIFT_DIR
        command = [
            sys.executable, "-m", "pipeline.stages.validate",
            "--prepared", str(prepared),
            "--docs", str(drift_dir / "data_docs"),
            "--summary", str(drift_dir / "summary.json"),
            "--reference", str(reference),
        ]  # fmt: skip
        result = subprocess.run(command, cwd=root, capture_output=True, text=True)
        if result.returncode != 0:
            message = result.stderr.strip()
            start = message.find("error in stage")
            raise PipelineError(message[start:] if start >= 0 else message[-3000:])
        summary = read_json(drift_dir / "summary.json")
        drift = summary.get("drift") or {}
        if drift.get("compared") is False:
            # Another dataset or other classes: drift means nothing; the gate itself ran.
            return (
                f"data gate passed; no comparable reference for drift ({drift.get('reason')}), "
                f"{summary.get('warnings', 0)} warning(s)"
            )
        return (
            f"data gate passed against the previous data ({summary.get('warnings', 0)} warning(s))"
        )

    def run_pipeline() -> str:
        env = {"MLFLOW_RUN_ID": record.mlflow_run_id} if record.mlflow_run_id else {}
        done = "dvc repro"
        if cycle.force:
            # Retrain the models, not the data: their inputs are brought up to date first, then
            # the training stages run whether DVC finds them up to date or not.
            stages = load_stages(root)
            training = [s for s in stages if s.module == TRAIN_STAGE_MODULE]
            inputs = sorted(
                {
                    other.name
                    for stage in training
                    for other in stages
                    if any(is_path_under(dep, other.outs) for dep in stage.path_deps)
                }
            )
            names = [stage.name for stage in training]
            cycle.run_dvc("repro", *inputs, env=env)
            cycle.run_dvc("repro", "--force", "--single-item", *names, env=env)
            done = f"dvc repro --force --single-item {' '.join(names)}; dvc repro"
        cycle.run_dvc("repro", env=env)
        for strategy in STRATEGY_NAMES:
            run_file = root / paths["models"] / strategy / RUN_FILE
            if run_file.is_file():
                record.strategy_runs[strategy] = read_json(run_file).get("run_id")
        return done

    def promote() -> str:
        decision_file = root / paths["promotion"]
        if not _decided_since(decision_file, cycle.started):
            # DVC found the promote stage up to date (the same models): the gate still runs,
            # against today's champion.
            env = {"MLFLOW_RUN_ID": record.mlflow_run_id} if record.mlflow_run_id else {}
            cycle.run_dvc("repro", "--force", "--single-item", "promote", env=env)
        record.decision = read_json(decision_file)
        record.outcome = "promoted" if record.decision["passed"] else "rejected"
        challenger = record.decision["challenger"]
        verdict = (
            f"version {challenger['version']} is the new champion"
            if record.decision["passed"]
            else "champion kept: " + "; ".join(record.decision.get("reasons", []))
        )
        return f"{record.decision['strategy']} {verdict}"

    cycle.step("prepare", prepare)
    cycle.step("validate", validate)
    cycle.step("pipeline", run_pipeline)
    # The new data has been trained on, whatever the gate decides next.
    write_json(root / TRAINED_DATA_FILE, cycle.fingerprint)
    cycle.step("promote", promote)


def _start_cycle_run(cycle: _Cycle) -> None:
    """The cycle's own MLflow run; the strategy runs become its children."""
    from pipeline.tracking.runs import RunRecorder, configure_tracking, create_run

    config = cycle.config
    experiment_id = configure_tracking(cycle.root, config.mlflow.experiment_name)
    from pipeline.tracking.context import execution_tags

    tags = {
        **execution_tags(cycle.root),
        "retrain": "true",
        "pipeline.kind": "retrain",
        "dataset": config.data.dataset,
        "data_change": cycle.record.data.get("summary", "")[:500],
        "forced": str(cycle.force).lower(),
    }
    cycle.recorder = RunRecorder(create_run(experiment_id, f"{config.data.dataset}-retrain", tags))
    cycle.record.mlflow_run_id = cycle.recorder.run_id


def _finish(cycle: _Cycle, status: str) -> None:
    """Write reports/retrain.json and close the cycle's MLflow run with it."""
    record = cycle.record
    write_json(cycle.root / RECORD_FILE, record.to_dict())
    recorder = cycle.recorder
    if recorder is None:
        return
    import mlflow

    client = mlflow.MlflowClient()
    tags = {"outcome": record.outcome}
    if record.failed_step:
        tags["failed_step"] = record.failed_step
    for strategy, run_id in record.strategy_runs.items():
        tags[f"strategy_run.{strategy}"] = str(run_id)
    if record.decision:
        tags["promotion.passed"] = str(record.decision["passed"]).lower()
        tags["promotion.challenger_version"] = str(record.decision["challenger"]["version"])
        tags["promotion.run_id"] = str(record.decision["challenger"]["run_id"])
    for key, value in tags.items():
        recorder(f"tag {key}", client.set_tag, recorder.run_id, key, value)
    for step in record.steps:
        recorder(
            "step metrics", client.log_metric, recorder.run_id, f"seconds_{step.name}", step.seconds
        )
    recorder("cycle record", client.log_dict, recorder.run_id, record.to_dict(), "retrain.json")
    recorder("end run", client.set_terminated, recorder.run_id, status)


def _pipeline_up_to_date(cycle: _Cycle) -> bool:
    """Whether `dvc status` finds every stage up to date: the models were trained, by the last
    `dvc repro`, on the data there now."""
    if not (cycle.root / "dvc.lock").is_file():
        return False
    result = subprocess.run(
        [*cycle.dvc, "status", "--json"], cwd=cycle.root, capture_output=True, text=True
    )
    try:
        return result.returncode == 0 and json.loads(result.stdout or "null") == {}
    except ValueError:
        return False


def _decided_since(decision_file: Path, since: float) -> bool:
    return decision_file.is_file() and decision_file.stat().st_mtime >= since


def _describe_change(change: DataChange) -> dict:
    def sample(names: tuple[str, ...]) -> list[str]:
        return list(names[:20])

    return {
        "changed": change.changed,
        "summary": change.summary,
        "added": len(change.added),
        "removed": len(change.removed),
        "modified": len(change.modified),
        "examples": {
            "added": sample(change.added),
            "removed": sample(change.removed),
            "modified": sample(change.modified),
        },
    }


def _read_optional(path: Path) -> dict | None:
    return read_json(path) if path.is_file() else None


def _describe(error: Exception) -> str:
    return f"{type(error).__name__}: {error}"
