"""reports/tune/: what a study came to, as files a user opens or a script reads.

- optimization_history.png: Optuna's optimisation history (each complete trial's value and
  the best so far), matplotlib backend;
- param_importances.png: Optuna's parameter importances (PED-ANOVA by default in Optuna 5),
  once two complete trials exist;
- trials.csv: one row per trial: number, state, value, the strategy it is of, its params, its
  experiment, the worker that ran it, why it failed;
- best.json: the best trial, its val figures, the `dvc exp apply` command, and its test figures
  under a key that says they were reported, not used.

Every file is rewritten whole at each run (written beside and renamed), so a reader never sees
half of one. Nothing here is a DVC output: the search is outside the pipeline's graph.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from pipeline.store import atomic_directory, atomic_write, write_csv, write_json

logger = logging.getLogger(__name__)

HISTORY = "optimization_history.png"
IMPORTANCES = "param_importances.png"
TRIALS = "trials.csv"
BEST = "best.json"


def write_reports(study, folder: Path, best: dict[str, Any] | None) -> list[Path]:
    """Write the plots, trials.csv and best.json into `folder`, replacing it whole (a plot this
    study cannot draw yet leaves no other study's behind); the paths written."""
    names = []
    with atomic_directory(folder) as staging:
        header, rows = trials_table(study)
        write_csv(staging / TRIALS, header, rows)
        names.append(TRIALS)
        if best is not None:
            write_json(staging / BEST, best)
            names.append(BEST)
        complete = _complete(study)
        if complete:
            _plot(plot_history, study, staging / HISTORY)
            names.append(HISTORY)
        if len(complete) >= 2:
            try:
                _plot(plot_importances, study, staging / IMPORTANCES)
                names.append(IMPORTANCES)
            except (ValueError, RuntimeError) as error:  # every param constant so far, ...
                logger.info("no parameter-importance plot yet: %s", error)
    return [folder / name for name in names]


COLUMNS = ("number", "state", "value", "strategy", "experiment", "worker", "fail_reason",
           "started", "finished")  # fmt: skip


def trials_table(study) -> tuple[list[str], list[list[Any]]]:
    """(header, rows): one row per trial, params as `param.<key>` columns."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({key for trial in trials for key in trial.params})
    rows = []
    for trial in trials:
        attrs = trial.user_attrs
        row = [trial.number, trial.state.name, trial.value, attrs.get("strategy"),
               attrs.get("experiment"), attrs.get("worker"), attrs.get("fail_reason"),
               _time(trial.datetime_start), _time(trial.datetime_complete)]  # fmt: skip
        rows.append(row + [trial.params.get(key) for key in keys])
    return [*COLUMNS, *(f"param.{key}" for key in keys)], rows


def _time(moment) -> str | None:
    return moment.isoformat(timespec="seconds") if moment is not None else None


def _complete(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def plot_history(study):
    from optuna.visualization.matplotlib import plot_optimization_history

    return plot_optimization_history(study)


def plot_importances(study):
    from optuna.visualization.matplotlib import plot_param_importances

    return plot_param_importances(study)


def _plot(draw, study, path: Path) -> None:
    """Draw with Optuna's matplotlib backend and write the PNG atomically."""
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's ExperimentalWarning on its plots
        axes = draw(study)
    figure = axes.get_figure()
    try:
        figure.tight_layout()
        with atomic_write(path, "wb") as stream:
            figure.savefig(stream, format="png", dpi=100)
    finally:
        plt.close(figure)
