"""Planted label errors in an image folder are found: 5% of the files of a folder of digits are
moved into another class's subfolder, and the split, features and label-issues stages, run
in-process, list most of them among the first rows of label_issues.csv, by file path."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from pipeline.config import DataConfig
from pipeline.datasets.folders import snapshot_image_folder
from pipeline.entry import run_entry
from pipeline.evaluation.label_issues import COLUMNS
from pipeline.stages import label_issues as label_issues_stage
from pipeline.stages.split import prepare_splits
from pipeline.store import open_splits
from tests.project import PROJECT_ROOT

DIGITS = 5
"""Classes 0-4 of scikit-learn's digits: about 900 images, enough for a ranking, quick."""
PLANTED_FRACTION = 0.05
GOAL = 0.8


def _digits_folder(root: Path) -> list[str]:
    from sklearn.datasets import load_digits

    digits = load_digits(n_class=DIGITS)
    paths = []
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        relative = f"{label}/{index:04d}.png"
        Image.fromarray(np.clip(image * 16, 0, 255).astype(np.uint8)).save(root / relative)
        paths.append(relative)
    return paths


def _plant(root: Path, paths: list[str], seed: int = 0) -> list[str]:
    """Move PLANTED_FRACTION of the files into another class's folder; their new paths."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(paths), size=round(PLANTED_FRACTION * len(paths)), replace=False)
    planted = []
    for position in sorted(chosen):
        given, name = paths[position].split("/")
        wrong = str(rng.choice([str(c) for c in range(DIGITS) if str(c) != given]))
        (root / given / name).rename(root / wrong / name)
        planted.append(f"{wrong}/{name}")
    return planted


def _features(prepared: Path, out: Path, weights: Path) -> None:
    """What the features stage writes for train and val (VGG16, HED weights, 32 px)."""
    from pipeline.models.backbones import BACKBONES
    from pipeline.models.features import write_features
    from pipeline.models.heads import build_feature_extractor
    from pipeline.training.fit import set_global_seed

    splits = open_splits(prepared)
    backbone = BACKBONES["vgg16"]
    set_global_seed(42, True)
    extractor = build_feature_extractor(
        splits["train"].image_shape, backbone, backbone.build(32, str(weights))
    )
    out.mkdir()
    for name in ("train", "val"):
        write_features(extractor, splits[name], out / f"{name}.npy", 64, show_progress=False)
    for split in splits.values():
        split.close()


def test_planted_labels_are_among_the_first_rows(tmp_path, monkeypatch, hed_vgg16_weights):
    folder = tmp_path / "images"
    planted = _plant(folder, _digits_folder(folder))
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["data"].update(dataset="image_folder", image_folder=str(folder), image_size=32)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)

    raw = tmp_path / "raw" / "image_folder"
    snapshot_image_folder(folder, raw)
    config = DataConfig(dataset="image_folder", image_folder=str(folder), image_size=32)
    sources = tmp_path / "sources.csv"
    prepared = tmp_path / "prepared"
    prepare_splits(config, raw, prepared, tmp_path / "skipped.csv", sources_file=sources)
    _features(prepared, tmp_path / "features", hed_vgg16_weights)
    out = tmp_path / "label_issues.csv"
    with pytest.raises(SystemExit) as exit_:
        run_entry(
            label_issues_stage.main,
            "stage 'label_issues'",
            ["--prepared", str(prepared), "--features", str(tmp_path / "features"),
             "--sources", str(sources), "--out", str(out)],
        )  # fmt: skip
    assert exit_.value.code == 0

    with open(out, newline="") as stream:
        reader = csv.DictReader(stream)
        assert tuple(reader.fieldnames) == COLUMNS
        rows = list(reader)
    with open(sources, newline="") as stream:
        split_of = {row["path"]: row["split"] for row in csv.DictReader(stream)}
    # Files the split put into test are never checked (the stage does not read test labels).
    findable = {path for path in planted if split_of[path] in ("train", "val")}
    assert len(findable) >= 0.6 * len(planted)
    first = {row["path"] for row in rows[: 2 * len(findable)]}
    found = findable & first
    assert len(found) >= GOAL * len(findable), (
        f"{len(found)} of {len(findable)} planted files in the first {2 * len(findable)} rows"
    )
    # Each found file's given label is its (wrong) folder; the suggestion is another class.
    by_path = {row["path"]: row for row in rows}
    for path in found:
        assert by_path[path]["given"] == path.split("/")[0] != by_path[path]["suggested"]
