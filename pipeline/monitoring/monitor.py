"""`pipeline monitor`: one window of recorded traffic against the serving version's reference.

The version is the champion's (or the one named); its reference (the test split's embeddings,
predicted classes and confidences) was stored with it at registration. The verdict goes to
`reports/monitoring/<window end>.json`, its page beside it, `latest.json` (what the next
retraining cycle reads as its drift trigger), and an MLflow run tagged with the version and
the window. Drift or not, the command succeeds: the JSON says which.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.monitoring.drift import detect_drift
from pipeline.monitoring.page import write_monitor_page
from pipeline.monitoring.records import read_window
from pipeline.monitoring.reference import Reference
from pipeline.store import write_json

logger = logging.getLogger(__name__)

REPORTS_DIR = "reports/monitoring"
LATEST_FILE = "latest.json"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str) -> timedelta:
    """'30m', '24h', '7d' (s, m, h, d) as a timedelta; ValueError naming the value."""
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(
            f"--last {text!r} is not a duration: write a positive number and a unit, "
            "s, m, h or d (e.g. 30m, 24h, 7d)"
        )
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


@dataclass(frozen=True)
class Window:
    last: timedelta | None
    last_n: int | None

    def describe(self) -> str:
        parts = []
        if self.last is not None:
            parts.append(f"last {_format_duration(self.last)}")
        if self.last_n is not None:
            parts.append(f"last {self.last_n} records")
        return ", ".join(parts)


def _format_duration(value: timedelta) -> str:
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


def run_monitor(
    root: Path,
    name: str,
    version: str,
    reference: Reference,
    predictions_dir: Path,
    window: Window,
    alpha: float,
    experiment_name: str,
    now: datetime | None = None,
) -> dict:
    """Judge one window of `predictions_dir` for `version` of `name` against its `reference`
    (pipeline.registry.monitoring_reference); write the report, its page and latest.json under
    `root`/reports/monitoring, log the MLflow run, and return the report."""
    now = now or datetime.now(UTC)
    records = read_window(
        predictions_dir, last=window.last, last_n=window.last_n, version=version, now=now
    )
    try:
        verdict = detect_drift(records, reference, alpha=alpha)
    except ValueError as error:
        raise PipelineError(str(error)) from None
    end = records["time"].max().to_pydatetime() if len(records) else now
    start = records["time"].min().to_pydatetime() if len(records) else None
    stamp = end.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = root / REPORTS_DIR
    report = {
        **verdict,
        "registered_model": name,
        "model_version": version,
        "window": window.describe(),
        "window_start": start.isoformat() if start else None,
        "window_end": end.isoformat(),
        "predictions_dir": str(predictions_dir),
        "checked_at": now.isoformat(timespec="seconds"),
        "report": f"{REPORTS_DIR}/{stamp}.json",
        "page": f"{REPORTS_DIR}/{stamp}.html",
    }
    title = f"{name} version {version}: {window.describe()} ({len(records)} images)"
    write_monitor_page(folder / f"{stamp}.html", verdict, records, reference, title)
    report["mlflow_run_id"] = _log_run(root, experiment_name, report, folder / f"{stamp}.html")
    write_json(folder / f"{stamp}.json", report)
    write_json(folder / LATEST_FILE, report)
    return report


def _log_run(root: Path, experiment_name: str, report: dict, page: Path) -> str:
    """The monitor's MLflow run: tagged with the version and window, the p-values as metrics."""
    import mlflow

    from pipeline.tracking.runs import configure_tracking, create_run

    experiment_id = configure_tracking(root, experiment_name)
    tags = {
        "pipeline.kind": "monitor",
        "registered_model": report["registered_model"],
        "model_version": report["model_version"],
        "window": report["window"],
        "window_end": report["window_end"],
        "drift": str(report["drift"]).lower(),
        "fired": ",".join(report.get("fired", [])),
    }
    run_id = create_run(experiment_id, f"monitor-v{report['model_version']}", tags)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metric("records", float(report.get("records", 0)))
        mlflow.log_metric("drift", float(bool(report["drift"])))
        for name, test in (report.get("tests") or {}).items():
            if isinstance(test, dict) and test.get("p_value") is not None:
                mlflow.log_metric(f"{name}_p_value", float(test["p_value"]))
        mlflow.log_dict(report, "monitoring.json")
        mlflow.log_artifact(str(page))
    return run_id
