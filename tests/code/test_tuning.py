"""`pipeline tune`'s parts that need no DVC queue: tune.space as Optuna distributions, a trial's
params as `-S key=value` that DVC writes back with their types, the objective's val-only
reading, what `dvc exp show --json` and `dvc queue status` say, and the study's bookkeeping
(stale trials, retries, duplicates, a changed space, a bad storage) on a SQLite study."""

from __future__ import annotations

import argparse
import copy
import json
import shutil
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from pipeline.config import TuneRange, load_config, read_params
from pipeline.errors import ConfigError, PipelineError
from pipeline.tuning import search
from pipeline.tuning.figures import (
    MissingFigure,
    objective,
    reported_test_figures,
    strategy_of,
    val_figures,
)
from pipeline.tuning.plots import trials_table
from pipeline.tuning.space import distributions, format_value, set_arguments
from pipeline.tuning.trials import (
    Outcome,
    collect_outcomes,
    failure_reason_from_log,
    parse_queue_status,
)
from tests.project import PROJECT_ROOT

optuna.logging.set_verbosity(optuna.logging.WARNING)

METRICS = {
    "reports/metrics/scratch.json": {
        "val_accuracy": 0.80, "val_loss": 0.50, "test_accuracy": 0.99, "test_loss": 0.01,
    },
    "reports/metrics/feature_extraction.json": {
        "val_accuracy": 0.90, "val_loss": 0.40, "test_accuracy": 0.70, "test_loss": 0.90,
    },
    "reports/metrics/fine_tune.json": {
        "val_accuracy": 0.85, "val_loss": 0.30, "test_accuracy": 0.98, "test_loss": 0.02,
    },
    "reports/gate.json": {"val_accuracy": 1.0},
}  # fmt: skip


# -- the space ---------------------------------------------------------------------------


def test_the_shipped_space_maps_to_optuna_distributions() -> None:
    config = load_config(PROJECT_ROOT / "params.yaml")
    found = distributions(config.tune.space)
    assert set(found) == set(config.tune.space)
    assert found["train.scratch.learning_rate"] == FloatDistribution(0.0003, 0.003, log=True)
    assert found["train.feature_extraction.dropout_rate"] == FloatDistribution(0.2, 0.6)


def test_ranges_and_lists_become_int_float_and_categorical_distributions() -> None:
    found = distributions(
        {
            "train.scratch.epochs": TuneRange(low=2, high=10, step=2),
            "train.scratch.batch_size": TuneRange(low=16, high=128, log=True),
            "train.scratch.dropout_rate": TuneRange(low=0.1, high=0.5, step=0.1),
            "train.scratch.optimizer": ["adam", "sgd"],
        }
    )
    assert found["train.scratch.epochs"] == IntDistribution(2, 10, step=2)
    assert found["train.scratch.batch_size"] == IntDistribution(16, 128, log=True)
    assert found["train.scratch.dropout_rate"] == FloatDistribution(0.1, 0.5, step=0.1)
    assert found["train.scratch.optimizer"] == CategoricalDistribution(["adam", "sgd"])


def test_repeated_choices_are_refused() -> None:
    with pytest.raises(ConfigError, match="repeat"):
        distributions({"train.scratch.optimizer": ["adam", "adam"]})


@pytest.mark.parametrize(
    "value",
    [1e-05, 0.000123456789012345, 0.3, 2e-3, 3, 0, True, False, "small_convnet", "123",
     "1e-3", "true", "null", "a b", "it's", "adam"],
)  # fmt: skip
def test_set_arguments_come_back_from_dvc_with_their_type(tmp_path: Path, value) -> None:
    """DVC applies `-S` with Hydra's grammar and ruamel; the pipeline reads params.yaml as DVC
    does: the value a trial asked for is the value its stages train with, type and all."""
    from dvc.utils.hydra import apply_overrides

    params = tmp_path / "params.yaml"
    shutil.copy(PROJECT_ROOT / "params.yaml", params)
    arguments = set_arguments({"train.scratch.learning_rate": value})
    assert arguments[0] == "-S"
    apply_overrides(str(params), [arguments[1]])
    read = read_params(params.read_text())["train"]["scratch"]["learning_rate"]
    assert read == value and type(read) is type(value)


def test_set_arguments_are_sorted_and_floats_exact() -> None:
    arguments = set_arguments({"b.x": 0.1 + 0.2, "a.y": 4})
    assert arguments == ["-S", "a.y=4", "-S", "b.x=0.30000000000000004"]
    assert format_value("x y") == "'x y'"


# -- the objective: val only -------------------------------------------------------------


def test_val_figures_keep_the_val_keys_of_strategy_metrics_only() -> None:
    val = val_figures(METRICS)
    assert set(val) == {"scratch", "feature_extraction", "fine_tune"}  # not reports/gate.json
    assert all(key.startswith("val_") for figures in val.values() for key in figures)
    assert strategy_of("reports/metrics/fine_tune.json") == "fine_tune"
    assert strategy_of("reports/metrics.json") is None


def test_best_is_chosen_by_val_even_where_test_says_otherwise() -> None:
    val = val_figures(METRICS)
    # scratch has the best test accuracy (0.99), feature_extraction the best val (0.90).
    assert objective(val, "best", "val_accuracy", "maximize") == (0.90, "feature_extraction")
    assert objective(val, "best", "val_loss", "minimize") == (0.30, "fine_tune")
    assert objective(val, "scratch", "val_accuracy", "maximize") == (0.80, "scratch")


def test_test_figures_never_move_the_value() -> None:
    """However the test figures change, the trial's value does not; without val figures
    there is no value at all, whatever test says."""
    base = objective(val_figures(METRICS), "best", "val_accuracy", "maximize")
    for test in (0.0, 0.5, 1.0, 1e9):
        changed = copy.deepcopy(METRICS)
        for values in changed.values():
            for key in list(values):
                if key.startswith("test_"):
                    values[key] = test
            values["test_val_accuracy"] = test  # a test figure named like a val one
        assert objective(val_figures(changed), "best", "val_accuracy", "maximize") == base
    only_test = {path: {"test_accuracy": 1.0} for path in METRICS}
    with pytest.raises(MissingFigure, match="no val_accuracy"):
        objective(val_figures(only_test), "best", "val_accuracy", "maximize")
    with pytest.raises(ValueError, match="val_ figure only"):
        objective(val_figures(METRICS), "best", "test_accuracy", "maximize")


def test_the_winners_test_figures_are_its_strategys() -> None:
    assert reported_test_figures(METRICS, "feature_extraction") == {
        "test_accuracy": 0.70, "test_loss": 0.90,
    }  # fmt: skip


# -- what DVC says -----------------------------------------------------------------------


def _shown(name: str, state: str, metrics: dict, error: dict | None = None) -> list:
    """`dvc exp show --json` (DVC 3) with one experiment under one baseline."""
    data = {"metrics": {path: {"data": values} for path, values in metrics.items()}}
    return [
        {"rev": "workspace", "name": None, "data": data, "error": None, "experiments": None},
        {
            "rev": "abc",
            "name": "main",
            "data": data,
            "error": None,
            "experiments": [
                {
                    "revs": [{"rev": "def", "name": name, "data": data, "error": error}],
                    "executor": {"state": state, "name": None, "local": {}},
                    "name": name,
                }
            ],
        },
    ]


def test_a_failed_experiments_baseline_metrics_are_not_read() -> None:
    """DVC shows a failed queued experiment with its baseline's metrics: they are not its."""
    shown = _shown("tune-s-0", "failed", METRICS, {"msg": "Experiment run failed", "type": ""})
    found = collect_outcomes(shown, {"tune-s-0"})
    assert found["tune-s-0"].state == "failed" and found["tune-s-0"].metrics == {}
    done = collect_outcomes(_shown("tune-s-1", "success", METRICS), {"tune-s-1", "other"})
    assert set(done) == {"tune-s-1"}
    assert done["tune-s-1"].metrics["reports/metrics/scratch.json"]["val_accuracy"] == 0.80


def test_queue_status_table_is_read_by_name() -> None:
    text = (
        "Task     Name          Created    Status\n"
        "5c16a0e  tune-s-0      01:39 AM   Failed\n"
        "ae1cfdb  tune-s-1      Dec 08, 2026   Running\n"
        "39eb7f4                01:40 AM   Queued\n"
        "\nWorker status: 1 active, 0 idle\n"
    )
    assert parse_queue_status(text) == {"tune-s-0": "Failed", "tune-s-1": "Running"}


def test_a_failure_reason_is_the_stages_last_word_and_dvcs_error() -> None:
    log = (
        "Reproducing experiment 'tune-s-0'\nRunning stage 'train_scratch':\n> python -m x\n"
        "error in train_scratch: train.scratch.learning_rate must be below 1\n"
        "ERROR: failed to reproduce 'train_scratch': failed to run: python -m x, exited with 2\n"
    )
    reason = failure_reason_from_log(log)
    assert "learning_rate must be below 1" in reason and "failed to reproduce" in reason
    assert failure_reason_from_log("no error here\nlast line") == "last line"


# -- the study's bookkeeping -------------------------------------------------------------


def _settings(root: Path, storage: str, space: dict | None = None, **overrides) -> search.Settings:
    values = dict(
        root=root, study="s", storage=storage, metric="val_accuracy", strategy="best",
        direction="maximize", trials=3, jobs=1,
        space=space or {"train.scratch.learning_rate": FloatDistribution(1e-4, 1e-2, log=True)},
    )  # fmt: skip
    values.update(overrides)
    return search.Settings(**values)


@pytest.fixture
def study_setup(tmp_path: Path):
    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'optuna.db'}")
    worker = search.Worker("host-a", 111, str(tmp_path))
    return search.open_study(settings, worker), settings, worker


def test_a_trial_is_told_its_val_figure_and_records_which_strategy(study_setup) -> None:
    study, settings, worker = study_setup
    trial, lines = search.ask(study, settings, worker)
    assert lines == [] and trial.user_attrs["experiment"] == "tune-s-0"
    assert trial.user_attrs["project"] == worker.project
    line = search.tell(study, trial.number, Outcome("tune-s-0", "success", METRICS), settings)
    frozen = study.trials[0]
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.90
    assert frozen.user_attrs["strategy"] == "feature_extraction"
    assert "test_" not in json.dumps(frozen.user_attrs["val"])  # the study keeps no test figure
    assert "val_accuracy 0.9000 (feature_extraction)" in line


def test_a_failed_experiment_fails_its_trial_with_the_reason(study_setup) -> None:
    study, settings, worker = study_setup
    trial, _ = search.ask(study, settings, worker)
    search.tell(study, trial.number, Outcome("tune-s-0", "failed", reason="OOM"), settings)
    no_val = Outcome("tune-s-0", "success", {"reports/metrics/scratch.json": {"test_accuracy": 1}})
    second, _ = search.ask(study, settings, worker)
    search.tell(study, second.number, no_val, settings)
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert study.trials[0].user_attrs["fail_reason"] == "OOM"
    assert "no val_accuracy" in study.trials[1].user_attrs["fail_reason"]


def test_resume_settles_only_this_projects_running_trials(study_setup) -> None:
    study, settings, worker = study_setup
    mine, _ = search.ask(study, settings, worker)
    theirs, _ = search.ask(study, settings, search.Worker("host-b", 222, "/elsewhere"))
    done, _ = search.ask(study, settings, worker)
    search.tell(study, done.number, Outcome("x", "success", METRICS), settings)
    # This worker died; a new one (another pid, the same project) finds its trial.
    again = search.Worker(worker.host, 333, worker.project)
    stale = search.stale_trials(study.get_trials(), again)
    assert [t.number for t in stale] == [mine.number]
    assert theirs.number not in [t.number for t in stale]


def test_a_trial_whose_experiment_is_gone_is_failed_and_its_params_asked_again(
    study_setup,
) -> None:
    study, settings, worker = study_setup
    trial, _ = search.ask(study, settings, worker)
    params = dict(trial.params)
    search.retry(study, study.trials[trial.number], "its experiment is gone")
    assert study.trials[trial.number].state == TrialState.FAIL
    assert study.trials[-1].state == TrialState.WAITING
    again, lines = search.ask(study, settings, worker)
    assert again.params == params and lines == []  # a failure's params may be tried again
    assert again.user_attrs["retry_of"] == trial.number


def test_a_proposal_repeating_a_tried_param_set_is_dropped_and_asked_again(study_setup) -> None:
    study, settings, worker = study_setup
    first, _ = search.ask(study, settings, worker)
    search.tell(study, first.number, Outcome("x", "success", METRICS), settings)
    study.enqueue_trial(dict(first.params))  # what a second worker's retry could propose
    trial, lines = search.ask(study, settings, worker)
    assert trial.params != first.params
    assert lines == [f"trial 1: the params of trial {first.number} again; not run"]
    assert study.trials[1].state == TrialState.FAIL
    assert study.trials[1].user_attrs["duplicate_of"] == first.number


def test_an_exhausted_space_stops_asking(tmp_path: Path) -> None:
    space = {"train.scratch.optimizer": CategoricalDistribution(["adam", "sgd"])}
    settings = _settings(tmp_path, f"sqlite:///{tmp_path / 'optuna.db'}", space)
    worker = search.Worker("h", 1, str(tmp_path))
    study = search.open_study(settings, worker)
    for _ in range(2):
        trial, _ = search.ask(study, settings, worker)
        search.tell(study, trial.number, Outcome("x", "success", METRICS), settings)
    assert {t.params["train.scratch.optimizer"] for t in study.trials} == {"adam", "sgd"}
    trial, lines = search.ask(study, settings, worker)
    assert trial is None and len(lines) == search.MAX_DUPLICATE_PROPOSALS


def test_a_changed_space_is_a_clear_error(study_setup, tmp_path: Path) -> None:
    study, settings, worker = study_setup
    trial, _ = search.ask(study, settings, worker)
    search.tell(study, trial.number, Outcome("x", "success", METRICS), settings)
    changed = _settings(
        tmp_path, settings.storage,
        {"train.scratch.learning_rate": CategoricalDistribution([0.001, 0.01])},
    )  # fmt: skip
    with pytest.raises(ConfigError, match="tune.space changed since study s began"):
        search.open_study(changed, worker)
    other_direction = _settings(tmp_path, settings.storage, direction="minimize")
    with pytest.raises(ConfigError, match="name another study"):
        search.open_study(other_direction, worker)


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+psycopg://tuner:s3cret@127.0.0.1:1/optuna",
        "nosuchdialect://tuner:s3cret@host/db",
        "sqlite:////no/such/folder/optuna.db",
    ],
)
def test_an_unusable_storage_is_one_line_naming_it_without_its_password(
    tmp_path: Path, url: str
) -> None:
    settings = _settings(tmp_path, url)
    with pytest.raises(PipelineError) as caught:
        search.open_study(settings, search.Worker("h", 1, str(tmp_path)))
    message = str(caught.value)
    assert "s3cret" not in message and "\n" not in message
    assert search.masked(url) in message and "--storage" in message


def test_bad_study_names_are_refused_and_the_default_is_derived(tmp_path: Path) -> None:
    config = load_config(PROJECT_ROOT / "params.yaml")

    def args(study):
        return argparse.Namespace(study=study, storage=None, trials=1, jobs=1)

    with pytest.raises(ConfigError, match="letters, digits and _ only"):
        search.settings_from(args("my-study"), config, tmp_path)
    settings = search.settings_from(args(None), config, tmp_path)
    assert settings.study == "digits_best_val_accuracy"
    assert settings.storage == f"sqlite:///{tmp_path / 'optuna.db'}"


def test_trials_csv_has_a_row_per_trial_with_params_and_reasons(study_setup) -> None:
    study, settings, worker = study_setup
    trial, _ = search.ask(study, settings, worker)
    search.tell(study, trial.number, Outcome("x", "failed", reason="=bad"), settings)
    header, rows = trials_table(study)
    assert header[:3] == ["number", "state", "value"]
    assert header[-1] == "param.train.scratch.learning_rate"
    assert rows[0][1] == "FAIL" and rows[0][header.index("fail_reason")] == "=bad"


def test_a_queue_holding_someone_elses_experiments_is_refused_by_name() -> None:
    """pipeline tune runs and stops DVC's queue workers: another queued or running experiment
    would be run or stopped with them, so the search refuses to start, naming it."""
    from pipeline.tuning.search import check_queue_is_ours

    ours = {"tune-digits_best_val_accuracy-3": "Running", "sweep-1": "Success"}
    check_queue_is_ours(ours, "digits_best_val_accuracy")  # its own, and finished ones: fine
    with pytest.raises(PipelineError, match=r"not this study's: my-sweep.*dvc queue remove"):
        check_queue_is_ours({**ours, "my-sweep": "Queued"}, "digits_best_val_accuracy")
    with pytest.raises(PipelineError, match="tune-other-1"):
        check_queue_is_ours({"tune-other-1": "Running"}, "digits_best_val_accuracy")
