"""Images per second of the features stage's writer against a bare `predict` of the conv base.

The features stage reads a split chunk by chunk, runs the extractor (preprocessing + VGG16
base) over each chunk and appends its features to a .npy file
(`pipeline.models.features.write_features`), so that neither the images nor features larger
than memory ever sit in it whole. This measures what that costs: the same extractor, the same
uint8 images and the same batch size, once through `write_features` (reading them from an
in-memory split) into a temporary .npy and once through `extractor.predict` with the result
discarded.

Both run once to warm up (tracing every batch shape), then alternately `--repeats` times; the
best run of each counts. Prints both rates, the writer's overhead in percent, and whether it is
within 5%. Never asserts: timings belong here, not in the test suite.

    python bench/bench_features_overhead.py                  # about a minute or two on 2 cores
    python bench/bench_features_overhead.py --images 10000 --image-size 64 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.models.backbones import BACKBONES  # noqa: E402
from pipeline.models.features import CHUNK_IMAGES, write_features  # noqa: E402
from pipeline.models.heads import build_feature_extractor  # noqa: E402
from pipeline.store import ArraySplit  # noqa: E402
from pipeline.training.fit import set_global_seed  # noqa: E402

GOAL_OVERHEAD = 0.05


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images",
        type=int,
        default=1536,
        help="images per run (the default makes two of the stage's chunks, 1024 + 512)",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=32,
        help="side of the generated RGB images and of the backbone's input",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=64,
        help="predict batch size (backbone.batch_size), the same for both",
    )
    parser.add_argument(
        "--chunk-images",
        type=int,
        default=CHUNK_IMAGES,
        help="images per chunk of the writer (the stage's default)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each, best counts")
    parser.add_argument(
        "--weights", default=None, help="a notop VGG16 .h5 weights file (default: random weights)"
    )
    parser.add_argument("--seed", type=int, default=42)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_global_seed(args.seed, deterministic=False)
    backbone = BACKBONES["vgg16"]
    base = backbone.build(args.image_size, args.weights)
    shape = (args.images, args.image_size, args.image_size, 3)
    images = np.random.default_rng(args.seed).integers(0, 256, size=shape, dtype=np.uint8)
    extractor = build_feature_extractor(images.shape[1:], backbone, base)
    split = ArraySplit(images, np.zeros(len(images), np.int64), ["images"], "train")

    with tempfile.TemporaryDirectory(prefix="bench-features-") as directory:
        path = Path(directory) / "train.npy"

        def run_writer() -> None:
            write_features(extractor, split, path, args.batch_size, args.chunk_images)

        def run_predict() -> None:
            extractor.predict(images, batch_size=args.batch_size, verbose=0)

        runs = {"write_features": run_writer, "predict": run_predict}
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        # Warm-up traces every batch shape each path will see; it is not timed.
        for run in runs.values():
            run()
        # Alternating the two spreads any slowdown of a shared machine over both.
        for _ in range(args.repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                seconds[name].append(time.perf_counter() - start)

    best = {name: min(times) for name, times in seconds.items()}
    rate = {name: args.images / value for name, value in best.items()}
    overhead = best["write_features"] / best["predict"] - 1.0
    print(
        f"vgg16 (weights {args.weights or 'random'}) on {args.images} uint8 images "
        f"{args.image_size}x{args.image_size}x3, batch {args.batch_size}, chunks of "
        f"{args.chunk_images}; best of {args.repeats} after a warm-up"
    )
    for name in runs:
        runs_text = ", ".join(f"{value:.2f}" for value in seconds[name])
        print(f"{name:15s} {rate[name]:8.1f} images/s  (runs: {runs_text} s)")
    spread = {name: max(times) / min(times) - 1.0 for name, times in seconds.items()}
    print(
        f"run-to-run spread (slowest / fastest - 1): write_features "
        f"{spread['write_features'] * 100:.1f}%, predict {spread['predict'] * 100:.1f}% "
        f"(an overhead smaller than this is noise; raise --repeats on a busy machine)"
    )
    verdict = "met" if overhead <= GOAL_OVERHEAD else "not met"
    print(f"write_features overhead vs bare predict: {overhead * 100:+.1f}%")
    print(f"goal: within {GOAL_OVERHEAD * 100:g}% of bare predict: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
