"""The comparison's MLflow run: one per execution, tagged with the strategy runs it compared
(which are never written to), holding every strategy's numbers, the McNemar p-values, the
comparison files and, once the report stage ran, the HTML report.
"""

from __future__ import annotations

from pathlib import Path

import mlflow

from pipeline.tracking.runs import RunRecorder, create_run, numeric_metrics

COMPARISON_ARTIFACTS = "comparison"
REPORT_ARTIFACTS = "report"
COMPARED_TAG_PREFIX = "compared_run."
COMPARISON_KIND = "comparison"


def comparison_tags(
    dataset: str, compared: dict[str, str], execution: dict[str, str]
) -> dict[str, str]:
    """The comparison run's tags: its kind, the execution, and each compared strategy's run."""
    return {
        "dataset": dataset,
        "pipeline.kind": COMPARISON_KIND,
        **execution,
        **{f"{COMPARED_TAG_PREFIX}{name}": run_id for name, run_id in compared.items()},
    }


def log_comparison(
    experiment_id: str,
    run_name: str,
    tags: dict[str, str],
    metrics: dict[str, dict],
    p_values: dict[str, float],
    files: list[Path],
) -> RunRecorder:
    """A new run holding `<strategy>.<metric>` for every strategy's numbers, the p-values and
    `files` under comparison/; the recorder says whether the server kept all of it."""
    recorder = RunRecorder(create_run(experiment_id, run_name, tags))
    with recorder.active():
        numbers = {
            f"{name}.{key}": value
            for name, values in metrics.items()
            for key, value in numeric_metrics(values).items()
        }
        recorder("metrics", mlflow.log_metrics, {**numbers, **p_values})
        for path in files:
            recorder(path.name, mlflow.log_artifact, str(path), COMPARISON_ARTIFACTS)
    return recorder


def log_report(run_id: str, page: Path) -> RunRecorder:
    """The HTML report, as report/index.html of `run_id` (the promotion's run, whose decision
    the page shows; the comparison run's before any promotion)."""
    recorder = RunRecorder(run_id)
    with recorder.active():
        recorder("report", mlflow.log_artifact, str(page), artifact_path=REPORT_ARTIFACTS)
    return recorder
