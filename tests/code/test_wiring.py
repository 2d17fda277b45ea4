"""dvc.yaml is the one true map of the pipeline: each stage lists exactly the package modules it
imports, receives every path it touches as an argument, and every joined path is written once.

These tests read code and dvc.yaml only (no Keras), so they run in the fast suite.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.wiring import (
    check_code_deps,
    import_closure,
    imported_modules,
    imported_names,
    is_path_under,
    load_stages,
    modules_under,
)
from tests.project import PROJECT_ROOT, copy_project_files

STAGES = load_stages(PROJECT_ROOT)
DEPS = {report.stage: report for report in check_code_deps(PROJECT_ROOT)}


@pytest.mark.parametrize("stage", [stage.name for stage in STAGES])
def test_stage_lists_every_module_it_imports_and_no_other(stage: str) -> None:
    report = DEPS[stage]
    assert not report.missing, (
        f"stage {stage} imports {', '.join(report.missing)}, which dvc.yaml does not list: "
        "editing them would leave its outputs stale (run `pipeline deps`)"
    )
    assert not report.unused, (
        f"stage {stage} lists {', '.join(report.unused)} in dvc.yaml but never imports them: "
        "editing them would re-run it for nothing"
    )


def test_no_stage_imports_another_stage() -> None:
    for stage in STAGES:
        own = stage.module.replace(".", "/") + ".py"
        others = {
            path
            for path in import_closure(stage.module, PROJECT_ROOT)
            if path.startswith("pipeline/stages/")
            and path not in (own, "pipeline/stages/__init__.py")
        }
        assert not others, f"stage {stage.name} imports other stages: {sorted(others)}"


def _package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_closure_follows_lazy_relative_and_submodule_imports(tmp_path: Path) -> None:
    """The closure sees what really runs: imports inside functions, relative imports,
    `from package import submodule`, and every package's __init__ on the way."""
    _package(
        tmp_path,
        {
            "pipeline/__init__.py": "",
            "pipeline/stages/__init__.py": "",
            "pipeline/stages/run.py": "from pipeline.a import helper\n"
            "def main():\n    from pipeline.lazy import thing\n",
            "pipeline/a/__init__.py": "from . import sub\n",
            "pipeline/a/sub.py": "from ..b import value\n",
            "pipeline/a/unused.py": "",
            "pipeline/b.py": "import json\nvalue = 1\n",
            "pipeline/lazy.py": "import pipeline.deep.inner\n",
            "pipeline/deep/__init__.py": "",
            "pipeline/deep/inner.py": "",
            "pipeline/never.py": "",
        },
    )
    assert import_closure("pipeline.stages.run", tmp_path) == {
        "pipeline/__init__.py",
        "pipeline/stages/__init__.py",
        "pipeline/stages/run.py",
        "pipeline/a/__init__.py",
        "pipeline/a/sub.py",
        "pipeline/b.py",
        "pipeline/lazy.py",
        "pipeline/deep/__init__.py",
        "pipeline/deep/inner.py",
    }


def test_imported_names_include_third_party_modules_and_modules_under_lists_each_once(
    tmp_path: Path,
) -> None:
    """The layer test (test_layers.py) needs every import, MLflow's too, of every module."""
    _package(
        tmp_path,
        {
            "pipeline/__init__.py": "",
            "pipeline/a/__init__.py": "",
            "pipeline/a/sub.py": "import mlflow.pyfunc\nfrom ..b import value\n"
            "def later():\n    from numpy import ndarray\n",
            "pipeline/b.py": "",
        },
    )
    path = tmp_path / "pipeline/a/sub.py"
    assert imported_names(path, "pipeline.a.sub", tmp_path) == {
        "mlflow.pyfunc",
        "pipeline.b",
        "numpy",
    }
    assert imported_modules(path, "pipeline.a.sub", tmp_path) == {"pipeline.b"}
    assert modules_under("pipeline", tmp_path) == {
        "pipeline": tmp_path / "pipeline/__init__.py",
        "pipeline.a": tmp_path / "pipeline/a/__init__.py",
        "pipeline.a.sub": path,
        "pipeline.b": tmp_path / "pipeline/b.py",
    }


def _project_copy(root: Path) -> Path:
    copy_project_files(root, ("dvc.yaml", "params.yaml", ".dvc/config", "data/images/README.md"))
    shutil.copytree(
        PROJECT_ROOT / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


def test_check_names_the_stage_and_file_for_a_missing_or_needless_dep(tmp_path: Path) -> None:
    root = _project_copy(tmp_path)
    text = (root / "dvc.yaml").read_text()
    # Drop split's last listed module (its own entry point) and give evaluate (every
    # strategy's, one foreach block) a needless one.
    text = text.replace("      - pipeline/stages/split.py\n", "", 1)
    text = text.replace(
        "        - pipeline/stages/evaluate.py\n",
        "        - pipeline/stages/evaluate.py\n        - pipeline/datasets/archives.py\n",
    )
    (root / "dvc.yaml").write_text(text)
    reports = {report.stage: report for report in check_code_deps(root)}
    evaluations = [f"evaluate@{name}" for name in ("scratch", "feature_extraction", "fine_tune")]
    assert reports["split"].missing == ("pipeline/stages/split.py",)
    for name in evaluations:
        assert reports[name].unused == ("pipeline/datasets/archives.py",)
    assert not any(
        r.missing or r.unused for name, r in reports.items() if name not in ("split", *evaluations)
    )
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "deps", "--check", "--root", str(root)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "split: imports pipeline/stages/split.py, which dvc.yaml does not list" in result.stdout
    assert (
        "evaluate@fine_tune: lists pipeline/datasets/archives.py, which it never imports"
        in result.stdout
    )


def test_project_dvc_yaml_passes_the_cli_check() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "deps", "--check"],
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- paths --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", STAGES, ids=[stage.name for stage in STAGES])
def test_stage_gets_its_paths_as_arguments_and_they_are_declared(stage) -> None:
    arguments = stage.path_arguments
    undeclared = [
        path for path in arguments if not is_path_under(path, stage.path_deps | stage.outs)
    ]
    assert not undeclared, f"stage {stage.name} is given paths it does not declare: {undeclared}"
    # An out the stage is not told about would have to be hard-coded in its module.
    untold = sorted(stage.outs - set(arguments))
    assert not untold, f"stage {stage.name} declares outs it is not given: {untold}"


def test_every_joined_path_is_written_once_in_dvc_yaml() -> None:
    """Paths are spelt out only under `vars: paths`; every dep, out, plot and argument of a
    stage is built from those variables (or from params, like `${data.image_folder}`)."""
    raw = yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())
    paths = raw["vars"][0]["paths"]
    text = (PROJECT_ROOT / "dvc.yaml").read_text()
    for name in paths:
        assert f"${{paths.{name}}}" in text, f"paths.{name} is never used"
    literal = []
    for name, stage in raw["stages"].items():
        stage = stage.get("do", stage)  # a foreach stage's body
        entries = [d for d in stage.get("deps", []) if not d.startswith("pipeline/")]
        for key in ("outs", "metrics"):
            entries += [next(iter(e)) if isinstance(e, dict) else e for e in stage.get(key, [])]
        words = stage["cmd"].split()
        first_option = next(i for i, word in enumerate(words) if word.startswith("--"))
        entries += [word for word in words[first_option:] if not word.startswith("--")]
        literal += [f"{name}: {entry}" for entry in entries if not entry.startswith("${")]
    for plot in raw["plots"]:
        if isinstance(plot, str):
            entries = [plot]
        else:
            # {id: {y: {file: columns}}} plots several files; {file: {template, x, y}} one.
            ((key, spec),) = plot.items()
            entries = list(spec["y"]) if isinstance(spec.get("y"), dict) else [key]
        literal += [f"plots: {entry}" for entry in entries if not entry.startswith("${")]
    assert not literal, f"paths written out instead of taken from vars: {literal}"


# Stages whose outs DVC may delete before they run, and why: validate writes its summary and
# Data Docs on a failed gate too (they say what failed), and promote's decision records are
# restored from DVC's run cache, which a persisted out would turn off (a re-run may register).
NOT_PERSISTED = {"validate", "promote"}


@pytest.mark.parametrize(
    "stage",
    [stage for stage in STAGES if stage.name not in NOT_PERSISTED],
    ids=[stage.name for stage in STAGES if stage.name not in NOT_PERSISTED],
)
def test_a_failing_stage_keeps_its_outs(stage) -> None:
    """Every other stage's outs are `persist: true`, so DVC does not delete them before the
    stage runs and a stage that fails (writing atomically) leaves them byte-identical."""
    assert stage.persisted_outs, f"{stage.name}: the wiring sees no persisted out"
    deleted = sorted(stage.outs - stage.persisted_outs)
    assert not deleted, (
        f"stage {stage.name}: DVC deletes {deleted} before running it, so a failure would lose "
        "them: mark them `persist: true` in dvc.yaml and write them atomically"
    )


def test_stage_modules_hard_code_no_project_path() -> None:
    """Stages take their paths from their arguments; literals like "data/prepared" in their
    code would be a second, drifting copy of dvc.yaml."""
    tops = ("data/", "reports/", "models/", "mlruns")
    for path in sorted((PROJECT_ROOT / "pipeline" / "stages").glob("*.py")):
        literals = [
            node.value
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and node.value.startswith(tops)
        ]
        assert not literals, f"{path.name} hard-codes {literals}"


def test_deps_stops_quietly_when_its_reader_is_gone() -> None:
    """`pipeline deps | head` must not end in a traceback."""
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "deps"],
        cwd=PROJECT_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # The reader leaves before the first line: reading dvc.yaml takes the command a second.
    process.stdout.close()
    errors = process.stderr.read()
    assert process.wait(timeout=60) == 141
    assert "Traceback" not in errors
