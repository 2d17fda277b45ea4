"""`pipeline tune --trials 3` on the bundled digits with tiny epochs, in a temporary copy of the
project whose baseline is committed: each trial a DVC experiment from DVC's queue, its MLflow
runs tagged with the study and the trial, the study's value its val figure (never test's), the
registry and `dvc status` untouched, the reports written, and a second run resuming the study.
"""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import mlflow
import optuna
import pytest

from pipeline.tuning.trials import Dvc
from tests.project import dvc, make_project_copy, pipeline_command, registry_state, tiny_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STUDY = "digits_scratch_val_accuracy"  # <dataset>_<tune.strategy>_<tune.metric>


def _scratch_search(params: dict) -> dict:
    """Tiny epochs, and a search of scratch's params only, judged by scratch's val accuracy:
    a trial retrains and evaluates one strategy (the shipped space retrains two, doubling this
    module's time; tests/code/test_tuning.py checks `best` and the shipped space)."""
    params = tiny_params(params)
    params["tune"].update(
        strategy="scratch",
        space={
            "train.scratch.learning_rate": {"low": 0.0003, "high": 0.003, "log": True},
            # (dropout_rate would be ignored: digits_convnet's dropout is fixed.)
            "train.scratch.batch_size": [16, 32, 64],
        },
    )
    return params


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _experiments(root: Path, env: dict) -> dict[str, dict]:
    """{experiment name: {"state": ..., "metrics": {file: values}}} from `dvc exp show`."""
    shown = dvc(root, env, "exp", "show", "--json")
    assert shown.returncode == 0, shown.stderr
    found = {}
    for baseline in json.loads(shown.stdout):
        for experiment in baseline.get("experiments") or []:
            head = experiment["revs"][0]
            metrics = (head.get("data") or {}).get("metrics") or {}
            found[experiment["name"]] = {
                "state": (experiment.get("executor") or {}).get("state"),
                "metrics": {path: entry.get("data", {}) for path, entry in metrics.items()},
            }
    return found


def _scratch(metrics: dict, key: str) -> float:
    return metrics["reports/metrics/scratch.json"][key]


def _load_study(root: Path) -> optuna.Study:
    return optuna.load_study(study_name=STUDY, storage=f"sqlite:///{root / 'optuna.db'}")


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A committed baseline run, its registry, then `pipeline tune --trials 3 --jobs 2`."""
    root = tmp_path_factory.mktemp("tune")
    env = make_project_copy(root, _scratch_search)
    result = dvc(root, env, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with open(root / ".git" / "info" / "exclude", "a") as stream:
        stream.write(".data-cache/\n.keras/\n")
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "baseline"]):
        subprocess.run(command, cwd=root, env=env, check=True)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    registry = registry_state(client)
    assert registry  # the baseline registered its challenger
    tuned = pipeline_command(root, env, "tune", "--trials", "3", "--jobs", "2", timeout=2400)
    assert tuned.returncode == 0, tuned.stdout[-4000:] + tuned.stderr[-4000:]
    return root, env, client, registry, tuned


def test_each_trial_is_a_dvc_experiment_whose_runs_carry_the_study_and_trial(tuned) -> None:
    root, env, client, _, _ = tuned
    experiments = _experiments(root, env)
    names = {f"tune-{STUDY}-{number}" for number in range(3)}
    assert names <= set(experiments), sorted(experiments)
    assert all(experiments[name]["state"] == "success" for name in names)
    study = _load_study(root)
    assert len(study.trials) == 3
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # MLflow: every trial's runs (strategies retrained, comparison, promotion decision).
    experiment = client.get_experiment_by_name("image-classifiers")
    for trial in study.trials:
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.tune_study = '{STUDY}' and tags.tune_trial = '{trial.number}'",
        )
        assert runs, f"no MLflow run tagged with trial {trial.number}"
        for run in runs:
            assert run.data.tags["dvc_exp_name"] == f"tune-{STUDY}-{trial.number}"
        kinds = {run.data.tags.get("pipeline.kind", "strategy") for run in runs}
        assert {"strategy", "comparison", "promotion"} <= kinds, kinds
        strategies = {
            run.data.tags.get("strategy") for run in runs if "pipeline.kind" not in run.data.tags
        }
        assert strategies == {"scratch"}, strategies  # only what the trial's params change


def test_the_study_is_told_the_val_figure_and_never_reads_test(tuned) -> None:
    root, env, _, _, output = tuned
    experiments = _experiments(root, env)
    study = _load_study(root)
    differs = 0
    for trial in study.trials:
        metrics = experiments[f"tune-{STUDY}-{trial.number}"]["metrics"]
        # tune.strategy: scratch -> scratch's val accuracy is the trial's value.
        assert trial.value == pytest.approx(_scratch(metrics, "val_accuracy"))
        differs += trial.value != pytest.approx(_scratch(metrics, "test_accuracy"))
    assert differs, "every trial's val figure equals its test one: the check proves nothing"
    best = max(
        _scratch(experiments[f"tune-{STUDY}-{n}"]["metrics"], "val_accuracy") for n in range(3)
    )
    assert study.best_value == pytest.approx(best)
    assert f"dvc exp apply tune-{STUDY}-{study.best_trial.number}" in output.stdout
    assert "its test figures (reported once, never used to choose)" in output.stdout


def test_the_registry_dvc_status_and_the_queue_are_left_as_they_were(tuned) -> None:
    root, env, client, registry, _ = tuned
    assert registry_state(client) == registry
    status = dvc(root, env, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout
    assert Dvc(root).live_workers() == []


def test_the_reports_hold_real_plots_the_trials_and_the_best(tuned) -> None:
    root, *_ = tuned
    folder = root / "reports" / "tune"
    for name in ("optimization_history.png", "param_importances.png"):
        data = (folder / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name
    with (folder / "trials.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["number"] for row in rows] == ["0", "1", "2"]
    assert all(row["state"] == "COMPLETE" for row in rows)
    best = json.loads((folder / "best.json").read_text())
    study = _load_study(root)
    assert best["trial"] == study.best_trial.number and best["value"] == study.best_value
    assert best["apply"] == f"dvc exp apply tune-{STUDY}-{best['trial']}"
    assert best["test_reported_not_used"]  # reported for the winner, after the choice


def test_running_again_resumes_the_study_and_redoes_nothing(tuned) -> None:
    root, env, client, registry, _ = tuned
    before = [(t.number, t.params, t.value, t.datetime_complete) for t in _load_study(root).trials]
    again = pipeline_command(root, env, "tune", "--trials", "1", timeout=1800)
    assert again.returncode == 0, again.stdout[-4000:] + again.stderr[-4000:]
    study = _load_study(root)
    assert len(study.trials) == 4
    assert [(t.number, t.params, t.value, t.datetime_complete) for t in study.trials[:3]] == before
    assert study.trials[3].state == optuna.trial.TrialState.COMPLETE
    assert study.trials[3].params not in [params for _, params, _, _ in before]
    assert "trial 3 queued as" in again.stdout and "trial 0 queued" not in again.stdout
    assert set(_experiments(root, env)) >= {f"tune-{STUDY}-{n}" for n in range(4)}
    assert registry_state(client) == registry
    assert json.loads(dvc(root, env, "status", "--json").stdout) == {}
