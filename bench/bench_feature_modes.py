"""Cached features against the frozen base run every epoch: time to the same validation accuracy.

`feature_extraction` has two modes. `cached` runs the conv base once over the train and val
splits (the features stage's chunked writer) and trains a dense head on the stored features.
`end_to_end` keeps the frozen base inside the model and runs it on every batch of every epoch,
here WITHOUT augmentation (the course's CIFAR-10 notebook approach). Both train the same head
on the same data with the same settings, through the project's own train functions.

The pipeline itself no longer pays that cost without augmentation: `training.frozen` runs the
frozen base once and trains the head on its outputs, as `cached` does. This benchmark turns
that off for `end_to_end`, to measure what running the base every epoch costs (what
augmentation costs on top of the head).

A Keras callback records the wall time and the validation accuracy at the end of every epoch.
Each mode's clock starts before its first piece of work: for `cached`, before the features
are written, so the extraction time is INCLUDED. The target accuracy is one both modes reach:
`--target`, else the lower of the two best validation accuracies. Prints a per-epoch table,
each mode's time to the target, their ratio, and whether cached is at least 10x faster.
Never asserts: timings belong here, not in the test suite.

    python bench/bench_feature_modes.py                      # digits, a few minutes on 2 cores
    python bench/bench_feature_modes.py --data cifar-like --train-images 5000 --epochs 20
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402

from pipeline.config import AugmentationConfig, FeatureExtractionConfig  # noqa: E402
from pipeline.models.backbones import BACKBONES  # noqa: E402
from pipeline.models.features import write_features  # noqa: E402
from pipeline.models.heads import build_feature_extractor  # noqa: E402
from pipeline.store import ArraySplit  # noqa: E402
from pipeline.training.fit import set_global_seed  # noqa: E402
from pipeline.training.interface import (  # noqa: E402
    BackboneSetup,
    TrainingContext,
    TrainingData,
)
from pipeline.training.strategies import STRATEGIES  # noqa: E402

GOAL_SPEEDUP = 10.0


class EpochClock(keras.callbacks.Callback):
    """Seconds since `start` and the validation accuracy, at the end of every epoch (Keras
    calls `on_epoch_end` after the epoch's validation, so validation time is included)."""

    def __init__(self, start: float) -> None:
        super().__init__()
        self.start = start
        self.elapsed: list[float] = []
        self.val_accuracy: list[float] = []

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.elapsed.append(time.perf_counter() - self.start)
        self.val_accuracy.append(float((logs or {})["val_accuracy"]))


def load_digits_images(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as the pipeline stores images: uint8 (N, 8, 8, 1), shuffled."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 255.0 / 16.0).round().astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(images))
    return images[order], labels[order]


def make_cifar_like(count: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10-shaped uint8 images (N, 32, 32, 3) whose class sets a colour and a stripe
    direction under noise: random-weight features can learn it, but not in one epoch."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.int64) % num_classes
    rng.shuffle(labels)
    colours = rng.uniform(60, 200, size=(num_classes, 3))
    angles = np.linspace(0, np.pi, num_classes, endpoint=False)
    rows, cols = np.mgrid[0:32, 0:32]
    stripes = np.stack(
        [np.sin((np.cos(a) * rows + np.sin(a) * cols) * 0.8) for a in angles]
    )  # (classes, 32, 32)
    images = colours[labels][:, None, None, :] + 40.0 * stripes[labels][..., None]
    images += rng.normal(0, 50, size=images.shape)
    return np.clip(images, 0, 255).astype(np.uint8), labels


def time_to_target(clock: EpochClock, target: float) -> tuple[int, float] | None:
    """(epoch number from 1, seconds) of the first epoch at or above `target`, or None."""
    for epoch, (seconds, accuracy) in enumerate(
        zip(clock.elapsed, clock.val_accuracy, strict=True), 1
    ):
        if accuracy >= target:
            return epoch, seconds
    return None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        choices=("digits", "cifar-like"),
        default="digits",
        help="scikit-learn digits (8x8 gray) or generated 32x32 RGB images",
    )
    parser.add_argument("--train-images", type=int, default=800, help="training images")
    parser.add_argument("--val-images", type=int, default=200, help="validation images")
    parser.add_argument("--epochs", type=int, default=12, help="epochs of each mode")
    parser.add_argument(
        "--image-size",
        type=int,
        default=32,
        help="the backbone's input side (images are resized inside the model)",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument(
        "--features-batch-size",
        type=int,
        default=64,
        help="the features stage's batch size (backbone.batch_size)",
    )
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=1e-3,
        help="head learning rate, the same in both modes",
    )
    parser.add_argument(
        "--target",
        type=float,
        default=None,
        help="validation accuracy to reach (default: the lower best of the two)",
    )
    parser.add_argument(
        "--weights", default=None, help="a notop VGG16 .h5 weights file (default: random weights)"
    )
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


@contextlib.contextmanager
def _base_run_every_epoch():
    """The frozen view off (see the module): the whole model trains, base and all."""
    from pipeline.training import frozen

    original = frozen._why_whole
    frozen._why_whole = lambda *args: "bench_feature_modes runs the base every epoch"
    try:
        yield
    finally:
        frozen._why_whole = original


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.data == "digits":
        images, labels = load_digits_images(args.seed)
    else:
        images, labels = make_cifar_like(args.train_images + args.val_images, args.seed)
    count = args.train_images + args.val_images
    if count > len(images):
        print(f"--train-images + --val-images = {count}, but {args.data} has {len(images)} images")
        return 2
    train = (images[: args.train_images], labels[: args.train_images])
    val = (images[args.train_images : count], labels[args.train_images : count])
    num_classes = int(labels.max()) + 1
    backbone = BACKBONES["vgg16"]
    configs = {
        mode: FeatureExtractionConfig(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            mode=mode,
            augmentation=AugmentationConfig(enabled=False),
        )
        for mode in ("cached", "end_to_end")
    }
    set_global_seed(args.seed, deterministic=False)
    # One base for both modes: the same (random or given) weights produce both sets of features.
    base = backbone.build(args.image_size, args.weights)

    clocks: dict[str, EpochClock] = {}
    extraction_s = 0.0
    # Keras' per-epoch lines go to stderr, so stdout holds only the report.
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as directory:
        set_global_seed(args.seed, deterministic=False)
        start = time.perf_counter()
        extractor = build_feature_extractor(train[0].shape[1:], backbone, base)
        class_names = [str(label) for label in range(num_classes)]
        for name, (x, y) in (("train", train), ("val", val)):
            write_features(
                extractor,
                ArraySplit(x, y, class_names, name),
                Path(directory) / f"{name}.npy",
                args.features_batch_size,
            )
        features = {name: np.load(Path(directory) / f"{name}.npy") for name in ("train", "val")}
        extraction_s = time.perf_counter() - start
        clocks["cached"] = EpochClock(start)
        # Both modes through the strategy's one train function, as the train stage runs it.
        strategy = STRATEGIES["feature_extraction"]
        cached = TrainingData(
            (features["train"], train[1]),
            (features["val"], val[1]),
            num_classes,
            kind="features",
            extractor=extractor,
        )
        strategy.train(cached, configs["cached"], TrainingContext(callbacks=[clocks["cached"]]))

        set_global_seed(args.seed, deterministic=False)
        clocks["end_to_end"] = EpochClock(time.perf_counter())
        context = TrainingContext(
            # Feature extraction keeps the whole base frozen: nothing to unfreeze.
            backbone=BackboneSetup(backbone, base, unfreeze_from="none"),
            callbacks=[clocks["end_to_end"]],
            augmentation=None,
        )
        images = TrainingData(train, val, num_classes, kind="images")
        with _base_run_every_epoch():
            strategy.train(images, configs["end_to_end"], context)

    weights = args.weights or "random"
    print(
        f"data {args.data}: {len(train[0])} train / {len(val[0])} val images "
        f"{train[0].shape[1:]}, {num_classes} classes; vgg16 at {args.image_size}x"
        f"{args.image_size}, weights {weights}; {args.epochs} epochs, batch {args.batch_size}, "
        f"{configs['cached'].optimizer} lr {args.learning_rate:g}; end_to_end without augmentation"
    )
    print(
        f"cached: feature extraction (train + val, write_features) {extraction_s:.1f} s, "
        f"included in its times below"
    )
    print()
    print(f"{'epoch':>5}  {'cached s':>9} {'val_acc':>8}   {'end_to_end s':>12} {'val_acc':>8}")
    for epoch in range(args.epochs):
        cells = []
        for mode in ("cached", "end_to_end"):
            clock = clocks[mode]
            if epoch < len(clock.elapsed):
                cells.append((f"{clock.elapsed[epoch]:.1f}", f"{clock.val_accuracy[epoch]:.3f}"))
            else:
                cells.append(("-", "-"))
        print(
            f"{epoch + 1:>5}  {cells[0][0]:>9} {cells[0][1]:>8}   "
            f"{cells[1][0]:>12} {cells[1][1]:>8}"
        )
    print()
    best = {mode: max(clock.val_accuracy) for mode, clock in clocks.items()}
    target = args.target if args.target is not None else min(best.values())
    source = "--target" if args.target is not None else "the lower of the two best"
    print(
        f"best val_accuracy: cached {best['cached']:.3f}, end_to_end {best['end_to_end']:.3f}; "
        f"target {target:.3f} ({source})"
    )
    reached = {mode: time_to_target(clock, target) for mode, clock in clocks.items()}
    for mode, hit in reached.items():
        if hit is None:
            print(f"{mode:>10}: target not reached in {args.epochs} epochs")
        else:
            print(f"{mode:>10}: target reached at epoch {hit[0]}, after {hit[1]:.1f} s")
    if reached["cached"] is None or reached["end_to_end"] is None:
        print(
            f"goal: cached at least {GOAL_SPEEDUP:g}x faster to the target: not measurable "
            f"(a mode did not reach it; train longer or lower --target)"
        )
        return 0
    speedup = reached["end_to_end"][1] / reached["cached"][1]
    verdict = "met" if speedup >= GOAL_SPEEDUP else "not met"
    print(f"time-to-target ratio end_to_end / cached = {speedup:.1f}x")
    print(
        f"goal: cached at least {GOAL_SPEEDUP:g}x faster to the target: {verdict} ({speedup:.1f}x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
