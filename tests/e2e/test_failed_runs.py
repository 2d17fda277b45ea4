"""A failed run changes nothing: after a series of `dvc repro` runs that each fail (bad params,
a dead tracking server), putting params.yaml and the environment back leaves `dvc status` clean,
every output byte-identical (but the Data Docs of a validation forced to run again), and a
`dvc repro` that runs nothing, training least of all.

One small pipeline run (300 digits, an epoch or two per strategy) is the clean state; the
failures are run on it in turn, each checked on its own, then the restored project as a whole.
Most are refused by check_params before DVC deletes anything; the last ones fail inside the
training and evaluation stages themselves, whose outs DVC persists and they write atomically.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from tests.project import dvc, make_project_copy, tiny_params
from tests.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _small(params: dict) -> dict:
    """The pipeline's mechanics, as cheaply as it runs: a few hundred digits, one or two epochs,
    few explanations. Scratch keeps tiny_params' 2 epochs: DVC compares params by value, and
    `epochs: true` equals an `epochs: 1` (True == 1), which DVC would not see as a change."""
    params = tiny_params(params)
    params["data"]["max_images"] = 300
    params["train"]["feature_extraction"]["epochs"] = 1
    params["evaluate"].update(gradcam_images=2, gallery_images=4, mistakes=2)
    params["evaluate"]["patterns"]["filters"] = 0
    return params


def _outputs(root: Path) -> dict[str, str]:
    """The SHA-256 of every file under the pipeline's output folders."""
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for folder in ("data", "models", "reports")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def _stages_run(result: subprocess.CompletedProcess) -> list[str]:
    return [
        line.split("'")[1]
        for line in result.stdout.splitlines()
        if line.startswith("Running stage")
    ]


def _typo(params: dict) -> None:
    params["train"]["scratch"]["epoch"] = params["train"]["scratch"].pop("epochs")


def _epochs_true(params: dict) -> None:
    params["train"]["scratch"]["epochs"] = True


def _negative_fraction(params: dict) -> None:
    params["data"]["val_fraction"] = -0.1


def _unknown_dataset(params: dict) -> None:
    params["data"]["dataset"] = "no_such_dataset"


def _missing_image_folder(params: dict) -> None:
    params["data"].update(dataset="image_folder", image_folder="data/no_such_folder")


def _unchanged(params: dict) -> None:
    pass


# What goes wrong, the params edit, the DVC command, MLFLOW_TRACKING_URI (a dead http server,
# a SQLite store whose folder is missing, or the project's own store), and the stage that must
# be the one to fail.
FAILURES: list[tuple[str, Callable[[dict], None], tuple[str, ...], str | None, str]] = [
    ("a typo in a key", _typo, ("repro",), None, "check_params"),
    ("epochs: true", _epochs_true, ("repro",), None, "check_params"),
    ("a negative fraction", _negative_fraction, ("repro",), None, "check_params"),
    ("an unknown dataset", _unknown_dataset, ("repro",), None, "check_params"),
    ("a missing image folder", _missing_image_folder, ("repro",), None, "check_params"),
    (
        "a dead tracking server",
        _unchanged,
        ("repro", "-f", "train_scratch"),
        "http",
        "check_params",
    ),
    # The stages alone (`-s`: check_params does not run first), so each is the one that fails,
    # after DVC would have deleted outs that are not persisted: they keep theirs.
    (
        "train alone, server dead",
        _unchanged,
        ("repro", "-fs", "train_scratch"),
        "http",
        "train_scratch",
    ),
    (
        "evaluate alone, server dead",
        _unchanged,
        ("repro", "-fs", "evaluate@scratch"),
        "http",
        "evaluate@scratch",
    ),
    # A store check_params leaves to the stages: the forced download, split and validate run
    # again (their outs come out byte-identical), then the training fails with its model kept.
    (
        "a missing SQLite store, forced",
        _unchanged,
        ("repro", "-f", "train_scratch"),
        "sqlite",
        "train_scratch",
    ),
]

# Rewritten by a stage that succeeded again under `-f` (GE's Data Docs carry the validation
# time); nothing depends on them.
REWRITTEN = "reports/validation/data_docs/"


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One successful `dvc repro` of the small pipeline: the clean state."""
    root = tmp_path_factory.mktemp("project")
    env = make_project_copy(root, _small)
    result = dvc(root, env, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, env


def test_failed_runs_change_nothing_and_nothing_retrains_after_params_are_restored(
    project,
) -> None:
    root, env = project
    good_params = (root / "params.yaml").read_text()
    kept = _outputs(root)
    assert any(path.startswith("models/scratch/") for path in kept)
    uris = {
        "http": f"http://127.0.0.1:{free_port()}",
        "sqlite": f"sqlite:///{root.parent / 'no_such_folder' / 'mlflow.db'}",
    }

    for what, edit, command, uri, failing_stage in FAILURES:
        params = yaml.safe_load(good_params)
        edit(params)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        run_env = {**env, "MLFLOW_TRACKING_URI": uris[uri]} if uri else env
        result = dvc(root, run_env, *command)
        output = result.stdout + result.stderr
        assert result.returncode != 0, f"{what}: dvc {' '.join(command)} passed\n{output[-3000:]}"
        assert "Traceback" not in output, f"{what}:\n{output[-3000:]}"
        assert _stages_run(result)[-1:] == [failing_stage], f"{what}:\n{output[-3000:]}"
        # Put back what worked: every output is as it was, whichever stage refused.
        (root / "params.yaml").write_text(good_params)
        now = _outputs(root)
        changed = sorted(
            path
            for path in set(kept) | set(now)
            if kept.get(path) != now.get(path) and not path.startswith(REWRITTEN)
        )
        assert not changed, f"{what}: the failed run changed {changed}\n{output[-3000:]}"

    status = dvc(root, env, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout) == {}, status.stdout

    again = dvc(root, env, "repro")
    assert again.returncode == 0, again.stderr[-3000:]
    trained = [stage for stage in _stages_run(again) if stage.startswith("train_")]
    assert not trained, f"restoring params.yaml re-ran {trained}\n{again.stdout[-3000:]}"
    assert _stages_run(again) == [], again.stdout[-3000:]
    now = _outputs(root)
    assert {path: digest for path, digest in now.items() if not path.startswith(REWRITTEN)} == {
        path: digest for path, digest in kept.items() if not path.startswith(REWRITTEN)
    }
