"""Which execution a run belongs to, and where its store is: the DVC experiment's tags and
changed params, the main project's store from a queue's throwaway copy, the comparison of
strategies from their report folders, and the gate's train/test overlap."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.evaluation.comparison import (
    compare_strategies,
    metrics_by_strategy,
    read_evaluated_strategy,
    significance_metrics,
)
from pipeline.evaluation.promotion import find_test_overlap, unfair_decision
from pipeline.tracking.context import changed_params, dvc_experiment, execution_tags
from pipeline.tracking.server import default_artifact_location, tracking_uri
from tests.project import committed_params, git


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Path, str]:
    params = {"train": {"scratch": {"epochs": 60, "batch_size": 32}}, "data": {"seed": 42}}
    return tmp_path, committed_params(tmp_path, params)


def test_the_main_line_is_tagged_with_its_commit_only(repo, monkeypatch) -> None:
    root, head = repo
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    assert dvc_experiment() is None
    assert execution_tags(root) == {"git_commit": head}


def test_a_main_line_run_with_params_off_the_commit_says_which(repo, monkeypatch) -> None:
    """What a workspace `dvc exp run -S` leaves in params.yaml, the next `dvc repro` or
    `pipeline retrain` trains with: its runs say so instead of naming only the commit."""
    root, head = repo
    monkeypatch.delenv("DVC_EXP_NAME", raising=False)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["scratch"]["epochs"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert execution_tags(root) == {
        "git_commit": f"{head}-dirty",
        "params_uncommitted": "train.scratch.epochs=3",
    }
    git(root, "commit", "-qam", "three epochs")
    assert "params_uncommitted" not in execution_tags(root)


def test_an_experiment_is_tagged_with_its_name_baseline_and_changed_params(
    repo, monkeypatch
) -> None:
    root, head = repo
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["scratch"]["epochs"] = 5
    params["data"]["seed"] = 7
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-seed")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", head)
    tags = execution_tags(root)
    assert tags["dvc_exp_name"] == "lucky-seed" == dvc_experiment()
    assert tags["dvc_exp_baseline_rev"] == head
    assert tags["dvc_exp_params"] == "data.seed=7, train.scratch.epochs=5"
    assert tags["git_commit"] == f"{head}-dirty"


def test_an_unreadable_baseline_is_said_not_guessed(repo, monkeypatch) -> None:
    root, _ = repo
    assert changed_params(root, "0" * 40) is None
    monkeypatch.setenv("DVC_EXP_NAME", "x")
    monkeypatch.setenv("DVC_EXP_BASELINE_REV", "0" * 40)
    assert execution_tags(root)["dvc_exp_params"].startswith("unknown")


def test_a_queued_copy_tracks_into_the_main_projects_store(tmp_path, monkeypatch) -> None:
    """DVC runs queued experiments in .dvc/tmp/exps/<tmp>/ with DVC_ROOT naming the main
    project: the store and its artifacts are the main project's."""
    main = tmp_path / "project"
    copy = main / ".dvc" / "tmp" / "exps" / "tmp123"
    copy.mkdir(parents=True)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("DVC_ROOT", str(main))
    assert tracking_uri(copy) == f"sqlite:///{main / 'mlflow.db'}"
    assert default_artifact_location(copy) == (main / "mlruns").as_uri()
    monkeypatch.delenv("DVC_ROOT")
    assert tracking_uri(copy) == f"sqlite:///{copy / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert tracking_uri(copy) == "http://127.0.0.1:5000"
    assert default_artifact_location(copy) is None


def _report_dir(root: Path, name: str, predicted: list[str], accuracy: float) -> Path:
    folder = root / name
    folder.mkdir()
    (folder / "evaluation.json").write_text(
        json.dumps(
            {
                "strategy": name,
                "run_id": f"run-{name}",
                "backbone_weights": "none",
                "metrics": {"test_accuracy": accuracy, "test_macro_f1": 0.5, "test_loss": 1.0},
                "mlflow_metrics": {},
                "total_params": 10,
                "trainable_params": 5,
                "images_per_second": 123.456,
                "training_seconds": 2.0,
            }
        )
    )
    pd.DataFrame(
        {"index": range(len(predicted)), "true": "x", "predicted": predicted, "confidence": 1.0}
    ).to_csv(folder / "predictions.csv", index=False)
    return folder


def test_strategies_are_compared_from_their_report_folders(tmp_path) -> None:
    classes = ["cat", "dog"]
    y_true = np.array([0] * 30 + [1] * 30)
    right = [classes[label] for label in y_true]
    wrong = ["cat"] * 60
    strategies = [
        read_evaluated_strategy(_report_dir(tmp_path, "scratch", right, 1.0), classes),
        read_evaluated_strategy(_report_dir(tmp_path, "fine_tune", wrong, 0.5), classes),
    ]
    comparison, significance = compare_strategies(strategies, y_true, alpha=0.05)
    assert list(comparison.index) == ["scratch", "fine_tune"]
    assert comparison.loc["scratch", "images_per_second"] == 123.5
    (row,) = significance.itertuples(index=False)
    assert row.significant and row.better == "scratch"
    assert set(significance_metrics(significance)) == {"mcnemar_p_scratch_vs_fine_tune"}
    assert metrics_by_strategy(strategies)["fine_tune"]["test_accuracy"] == 0.5
    with pytest.raises(Exception, match="evaluated on 60 test images, the test split has 30"):
        compare_strategies(strategies, y_true[:30], alpha=0.05)


def test_a_report_folder_of_other_classes_is_refused(tmp_path) -> None:
    folder = _report_dir(tmp_path, "scratch", ["bird"] * 4, 1.0)
    with pytest.raises(Exception, match="predicts classes \\['bird'\\]"):
        read_evaluated_strategy(folder, ["cat", "dog"])


def test_test_images_a_model_trained_on_are_found_and_left_out() -> None:
    test = [f"{index:032x}" for index in range(20)]
    overlap = find_test_overlap(test, {test[0], test[1], "other"}, {test[1], test[2]})
    assert overlap.in_challenger_training == 2 and overlap.in_champion_training == 2
    assert overlap.excluded == 3 and overlap.fair
    assert overlap.keep.tolist() == [False] * 3 + [True] * 17
    assert overlap.to_dict()["scored"] == 17
    clean = find_test_overlap(test, {"other"}, None)
    assert clean.excluded == 0 and clean.in_champion_training is None


def test_the_gate_refuses_when_too_few_test_images_remain() -> None:
    test = [f"{index:032x}" for index in range(20)]
    overlap = find_test_overlap(test, set(test[:11]), set())
    assert not overlap.fair
    decision = unfair_decision(overlap, 0.9)
    assert not decision.passed
    assert "11 of 20 test images" in decision.reasons()[0]


def _metrics_json(classes: int = 10) -> dict:
    """reports/metrics.json as compare writes it: every test metric, per class too."""
    per_class = {
        f"test_{measure}_{index}": 0.912345
        for index in range(classes)
        for measure in ("precision", "recall", "f1")
    }
    return {
        name: {
            "test_loss": 0.123456789,
            "test_accuracy": 0.987654321,
            "test_macro_f1": 0.98765,
            "test_images": 367,
            "test_ece": 0.0123456789,
            "test_brier": 0.0234567891,
            "test_ece_uncalibrated": 0.0456789123,
            "val_accuracy": 0.976543219,
            "val_loss": 0.134567891,
            "val_macro_f1": 0.97654,
            "val_images": 270,
            **per_class,
            "backbone_weights": weights,
        }
        for name, weights in (
            ("scratch", None),
            ("feature_extraction", "random"),
            ("fine_tune", "random"),
        )
    }


def test_dvc_metrics_show_is_a_row_per_strategy_of_its_main_figures(tmp_path, capsys) -> None:
    """`dvc metrics show` renders compare's per-strategy files (DVC's metrics) one row each;
    reports/metrics.json, left out of DVC's metrics, would have been one row of 100+ columns."""
    from dvc.compare import show_metrics

    from pipeline.stages.compare import write_strategy_metrics

    metrics = _metrics_json()
    folder = tmp_path / "reports" / "metrics"
    (folder / "stale.json").parent.mkdir(parents=True)
    (folder / "stale.json").write_text("{}")
    write_strategy_metrics(folder, metrics)
    written = {path.name: json.loads(path.read_text()) for path in sorted(folder.iterdir())}
    assert set(written) == {"scratch.json", "feature_extraction.json", "fine_tune.json"}
    assert written["scratch.json"] == {
        "val_accuracy": 0.976543219,
        "val_loss": 0.134567891,
        "test_accuracy": 0.987654321,
        "test_ece": 0.0123456789,
    }
    assert written["fine_tune.json"]["backbone_weights"] == "random"

    def shown(files: dict[str, dict]) -> list[str]:
        data = {path: {"data": values} for path, values in files.items()}
        show_metrics({"workspace": {"data": data}}, precision=5, round_digits=True)
        return capsys.readouterr().out.splitlines()

    lines = shown({f"reports/metrics/{name}": values for name, values in written.items()})
    # Four figures and the weights: 130 columns at most (the headers set the widths). It was 99 with
    # three figures; the calibration figures (issue 34) added test_ece and test_brier; the val
    # figures that choices are made on (issue 36) replaced test_loss, test_brier and macro F1.
    assert len(lines) == 4 and max(len(line) for line in lines) <= 130, "\n".join(lines)
    assert lines[0].split() == [
        "Path", "backbone_weights", "test_accuracy", "test_ece", "val_accuracy", "val_loss",
    ]  # fmt: skip
    assert any(line.startswith("reports/metrics/feature_extraction.json") for line in lines)
    # What it replaces: metrics.json as DVC's metrics file, one row far past 120 columns.
    assert max(len(line) for line in shown({"reports/metrics.json": metrics})) > 1000
