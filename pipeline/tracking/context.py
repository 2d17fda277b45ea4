"""Which execution a run belongs to: the git commit, and the DVC experiment when there is one.

DVC runs every stage of `dvc exp run` (in the workspace or from the queue) with
`DVC_EXP_NAME` and `DVC_EXP_BASELINE_REV` set (dvc/repo/experiments/queue/base.py). Runs are
tagged with them, and with the params that differ from the baseline commit, so the MLflow UI
filters one experiment's runs with `tags.dvc_exp_name = '<name>'`. A `pipeline tune` trial's
experiment (tune-<study>-<trial>) also tags its runs `tune_study` and `tune_trial`. On the
main line (`dvc repro`, `pipeline retrain`) runs made with params that differ from the last
commit, such as those a workspace `dvc exp run -S` leaves in params.yaml, are tagged
`params_uncommitted`.
Import-light (no MLflow, no Keras): the stages call it before loading either.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from pipeline.config import read_params
from pipeline.tracking.server import git_commit

EXPERIMENT_NAME_VARIABLE = "DVC_EXP_NAME"
BASELINE_VARIABLE = "DVC_EXP_BASELINE_REV"

EXPERIMENT_TAG = "dvc_exp_name"
BASELINE_TAG = "dvc_exp_baseline_rev"
CHANGED_PARAMS_TAG = "dvc_exp_params"
UNCOMMITTED_PARAMS_TAG = "params_uncommitted"
STUDY_TAG = "tune_study"
TRIAL_TAG = "tune_trial"
MAX_TAG_LENGTH = 5000  # MLflow keeps tag values of up to 8,000 characters


def dvc_experiment() -> str | None:
    """The DVC experiment this process runs in, or None on the main line (`dvc repro`,
    `pipeline retrain`)."""
    return os.environ.get(EXPERIMENT_NAME_VARIABLE) or None


_TUNE_EXPERIMENT = re.compile(r"^tune-(?P<study>[A-Za-z0-9][A-Za-z0-9_]*)-(?P<trial>[0-9]+)$")
"""`pipeline tune` names each trial's DVC experiment tune-<study>-<trial number>; study names
hold no dash, so the name reads back unambiguously."""


def tune_experiment_name(study: str, trial: int) -> str:
    """The DVC experiment name of an Optuna trial: what `trial_of` reads back."""
    name = f"tune-{study}-{trial}"
    if not _TUNE_EXPERIMENT.match(name):
        raise ValueError(f"study {study!r}: use letters, digits and _ only")
    return name


def trial_of(experiment: str | None) -> tuple[str, int] | None:
    """(study, trial number) when `experiment` is a `pipeline tune` trial, else None."""
    match = _TUNE_EXPERIMENT.match(experiment or "")
    return (match["study"], int(match["trial"])) if match else None


def execution_tags(project_root: Path) -> dict[str, str]:
    """`git_commit`, and inside a DVC experiment its name, baseline and changed params; on the
    main line, the params that differ from the commit (`params_uncommitted`), if any."""
    tags = {"git_commit": git_commit(project_root)}
    name = dvc_experiment()
    if name is None:
        uncommitted = uncommitted_params(project_root)
        if uncommitted:
            tags[UNCOMMITTED_PARAMS_TAG] = describe_params(uncommitted)
        return tags
    tags[EXPERIMENT_TAG] = name
    trial = trial_of(name)
    if trial is not None:
        tags[STUDY_TAG], tags[TRIAL_TAG] = trial[0], str(trial[1])
    baseline = os.environ.get(BASELINE_VARIABLE)
    if baseline:
        tags[BASELINE_TAG] = baseline
        changed = changed_params(project_root, baseline)
        tags[CHANGED_PARAMS_TAG] = (
            "unknown (the baseline's params.yaml could not be read)"
            if changed is None
            else describe_params(changed) or "none"
        )
    return tags


def uncommitted_params(project_root: Path) -> dict[str, object] | None:
    """The params.yaml keys whose workspace value differs from the last commit's (a
    workspace `dvc exp run -S` leaves its values there); None outside git or before
    params.yaml is committed."""
    return changed_params(project_root, "HEAD")


def describe_params(params: dict[str, object]) -> str:
    """`key=value, ...`, cut to what an MLflow tag holds."""
    return ", ".join(f"{key}={value}" for key, value in params.items())[:MAX_TAG_LENGTH]


def changed_params(project_root: Path, baseline: str) -> dict[str, object] | None:
    """The params.yaml keys whose value differs from the baseline commit's (dotted, as
    `dvc exp run -S` names them); None when the baseline cannot be read."""
    try:
        shown = subprocess.run(
            ["git", "show", f"{baseline}:params.yaml"],
            cwd=project_root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        before = flatten_params(read_params(shown) or {})
        now = flatten_params(read_params((project_root / "params.yaml").read_text()) or {})
    except (OSError, subprocess.CalledProcessError, yaml.YAMLError):
        return None
    keys = sorted(set(before) | set(now))
    return {key: now.get(key) for key in keys if before.get(key) != now.get(key)}


def flatten_params(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: the form MLflow params and `dvc exp run -S` use."""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat
