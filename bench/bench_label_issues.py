"""Planted label errors in a folder of digits: how many does the label-issues stage find?

Writes scikit-learn's 1,797 digits as an image folder (a PNG per image, one subfolder per
class), moves a share of the files (5% by default) into another class's folder, then runs the
stages as dvc.yaml does, in a temporary project (the repository's params.yaml, with
data.dataset image_folder and backbone.weights hed): download (the folder's snapshot), split
(at the default data.image_size, 150 px), features (VGG16 with the offline `hed` weights at the
default backbone.image_size, 32 px) and label_issues (out-of-fold logistic regression,
cleanlab). Prints how many planted files are among the first 2 x (number planted) rows of
label_issues.csv, matched by path, and each stage's seconds (process start-up included).
Planted files that the split put into test cannot be found (the stage never reads the test
split): the recall is given over all planted files and over those in train and val.

    .venv/bin/python bench/bench_label_issues.py
    .venv/bin/python bench/bench_label_issues.py --variants      # other C values and rankings
    .venv/bin/python bench/bench_label_issues.py --fraction 0.1 --weights random
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.evaluation.label_issues import (  # noqa: E402
    load_scored_images,
    out_of_fold_probabilities,
    plan_folds,
)

GOAL = 0.8


def write_digits_folder(root: Path) -> list[str]:
    """The digits as <class>/<index>.png (8 x 8 gray, 0..16 stretched to 0..255); returns the
    files' paths relative to `root`."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    paths = []
    for index, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        relative = f"{label}/{index:04d}.png"
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        pixels = np.clip(image * 16, 0, 255).astype(np.uint8)
        Image.fromarray(pixels, mode="L").save(root / relative)
        paths.append(relative)
    return paths


def plant_wrong_labels(root: Path, paths: list[str], fraction: float, seed: int) -> list[str]:
    """Move `fraction` of the files into another class's folder (chosen at random); returns
    their new paths relative to `root`."""
    rng = np.random.default_rng(seed)
    classes = sorted({path.split("/")[0] for path in paths})
    chosen = rng.choice(len(paths), size=round(fraction * len(paths)), replace=False)
    planted = []
    for position in sorted(chosen):
        given, name = paths[position].split("/")
        wrong = rng.choice([label for label in classes if label != given])
        (root / given / name).rename(root / wrong / name)
        planted.append(f"{wrong}/{name}")
    return planted


def recall_at(ranked_paths: list[str], planted: set[str], count: int) -> int:
    """How many of `planted` are among the first `count` of `ranked_paths`."""
    return len(planted & set(ranked_paths[:count]))


def variants(images, classes, planted: set[str], folds: int, seed: int) -> None:
    """Recall of other regularization strengths and rankings over the same features, and each
    classifier's out-of-fold accuracy on the images left in their class."""
    from cleanlab.filter import find_label_issues as cleanlab_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    order = np.lexsort((images.splits, images.labels, images.digests))
    labels = np.asarray(images.labels)[order]
    features = np.asarray(images.features)[order]
    paths = [str(path) for path in np.asarray(images.paths)[order]]
    used, _, _ = plan_folds(labels, folds)
    present = planted & set(paths)
    clean = np.array([path not in planted for path in paths])
    count = 2 * len(present)
    print(f"\nvariants (first {count} rows; {len(present)} planted in train and val):")
    print(
        f"{'C':>6} {'accuracy':>9} {'ranking':<24} {'flagged':>8} {'found':>6} {'recall':>7} "
        f"{'seconds':>8}"
    )
    for strength in (0.01, 0.03, 0.1, 1.0):
        started = time.perf_counter()

        def make(seed: int, strength: float = strength):
            return make_pipeline(
                StandardScaler(),
                LogisticRegression(C=strength, max_iter=1000, random_state=seed),
            )

        probabilities = out_of_fold_probabilities(
            features, labels, len(classes), used, seed, make_classifier=make
        )
        seconds = time.perf_counter() - started
        accuracy = float((probabilities.argmax(axis=1) == labels)[clean].mean())
        scores = get_label_quality_scores(labels, probabilities, method="self_confidence")
        for filter_by in (
            "prune_by_noise_rate",
            "low_self_confidence",
            "low_normalized_margin",
            "all by score",
        ):
            if filter_by == "all by score":
                rows = np.argsort(scores, kind="stable")
            else:
                mask = cleanlab_issues(labels, probabilities, filter_by=filter_by, n_jobs=1)
                rows = np.flatnonzero(mask)
                rows = rows[np.lexsort((rows, scores[rows]))]
            found = recall_at([paths[row] for row in rows], present, count)
            print(
                f"{strength:>6g} {accuracy:>9.1%} {filter_by:<24} {len(rows):>8} {found:>6} "
                f"{found / max(1, len(present)):>7.1%} {seconds:>8.1f}",
                flush=True,
            )


STAGES = (
    ("download", ["--out", "data/raw/image_folder"]),
    (
        "split",
        [
            "--raw", "data/raw/image_folder", "--out", "data/prepared",
            "--skipped", "reports/data/skipped.csv", "--sources", "reports/data/sources.csv",
        ],
    ),
    ("features", ["--prepared", "data/prepared", "--out", "data/features"]),
    (
        "label_issues",
        [
            "--prepared", "data/prepared", "--features", "data/features",
            "--sources", "reports/data/sources.csv", "--out", "reports/label_issues.csv",
        ],
    ),
)  # fmt: skip
"""Each stage's arguments, as dvc.yaml gives them."""


def write_params(project: Path, folder: Path, args: argparse.Namespace) -> None:
    """The repository's params.yaml, set for the folder, the weights and the sizes asked."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(
        dataset="image_folder",
        image_folder=str(folder),
        image_size=args.image_size,
        seed=args.seed,
    )
    params["backbone"].update(weights=args.weights, image_size=args.backbone_size)
    params["label_issues"]["folds"] = args.folds
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def run_stage(project: Path, name: str, arguments: list[str]) -> float:
    """Run one stage as DVC would (a process in the project folder); its seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", f"pipeline.stages.{name}", *arguments],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"stage {name} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    last = [line for line in result.stderr.splitlines() if line.startswith(f"{name}:")]
    if last:
        print(f"  {last[-1]}")
    return seconds


def read_ranked_paths(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as stream:
        return [row["path"] for row in csv.DictReader(stream)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=0.05, help="share of files moved")
    parser.add_argument("--seed", type=int, default=42, help="data.seed (and the planting)")
    parser.add_argument("--weights", default="hed", help="backbone.weights: hed | random")
    parser.add_argument("--image-size", type=int, default=150, help="data.image_size")
    parser.add_argument("--backbone-size", type=int, default=32, help="backbone.image_size")
    parser.add_argument("--folds", type=int, default=5, help="label_issues.folds")
    parser.add_argument("--variants", action="store_true", help="also try other C and rankings")
    parser.add_argument("--keep", type=Path, help="copy the project folder here at the end")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as directory:
        project = Path(directory)
        folder = project / "images"
        paths = write_digits_folder(folder)
        planted = plant_wrong_labels(folder, paths, args.fraction, args.seed)
        write_params(project, folder, args)
        print(
            f"{len(paths)} digits, {len(planted)} moved to another class "
            f"({args.fraction:.0%}); weights {args.weights}, images {args.image_size} px, "
            f"backbone input {args.backbone_size} px, {args.folds} folds"
        )
        seconds = {name: run_stage(project, name, arguments) for name, arguments in STAGES}

        ranked = read_ranked_paths(project / "reports" / "label_issues.csv")
        sources = read_ranked_paths_by_split(project / "reports" / "data" / "sources.csv")
        scored = {path for path, split in sources.items() if split in ("train", "val")}
        present = set(planted) & scored
        everything = recall_at(ranked, set(planted), 2 * len(planted))
        within = recall_at(ranked, present, 2 * len(present))
        print(f"label_issues.csv: {len(ranked)} rows")
        print(
            f"planted {len(planted)}; in the first {2 * len(planted)} rows: {everything} "
            f"({everything / len(planted):.1%})"
        )
        print(
            f"planted in train and val {len(present)} (the rest are in test, never read); "
            f"in the first {2 * len(present)} rows: {within} ({within / len(present):.1%}); "
            f"goal {GOAL:.0%}: {'met' if within >= GOAL * len(present) else 'NOT met'}"
        )
        print(
            "seconds: "
            + ", ".join(f"{name} {value:.1f}" for name, value in seconds.items())
            + f" (label_issues {seconds['label_issues']:.1f} s of which start-up is a part)"
        )
        if args.variants:
            images, classes = load_scored_images(
                project / "data" / "prepared",
                project / "data" / "features",
                project / "reports" / "data" / "sources.csv",
            )
            variants(images, classes, set(planted), args.folds, args.seed)
        if args.keep:
            import shutil

            shutil.copytree(project, args.keep, dirs_exist_ok=True)


def read_ranked_paths_by_split(path: Path) -> dict[str, str]:
    """sources.csv as path -> split."""
    with open(path, newline="", encoding="utf-8") as stream:
        return {row["path"]: row["split"] for row in csv.DictReader(stream)}


if __name__ == "__main__":
    main()
