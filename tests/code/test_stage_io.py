"""Every stage reads only what dvc.yaml declares as its deps and leaves only its declared outs.

The whole pipeline runs in one process on a few hundred digits with one epoch per strategy
(tests/trace_stages.py), under an audit hook that records every file each stage opens. This is
also the fast suite's path through every stage's wiring and through MLflow tracking.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.store import sha256_of
from pipeline.wiring import is_path_under, load_stages
from tests.project import PROJECT_ROOT, make_project_copy

# Its fixture runs every stage (about two minutes): started first under xdist (conftest.py).
pytestmark = pytest.mark.long_module

# The MLflow store is shared state outside the pipeline's data flow: every training run adds to
# it, and no stage reads another's entries from it, so it is no stage's DVC out. So are the
# TensorBoard logs (logs/<strategy>/<run id>), which a training writes and copies into its run.
TRACKING_STORE = ("mlflow.db", "mlruns/", "logs/")


def tiny(params: dict) -> dict:
    params["data"]["max_images"] = 300
    for name in ("scratch", "feature_extraction"):
        params["train"][name]["epochs"] = 1
    params["train"]["fine_tune"].update(head_epochs=1, epochs=1)
    params["evaluate"].update(gradcam_images=4, gallery_images=8, mistakes=4)
    params["evaluate"]["patterns"].update(filters=2, size=32, steps=3)
    return params


@pytest.fixture(scope="module")
def traced(tmp_path_factory):
    root = tmp_path_factory.mktemp("project")
    env = make_project_copy(root, tiny)
    trace_file = root.parent / "trace.json"
    # Caches are the user's, outside the project, as they are outside a real checkout (the
    # explanation cache, .pipeline/explanations by default, is git-ignored local state too).
    outside = {
        "HOME": "home",
        "MPLCONFIGDIR": "mpl",
        "KERAS_HOME": "keras",
        "PIPELINE_DATA_CACHE": "data-cache",
        "PIPELINE_EXPLANATION_CACHE": "explanations",
    }
    env.update({name: str(root.parent / folder) for name, folder in outside.items()})
    runner = PROJECT_ROOT / "tests" / "trace_stages.py"
    result = subprocess.run(
        [sys.executable, str(runner), str(root), str(trace_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return root, json.loads(trace_file.read_text())


def _store(path: str) -> bool:
    return path.startswith(TRACKING_STORE)


def test_every_stage_ran(traced) -> None:
    _, trace = traced
    assert list(trace) == [stage.name for stage in load_stages(PROJECT_ROOT)]


def test_the_trace_sees_what_each_stage_really_reads_and_writes(traced) -> None:
    """The hook is not blind: known inputs and outputs of each kind show up in the trace."""
    _, trace = traced
    assert "params.yaml" in trace["check_params"]["reads"]
    assert "reports/params_check.json" in trace["check_params"]["writes"]
    assert "data/raw/digits/digits.csv.gz" in trace["split"]["reads"]
    assert "data/prepared/store.json" in trace["train_scratch"]["reads"]
    assert any(_shard_images(path, "train") for path in trace["train_scratch"]["reads"])
    assert "data/features/train.npy" in trace["train_feature_extraction"]["reads"]
    assert "models/fine_tune/model.keras" in trace["evaluate@fine_tune"]["reads"]
    assert "models/scratch/model.keras" not in trace["evaluate@fine_tune"]["reads"]
    assert "reports/scratch/evaluation.json" in trace["compare"]["reads"]
    assert "reports/metrics.json" in trace["compare"]["writes"]
    # One process: the store is opened once, by the first stage that tracks.
    assert "mlflow.db" in trace["train_scratch"]["writes"]
    # The TensorBoard logs the training wrote, read back to be stored in its MLflow run.
    assert any(path.startswith("logs/scratch/") for path in trace["train_scratch"]["reads"])
    assert any(path.startswith("mlruns/") for path in trace["evaluate@scratch"]["writes"])


def _shard_images(path: str, split: str) -> bool:
    return path.startswith(f"data/prepared/shards/{split}-") and path.endswith(".images.npy")


def test_no_stage_reads_the_images_of_a_split_it_does_not_use(traced) -> None:
    """Evaluation reads test images, and val images for the val figures choices are made on,
    never train ones (digits train without augmentation, so no train image for its figure);
    compare and promote read labels and digests, never pixels of train or
    val; the report shows train and val images of suspected label errors, never test ones;
    label_issues reads nothing of the test split."""
    _, trace = traced
    for stage in ("evaluate@scratch", "evaluate@feature_extraction", "evaluate@fine_tune"):
        reads = trace[stage]["reads"]
        assert any(_shard_images(path, "test") for path in reads), stage
        assert any(_shard_images(path, "val") for path in reads), stage
        assert not any(_shard_images(path, "train") for path in reads), stage
    for stage in ("compare", "promote"):
        reads = trace[stage]["reads"]
        assert not any(_shard_images(path, "val") for path in reads), stage
    # The report's label-issue gallery shows train and val images, never a test image.
    assert not any(_shard_images(path, "test") for path in trace["report"]["reads"])
    # Label issues are found on train and val alone: no test pixel, label or feature.
    reads = trace["label_issues"]["reads"]
    assert not any(path.startswith("data/prepared/shards/test-") for path in reads), reads
    assert "data/features/test.npy" not in reads
    assert "data/features/train.npy" in reads


def test_stages_write_only_their_declared_outs(traced) -> None:
    root, trace = traced
    for stage in load_stages(root):
        writes = trace[stage.name]["writes"]
        stray = [
            path for path in writes if not is_path_under(path, set(stage.outs)) and not _store(path)
        ]
        assert not stray, f"stage {stage.name} wrote undeclared files: {stray}"
        # And each declared out was really produced.
        missing = [out for out in stage.outs if not (root / out).exists()]
        assert not missing, f"stage {stage.name} did not write its outs {missing}"


def test_stages_read_only_their_declared_deps(traced) -> None:
    root, trace = traced
    for stage in load_stages(root):
        allowed = set(stage.path_deps) | set(stage.outs)
        if stage.reads_params:
            allowed.add("params.yaml")
        reads = trace[stage.name]["reads"]
        # Package code is checked statically, import by import (test_wiring.py).
        stray = [
            path
            for path in reads
            if not is_path_under(path, allowed)
            and not _store(path)
            and not path.startswith("pipeline/")
        ]
        assert not stray, f"stage {stage.name} read undeclared files: {stray}"


def test_training_stages_track_one_run_each_and_evaluate_adds_its_metrics(traced) -> None:
    """The cheap path through tracking.py: runs, tags, per-epoch metrics, the same test
    metrics in MLflow and in the DVC metrics file."""
    import mlflow

    root, trace = traced
    assert all(
        _store(path) or path.startswith("models/") for path in trace["train_scratch"]["writes"]
    )
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("image-classifiers").experiment_id])
    kinds = [run.data.tags.get("pipeline.kind") for run in runs]
    assert sorted(kind for kind in kinds if kind) == ["comparison", "promotion"]
    comparison = next(run for run in runs if run.data.tags.get("pipeline.kind") == "comparison")
    runs = [run for run in runs if "pipeline.kind" not in run.data.tags]
    assert sorted(run.data.tags["strategy"] for run in runs) == sorted(metrics)
    for run in runs:
        strategy = run.data.tags["strategy"]
        # Each strategy's own evaluation, logged once, into its own run.
        assert run.data.metrics["test_accuracy"] == metrics[strategy]["test_accuracy"]
        assert run.data.tags["pipeline.evaluated"] == "true"
        assert not any(key.startswith("mcnemar") for key in run.data.metrics)
        assert comparison.data.tags[f"compared_run.{strategy}"] == run.info.run_id
        assert (
            comparison.data.metrics[f"{strategy}.test_accuracy"]
            == (metrics[strategy]["test_accuracy"])
        )
        # What it trained on, by content, for the promotion gate.
        manifest = (root / "models" / strategy / "training_manifest.txt").read_text().split()
        assert len(manifest) == len(set(manifest)) > 100
        assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")] == (
            [0, 1] if strategy == "fine_tune" else [0]
        )


def test_promote_registers_the_best_strategy_and_records_its_decision(traced) -> None:
    """The in-process path through the registry: a version, its aliases and its gate tags."""
    import mlflow

    root, trace = traced
    assert "reports/promotion.json" in trace["promote"]["writes"]
    decision = json.loads((root / "reports" / "promotion.json").read_text())
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    best = max(metrics, key=lambda strategy: metrics[strategy]["test_accuracy"])
    assert decision["strategy"] == best and decision["registered_model"] == "digits-classifier"
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    version = client.get_model_version_by_alias("digits-classifier", "challenger")
    assert int(version.version) == decision["challenger"]["version"] == 1
    assert version.tags["gate.passed"] == str(decision["passed"]).lower()
    assert set(decision["criteria"]) == {"accuracy_floor", "class_recall_floor"}
    assert decision["registered"] is True and decision["train_test_overlap"] == 0
    assert version.tags["model_sha256"] == decision["challenger"]["model_sha256"]
    aliases = client.get_registered_model("digits-classifier").aliases
    assert ("champion" in aliases) == decision["passed"]


def test_promoting_the_same_model_again_registers_nothing_new(traced) -> None:
    """Versions are keyed by the model file's SHA-256: a second promote of the same models (a
    forced re-run, a retraining cycle that found nothing new to train) reuses the version."""
    import mlflow

    root, _ = traced
    (stage,) = [stage for stage in load_stages(root) if stage.name == "promote"]
    first = json.loads((root / "reports" / "promotion.json").read_text())
    # The project's own store: not one another test pointed MLflow at (set_tracking_uri
    # exports MLFLOW_TRACKING_URI to child processes).
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    result = subprocess.run(
        [sys.executable, "-m", stage.module, *stage.arguments],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "not registered again" in result.stderr, result.stderr[-4000:]
    again = json.loads((root / "reports" / "promotion.json").read_text())
    assert again["challenger"]["version"] == first["challenger"]["version"] == 1
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    versions = client.search_model_versions("name = 'digits-classifier'")
    assert [str(version.version) for version in versions] == ["1"]


# --- a stage that fails leaves its outs -----------------------------------------------------


def test_no_stage_leaves_a_staging_folder_beside_its_outs(traced) -> None:
    """Outs are built in a staging folder beside them and renamed into place: none is left."""
    root, _ = traced
    for stage in load_stages(root):
        for out in stage.outs:
            path = root / out
            left = sorted(p.name for p in path.parent.glob(f".{path.name}.*"))
            assert not left, f"stage {stage.name} left {left} beside {out}"


def _hashes(folder: Path) -> dict[str, str]:
    return {
        path.relative_to(folder).as_posix(): sha256_of(path)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def test_a_training_that_fails_while_writing_leaves_the_model_folder_as_it_was(
    tmp_path, monkeypatch
) -> None:
    """The model folder is replaced whole, only once every file of it is written: a failure
    after training (here: writing the manifest) leaves the previous one byte-identical, and no
    staging folder beside it. DVC persists the folder (dvc.yaml), so it is what stays."""
    import mlflow

    import pipeline.training.tracked as tracked
    from pipeline.stages.train import train_strategy
    from pipeline.training import strategies
    from tests.code.test_strategies import TOY, project_config, train_toy_run

    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "MLFLOW_RUN_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setitem(strategies.STRATEGIES, TOY.name, TOY)
    previous_uri = mlflow.get_tracking_uri()
    try:
        config = project_config()
        out = train_toy_run(tmp_path, config)
        before = _hashes(out)
        assert {"model.keras", "run.json", "training_manifest.txt"} <= set(before)

        def disk_full(*args, **kwargs):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(tracked, "write_manifest", disk_full)
        prepared = tmp_path / "data" / "prepared"
        gate = tmp_path / "reports" / "validation" / "summary.json"
        with pytest.raises(OSError, match="No space left"):
            train_strategy(TOY, config, prepared, gate, None, out, tmp_path)
    finally:
        mlflow.set_tracking_uri(previous_uri)
    assert _hashes(out) == before
    assert not list(out.parent.glob(f".{out.name}.*"))


def test_staged_files_replace_the_outs_only_when_the_block_succeeds(tmp_path) -> None:
    """compare's outs: all replaced together once the block succeeds; untouched on failure."""
    from pipeline.stages.compare import staged_files

    first, second = tmp_path / "reports" / "metrics.json", tmp_path / "reports" / "a.csv"
    first.parent.mkdir()
    first.write_text("old metrics")
    second.write_text("old csv")
    with pytest.raises(RuntimeError), staged_files(first, second) as (one, two):
        assert (one.name, two.name) == (first.name, second.name)
        one.write_text("new metrics")
        raise RuntimeError("the comparison failed")
    assert (first.read_text(), second.read_text()) == ("old metrics", "old csv")
    with staged_files(first, second) as (one, two):
        one.write_text("new metrics")
        two.write_text("new csv")
        assert first.read_text() == "old metrics"
    assert (first.read_text(), second.read_text()) == ("new metrics", "new csv")
    assert sorted(path.name for path in first.parent.iterdir()) == ["a.csv", "metrics.json"]
