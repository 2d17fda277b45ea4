"""Two `pipeline tune` workers at once, each in its own git clone of a small DVC project, sharing
one Optuna study in a real PostgreSQL: no trial is run twice (unique numbers, unique params), the
study holds both workers' trials, and each trial's experiment is a DVC experiment of the clone
that ran it.

The project is the real params.yaml (so the configuration loads as it does for users) with a
dvc.yaml of one cheap stage that writes reports/metrics/scratch.json from the params: the test
is about the storage and DVC's queue, not training. Its test figure falls as its val figure
rises, so a search that chose on test would be visible.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from pipeline.tuning.trials import Dvc
from tests.project import GIT_IDENTITY, PROJECT_ROOT, dvc, git
from tests.servers import ServerUnavailable, postgres_cluster

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STUDY = "shared_search"
TRIALS_PER_WORKER = 3

SCORE = textwrap.dedent(
    """\
    import json, math, pathlib, yaml

    params = yaml.safe_load(open("params.yaml"))
    rate = float(params["train"]["scratch"]["learning_rate"])
    dropout = float(params["train"]["feature_extraction"]["dropout_rate"])
    val = 1 - (math.log10(rate) + 3) ** 2 / 4 - (dropout - 0.4) ** 2
    folder = pathlib.Path("reports/metrics")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "scratch.json").write_text(json.dumps(
        {"val_accuracy": val, "val_loss": 1 - val, "test_accuracy": 1 - val}
    ))
    """
)

DVC_YAML = {
    "stages": {
        "score": {
            "cmd": "python score.py",
            "deps": ["score.py"],
            "params": ["train.scratch.learning_rate", "train.feature_extraction.dropout_rate"],
            "metrics": [{"reports/metrics": {"cache": False}}],
        }
    }
}


@pytest.fixture(scope="module")
def postgres(tmp_path_factory):
    try:
        with postgres_cluster(tmp_path_factory.mktemp("postgres"), database="optuna") as url:
            yield url
    except ServerUnavailable as exc:
        if os.environ.get("PIPELINE_TESTS_REQUIRE_POSTGRES") == "1":
            raise
        pytest.skip(f"PostgreSQL: {exc}")


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PYTEST_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **GIT_IDENTITY}


def _small_project(root: Path, env: dict) -> None:
    """A git + DVC project: the real params.yaml, one cheap stage, run and committed."""
    root.mkdir()
    shutil.copy(PROJECT_ROOT / "params.yaml", root / "params.yaml")
    (root / "score.py").write_text(SCORE)
    (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (root / ".gitignore").write_text("/optuna.db\n/reports/tune/\n")
    git(root, "init", "-q")
    assert dvc(root, env, "init", "-q").returncode == 0
    repro = dvc(root, env, "repro")
    assert repro.returncode == 0, repro.stderr
    git(root, "add", "-A")
    git(root, "commit", "-qm", "baseline")


def test_two_workers_share_one_postgres_study_without_duplicates(postgres, tmp_path) -> None:
    env = _environment()
    origin = tmp_path / "origin"
    _small_project(origin, env)
    clones = [tmp_path / "worker-1", tmp_path / "worker-2"]
    for clone in clones:
        subprocess.run(["git", "clone", "-q", str(origin), str(clone)], env=env, check=True)
    command = [str(Path(sys.executable).parent / "pipeline"), "tune", "--study", STUDY,
               "--storage", postgres, "--trials", str(TRIALS_PER_WORKER)]  # fmt: skip
    workers = [
        subprocess.Popen(
            [*command, "--root", str(clone)],
            env=env,
            cwd=clone,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for clone in clones
    ]
    outputs = []
    try:
        for worker in workers:
            outputs.append(worker.communicate(timeout=900)[0])
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, output in zip(workers, outputs, strict=True):
        assert worker.returncode == 0, output[-4000:]

    study = optuna.load_study(study_name=STUDY, storage=postgres)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 2 * TRIALS_PER_WORKER, [(t.number, t.state) for t in trials]
    # Not duplicated: each number once, each param set once.
    assert len({t.number for t in trials}) == len(trials)
    param_sets = [tuple(sorted(t.params.items())) for t in complete]
    assert len(set(param_sets)) == len(param_sets)
    # Both workers' trials, each run as an experiment of the clone that ran it.
    projects = {t.user_attrs["project"] for t in complete}
    assert projects == {str(clone.resolve()) for clone in clones}
    assert len({t.user_attrs["worker"] for t in complete}) == 2
    for clone in clones:
        mine = {
            t.user_attrs["experiment"]: t
            for t in complete
            if t.user_attrs["project"] == str(clone.resolve())
        }
        assert len(mine) == TRIALS_PER_WORKER
        shown = Dvc(clone).outcomes(mine)
        for name, trial in mine.items():
            assert shown[name].state == "success", (name, shown[name])
            figures = shown[name].metrics["reports/metrics/scratch.json"]
            assert trial.value == pytest.approx(figures["val_accuracy"])
        assert Dvc(clone).live_workers() == []
        assert dvc(clone, env, "status", "--json").stdout.strip() in ("{}", "")
