"""`dvc repro` on a user's own folder of a few hundred small generated images, end to end.

The folder lives outside the project, as a user's photo folder does; DVC tracks it as the
download stage's dependency and versions the snapshot under data/raw/image_folder.
"""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image

from tests import fakes
from tests.project import dvc, make_project_copy, tiny_params

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CLASSES = {"red": 100, "green": 100, "blue": 100}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    images = tmp_path_factory.mktemp("user") / "photos"
    fakes.write_image_folder(images, CLASSES, size=20)
    (images / "green" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")

    def edit(params: dict) -> dict:
        params = tiny_params(params)
        params["train"]["scratch"]["epochs"] = 10  # 200 training images: few steps per epoch
        params["data"].update(
            dataset="image_folder", image_folder=str(images), image_size=24, resize="pad"
        )
        return params

    root = tmp_path_factory.mktemp("project")
    env = make_project_copy(root, edit)
    result = dvc(root, env, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root, env, images


def test_repro_trains_every_strategy_on_the_folder(project) -> None:
    root, _, _ = project
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    assert set(metrics) == {"scratch", "feature_extraction", "fine_tune"}
    # The three classes differ in brightness: ten short epochs beat chance (1/3) clearly.
    assert metrics["scratch"]["test_accuracy"] > 0.6
    summary = json.loads((root / "reports" / "validation" / "summary.json").read_text())
    assert summary["passed"] is True and summary["rows"] == 300


def test_the_snapshot_and_the_skipped_list_are_outputs(project) -> None:
    root, _, _ = project
    raw = root / "data" / "raw" / "image_folder"
    assert sorted(p.name for p in raw.iterdir()) == ["blue", "green", "red"]
    with open(root / "reports" / "data" / "skipped.csv") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["path"] for row in rows] == ["green/broken.jpg"]
    plan = json.loads((root / "data" / "prepared" / "split.json").read_text())
    assert plan["skipped"] == 1 and sum(plan["counts"].values()) == 300


def test_new_images_in_the_folder_make_the_download_stage_stale(project) -> None:
    root, env, images = project
    assert "up to date" in dvc(root, env, "status").stdout
    Image.new("RGB", (20, 26), (0, 0, 250)).save(images / "blue" / "new.png")
    status = dvc(root, env, "status")
    assert "download" in status.stdout and "modified" in status.stdout
    (images / "blue" / "new.png").unlink()


def test_a_missing_image_folder_stops_the_pipeline_and_keeps_outputs(project) -> None:
    root, env, images = project
    before = (root / "reports" / "metrics.json").read_bytes()
    params = (root / "params.yaml").read_text()
    (root / "params.yaml").write_text(params.replace(str(images), str(images) + "_typo"))
    try:
        result = dvc(root, env, "repro")
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        assert "_typo" in result.stdout + result.stderr
        assert (root / "reports" / "metrics.json").read_bytes() == before
        assert (root / "data" / "raw" / "image_folder").is_dir()
    finally:
        (root / "params.yaml").write_text(params)
