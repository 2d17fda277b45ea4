"""What starts a retraining cycle: new labelled images, a drift verdict of `pipeline monitor`
that no cycle has acted on yet, or `--force`. Drift with no new labelled images cannot be fixed
by training on the same data again: the cycle then writes a review queue of the served images
that most need a label (pipeline.retraining.review) instead of retraining.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path

from pipeline.monitoring.monitor import LATEST_FILE, REPORTS_DIR
from pipeline.store import read_json, write_json

logger = logging.getLogger(__name__)

NEW_DATA = "new data"
DRIFT = "drift"
FORCED = "forced"
HANDLED_FILE = "reports/retrain/drift_handled.json"
"""The last drift verdict a cycle acted on (retrained, or queued for review)."""
REVIEW_DIR = "reports/review"


def pending_drift(root: Path) -> dict | None:
    """The latest monitor report when it says drift and no cycle has acted on it yet."""
    latest = root / REPORTS_DIR / LATEST_FILE
    if not latest.is_file():
        return None
    report = read_json(latest)
    if not report.get("drift"):
        return None
    handled = root / HANDLED_FILE
    if handled.is_file() and read_json(handled).get("report") == report.get("report"):
        return None
    return report


def mark_handled(root: Path, report: dict, action: str) -> None:
    """Record that a cycle acted on the drift verdict `report`, so it starts no other."""
    write_json(
        root / HANDLED_FILE,
        {"report": report.get("report"), "window_end": report.get("window_end"), "action": action},
    )


def describe_drift(report: dict) -> str:
    fired = ", ".join(report.get("fired") or []) or "a test"
    return (
        f"drift in {report.get('registered_model')} version {report.get('model_version')}'s "
        f"traffic ({fired}; {report.get('report')})"
    )


def write_review(root: Path, report: dict, image_folder: str | None, size: int = 100) -> dict:
    """The review queue for the drifted window of `report`: the served images that most need
    a label, as reports/review/queue.csv and a page of thumbnails."""
    from pipeline.monitoring.records import read_window
    from pipeline.registry import monitoring_reference
    from pipeline.retraining.review import select_for_review, write_review_queue

    predictions = Path(report["predictions_dir"])
    end = datetime.fromisoformat(report["window_end"])
    start = datetime.fromisoformat(report["window_start"]) if report.get("window_start") else end
    records = read_window(
        predictions,
        last=(end - start) + timedelta(microseconds=1),
        now=end,
        version=report["model_version"],
    )
    reference = monitoring_reference(report["registered_model"], report["model_version"])
    queue = select_for_review(records, reference.embeddings, size=size)
    title = f"To label: {describe_drift(report)}"
    return write_review_queue(
        root / REVIEW_DIR, queue, predictions, title, image_folder=image_folder
    )
