"""The steps of a retraining cycle after the lock: tracking, detect, prepare, validate,
pipeline, promote (see pipeline/retraining/__init__.py). Each returns what it did, in a few
words for reports/retrain.json, or raises; `Cycle.step` times and records it."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import STRATEGY_NAMES, load_config
from pipeline.datasets.fingerprint import DataChange, compare_fingerprints, fingerprint_dataset
from pipeline.errors import PipelineError
from pipeline.retraining import triggers
from pipeline.retraining.commands import run_command
from pipeline.retraining.lock import STATE_DIR
from pipeline.store import PLAN_FILE, RUN_FILE, read_json, write_json
from pipeline.tracking.context import describe_params, uncommitted_params
from pipeline.tracking.record import RunRecord
from pipeline.tracking.server import check_tracking_server, limit_http_retries, tracking_uri
from pipeline.wiring import is_path_under, load_stages, project_paths

if TYPE_CHECKING:
    from pipeline.retraining.cycle import Cycle

REFERENCE_DIR = f"{STATE_DIR}/reference"
TRAINED_DATA_FILE = "reports/retrain/trained_data.json"
DRIFT_DIR = "reports/retrain/validation"
TRAIN_STAGE_MODULE = "pipeline.stages.train"

logger = logging.getLogger(__name__)


def run_steps(cycle: Cycle) -> None:
    """The steps in order; a cycle with no new data (and no --force) stops after detect."""
    root, record = cycle.root, cycle.record

    def check_tracking() -> str:
        limit_http_retries()
        uri = tracking_uri(root)
        check_tracking_server(uri)
        return f"{uri} answers"

    cycle.step("tracking", check_tracking)
    cycle.step("detect", lambda: _detect(cycle))
    if record.steps[-1].status == "skipped":
        record.outcome = "no new data"
        return
    cycle.start_run()
    if record.triggers == [triggers.DRIFT]:
        # Retraining on the same images cannot follow a world that changed: ask for labels.
        cycle.step("review", lambda: _review(cycle))
        record.outcome = "review queued"
        return
    paths = project_paths(root)
    prepared = root / paths["prepared"]
    reference = root / REFERENCE_DIR
    cycle.step("prepare", lambda: _prepare(cycle, prepared, reference))
    cycle.step("validate", lambda: _validate(root, prepared, reference))
    cycle.step("pipeline", lambda: _run_pipeline(cycle, root / paths["models"]))
    # The new data has been trained on, whatever the gate decides next.
    write_json(root / TRAINED_DATA_FILE, cycle.fingerprint)
    cycle.step("promote", lambda: _promote(cycle, root / paths["promotion"]))
    if cycle.drift is not None:
        triggers.mark_handled(root, cycle.drift, "retrained")


def _detect(cycle: Cycle) -> str:
    """Fingerprint the dataset's source and compare it with the data last trained on."""
    root = cycle.root
    cycle.config = load_config(root / "params.yaml")
    _note_uncommitted_params(cycle)
    data = cycle.config.data
    folder = Path(data.image_folder)
    cycle.fingerprint = fingerprint_dataset(
        data.dataset,
        folder if folder.is_absolute() else root / folder,
        data.mirror,
        data.sources,
        follow_links=data.follow_links,
    )
    previous = read_json(root / TRAINED_DATA_FILE) if (root / TRAINED_DATA_FILE).is_file() else None
    if previous is None and _pipeline_up_to_date(cycle):
        # No cycle has run yet, but `dvc repro` (make repro) trained on this very data:
        # that is the record to compare with from now on.
        write_json(root / TRAINED_DATA_FILE, cycle.fingerprint)
        previous = cycle.fingerprint
    change = compare_fingerprints(previous, cycle.fingerprint)
    cycle.record.data = _describe_change(change)
    cycle.drift = triggers.pending_drift(root)
    found = [triggers.NEW_DATA] if change.changed else []
    if cycle.drift is not None:
        found.append(triggers.DRIFT)
        cycle.record.drift_report = cycle.drift.get("report")
    if cycle.force:
        found.append(triggers.FORCED)
    cycle.record.triggers = found
    if not found:
        return f"skipped: {change.summary}; no drift verdict to act on"
    said = [change.summary if change.changed else f"no new data ({change.summary})"]
    if cycle.drift is not None:
        said.append(triggers.describe_drift(cycle.drift))
    if cycle.force:
        said.append("forced")
    return "; ".join(said)


def _review(cycle: Cycle) -> str:
    """Drift without new labelled images: the review queue, and the verdict marked acted on."""
    image_folder = cycle.config.data.image_folder if cycle.config else None
    review = triggers.write_review(cycle.root, cycle.drift, image_folder)
    cycle.record.review = review
    triggers.mark_handled(cycle.root, cycle.drift, "review queued")
    return (
        f"no new labelled images, so retraining would learn nothing new: {review['images']} "
        f"served images to label in {review['html']} ({review['csv']})"
    )


def _note_uncommitted_params(cycle: Cycle) -> None:
    """Warn, and record, when params.yaml differs from the last commit: a workspace `dvc exp
    run -S` leaves its values there, and a scheduled cycle would otherwise train with them
    without a word. The cycle goes on with them (`dvc exp apply` puts params there on purpose
    too); the warning says how to choose."""
    uncommitted = uncommitted_params(cycle.root)
    if not uncommitted:
        return
    cycle.record.params_uncommitted = {key: str(value) for key, value in uncommitted.items()}
    logger.warning(
        "params.yaml differs from the last commit in %s: this cycle trains with these values. "
        "A `dvc exp run` in the workspace leaves its params there; to retrain with the "
        "committed ones, run `git checkout params.yaml` first (or commit these).",
        describe_params(uncommitted),
    )


def _prepare(cycle: Cycle, prepared: Path, reference: Path) -> str:
    """`dvc repro split`, keeping the previous prepared data as the drift reference."""
    shutil.rmtree(reference, ignore_errors=True)
    kept = ""
    if (prepared / PLAN_FILE).is_file():
        shutil.copytree(prepared, reference)
        kept = f"; the previous data kept in {REFERENCE_DIR} as the drift reference"
    cycle.run_dvc("repro", "split")
    return f"dvc repro split{kept}"


def _validate(root: Path, prepared: Path, reference: Path) -> str:
    """The data gate on the new data, with the previous data as the drift reference."""
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
    result = run_command(command, root)
    if result.status != 0:
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
    return f"data gate passed against the previous data ({summary.get('warnings', 0)} warning(s))"


def _run_pipeline(cycle: Cycle, models_dir: Path) -> str:
    """`dvc repro`, the strategy runs children of the cycle's run; with --force the training
    stages run whether DVC finds them up to date or not."""
    record = cycle.record
    env = {"MLFLOW_RUN_ID": record.mlflow_run_id} if record.mlflow_run_id else {}
    done = "dvc repro"
    if cycle.force:
        # Retrain the models, not the data: their inputs are brought up to date first, then
        # the training stages run whether DVC finds them up to date or not.
        stages = load_stages(cycle.root)
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
        if (models_dir / strategy / RUN_FILE).is_file():
            record.strategy_runs[strategy] = RunRecord.read(models_dir / strategy).run_id
    return done


def _promote(cycle: Cycle, decision_file: Path) -> str:
    """The promotion gate's decision, run again when DVC found the promote stage up to date."""
    record = cycle.record
    if not _decided_since(decision_file, cycle.started):
        # DVC found the promote stage up to date (the same models): the gate still runs,
        # against today's champion.
        env = {"MLFLOW_RUN_ID": record.mlflow_run_id} if record.mlflow_run_id else {}
        cycle.run_dvc("repro", "--force", "--single-item", "promote", env=env)
        # The report shows the decision on its first screen: render it from the new one, so
        # the page is current and `dvc status` clean after the cycle.
        cycle.run_dvc("repro", "report", env=env)
    record.decision = read_json(decision_file)
    record.outcome = "promoted" if record.decision["passed"] else "rejected"
    # A champion that could not be loaded: the gate judged on the floors alone and says how
    # to recover; the cycle's record says so at its top level too.
    record.champion_unusable = record.decision.get("champion_unusable")
    challenger = record.decision["challenger"]
    # With no champion yet there is none to keep: the challenger is only rejected.
    kept = "champion kept" if record.decision.get("champion") else "rejected, no champion yet"
    verdict = (
        f"version {challenger['version']} is the new champion"
        if record.decision["passed"]
        else f"{kept}: " + "; ".join(record.decision.get("reasons", []))
    )
    if record.decision["passed"] and record.champion_unusable:
        verdict += f" ({record.champion_unusable})"
    return f"{record.decision['strategy']} {verdict}"


def _pipeline_up_to_date(cycle: Cycle) -> bool:
    """Whether `dvc status` finds every stage up to date: the models were trained, by the last
    `dvc repro`, on the data there now."""
    if not (cycle.root / "dvc.lock").is_file():
        return False
    result = run_command([*cycle.dvc, "status", "--json"], cycle.root)
    try:
        return result.status == 0 and json.loads(result.stdout or "null") == {}
    except ValueError:
        return False


def _decided_since(decision_file: Path, since: float) -> bool:
    return decision_file.is_file() and decision_file.stat().st_mtime >= since


def _describe_change(change: DataChange) -> dict:
    """The data change for reports/retrain.json: counts, and up to 20 names of each kind."""

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
