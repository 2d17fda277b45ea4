"""A 10:1 image folder: does `class_weight: balanced` raise the minority class's recall?

Writes a folder of generated 32 x 32 PNGs, one subfolder per class: `round` (ellipses at most 1.3
times as long as wide, as hand-drawn discs are) and `square` (squares), 1,000 images each, and
`oval` (ellipses 1.25-1.8 times as long as wide), 100 images: the largest class 10x the smallest.
Ovals and rounds overlap (1.25-1.3), so some images are ambiguous and the rest differ only
slightly: the minority is the hard class. Each shape has a random size, place, turn and light
colour on a dark background of another random colour, with pixel noise and a blur. A second
folder with 150 images of each class is the balanced test set. Both folders are read with the
pipeline's own folder reader (`read_image_folder`); the 10:1 folder is split into train and val
by the pipeline's content-keyed split (val 15%, also 10:1).

Then the `scratch` strategy's train function (pipeline/training/strategies.py) trains on it
in-process with the params.yaml block of `train.scratch` (the architecture resolved for an image
folder, small_convnet; early stopping and the learning-rate schedule as configured), twice per
seed: `class_weight: none`, then `balanced`. Augmentation is off unless `--augmentation`: with
the image folder's default augmentation (rotations up to 40 degrees, shifts, shear, zoom, flips)
small_convnet learned nothing from these 1,777 training images before early stopping ended it
(measured: stopped after 16 and 18 epochs, balanced accuracy 0.34 both ways, chance 0.33), which
leaves nothing to compare. Prints, for each run, the weights used, the recall of each
class on the balanced test set (the minority's first), the balanced accuracy, the epoch early
stopping kept and the training time. Never asserts: figures belong here; the test of the
direction is tests/model/test_class_weight.py.

    .venv/bin/python bench/bench_class_weight.py                  # about 1.5 minutes on 2 cores
    .venv/bin/python bench/bench_class_weight.py --seeds 0 1 2    # about 3.5 minutes
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.datasets.readers.base import ReadOptions  # noqa: E402
from pipeline.datasets.readers.files import read_image_folder  # noqa: E402
from pipeline.datasets.sources import DATASETS  # noqa: E402
from pipeline.datasets.split import split_indices  # noqa: E402
from pipeline.evaluation.metrics import evaluate_model  # noqa: E402
from pipeline.training.fit import set_global_seed  # noqa: E402
from pipeline.training.interface import TrainingContext, TrainingData  # noqa: E402
from pipeline.training.strategies import STRATEGIES  # noqa: E402

SIZE = 32
TRAIN_COUNTS = {"oval": 100, "round": 1000, "square": 1000}
TEST_COUNT = 150
MINORITY = "oval"


def draw_shape(kind: str, rng: np.random.Generator) -> Image.Image:
    """One image of `kind`: a shape of random size, place, turn and colour on noise."""
    scale = 4
    canvas = SIZE * scale
    # A light shape on a dark background, each of a random colour: the outline always shows.
    dark, light = rng.integers(0, 110, 3), rng.integers(145, 256, 3)
    image = Image.new("RGB", (canvas, canvas), tuple(int(v) for v in dark))
    colour = tuple(int(v) for v in light)
    radius = rng.uniform(6, 11) * scale
    centre = rng.uniform(radius + scale, canvas - radius - scale, 2)
    if kind == "square":
        half = radius * 0.85
        corners = np.array([[-half, -half], [half, -half], [half, half], [-half, half]])
    else:
        ratio = rng.uniform(1.25, 1.8) if kind == "oval" else rng.uniform(1.0, 1.3)
        angles = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        # The same area as a disc of `radius`: size does not tell the classes apart.
        long, short = radius * np.sqrt(ratio), radius / np.sqrt(ratio)
        corners = np.stack([long * np.cos(angles), short * np.sin(angles)], axis=1)
    turn = rng.uniform(0, np.pi)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    points = corners @ rotation.T + centre
    ImageDraw.Draw(image).polygon([tuple(point) for point in points], fill=colour)
    image = image.resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, 15, (SIZE, SIZE, 3))
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))


def write_folder(root: Path, counts: dict[str, int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for kind, count in counts.items():
        (root / kind).mkdir(parents=True)
        for index in range(count):
            draw_shape(kind, rng).save(root / kind / f"{kind}_{index:04d}.png")


def read_folder(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    index = read_image_folder(root, ReadOptions(image_size=SIZE))
    return index.load_all(), index.labels, index.class_names


def recalls(labels: np.ndarray, predicted: np.ndarray, classes: int) -> list[float]:
    return [float((predicted[labels == c] == c).mean()) for c in range(classes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--epochs", type=int, default=None, help="train.scratch.epochs (params.yaml: 60)"
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="train.seed values")
    parser.add_argument("--data-seed", type=int, default=7, help="seed of the generated images")
    parser.add_argument(
        "--augmentation",
        action="store_true",
        help="train with the augmentation an image folder gets by default (off: none)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("pipeline.training.interface").setLevel(logging.INFO)
    logging.getLogger("pipeline.training.fit").setLevel(logging.INFO)

    with tempfile.TemporaryDirectory() as directory:
        work = Path(directory)
        started = time.perf_counter()
        write_folder(work / "images", TRAIN_COUNTS, args.data_seed)
        write_folder(work / "test", dict.fromkeys(TRAIN_COUNTS, TEST_COUNT), args.data_seed + 1)
        images, labels, classes = read_folder(work / "images")
        test_images, test_labels, test_classes = read_folder(work / "test")
        if test_classes != classes:
            raise SystemExit(f"the test folder's classes {test_classes} are not {classes}")
        parts = split_indices(labels, 0.15, 0.0, seed=42)
        train = (images[parts["train"]], labels[parts["train"]])
        val = (images[parts["val"]], labels[parts["val"]])
        print(
            f"folder: {dict(zip(classes, np.bincount(labels).tolist(), strict=True))} "
            f"(train {np.bincount(train[1]).tolist()}, val {np.bincount(val[1]).tolist()}), "
            f"test {TEST_COUNT} per class; written and read in "
            f"{time.perf_counter() - started:.1f} s"
        )

        strategy = STRATEGIES["scratch"]
        base = strategy.block(load_config(ROOT / "params.yaml"))
        minority = classes.index(MINORITY)
        order = [minority, *(c for c in range(len(classes)) if c != minority)]
        rows = []
        for seed in args.seeds:
            for choice in ("none", "balanced"):
                block = base.model_copy(
                    update={"class_weight": choice, "epochs": args.epochs or base.epochs}
                )
                augmentation = block.augmentation.resolve(
                    DATASETS["image_folder"].augment_by_default
                )
                context = TrainingContext(
                    augmentation=augmentation if args.augmentation else None,
                    architecture=strategy.architecture(block, "image_folder"),
                )
                set_global_seed(seed)
                clock = time.perf_counter()
                result = strategy.train(
                    TrainingData(train, val, len(classes), seed=seed), block, context
                )
                seconds = time.perf_counter() - clock
                _, predicted = evaluate_model(result.model, test_images, test_labels)
                recall = recalls(test_labels, predicted, len(classes))
                kept = int(np.argmin(result.history["val_loss"])) + 1
                rows.append((seed, choice, result.class_weights, recall, kept, seconds))

        print(
            f"\nscratch ({context.architecture.name}, augmentation "
            f"{'on' if context.augmentation else 'off'}, at most {block.epochs} epochs, "
            f"early stopping on val_loss); recall on the balanced test set:"
        )
        names = " ".join(f"{classes[c]:>7}" for c in order)
        print(f"{'seed':>4} {'class_weight':>12} {names} {'bal.acc':>7} {'epoch':>5} {'time':>7}")
        for seed, choice, weights, recall, kept, seconds in rows:
            values = " ".join(f"{recall[c]:7.3f}" for c in order)
            print(
                f"{seed:>4} {choice:>12} {values} {np.mean(recall):7.3f} {kept:>5} "
                f"{seconds:6.1f}s   weights {_shown(weights, classes)}"
            )
        for choice in ("none", "balanced"):
            minority_recalls = [row[3][minority] for row in rows if row[1] == choice]
            print(f"mean {MINORITY} recall, {choice}: {np.mean(minority_recalls):.3f}")
        print(f"total {time.perf_counter() - started:.1f} s")


def _shown(weights: dict[int, float] | None, classes: list[str]) -> str:
    if weights is None:
        return "none"
    return ", ".join(f"{classes[c]} {w:.3g}" for c, w in weights.items())


if __name__ == "__main__":
    main()
