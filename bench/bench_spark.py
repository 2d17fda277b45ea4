"""`pipeline predict` against `pipeline predict --engine spark --master local[2]`: images/s on the
same files, with the same model, in one run.

Generates `--count` labelled RGB PNGs (bench/make_images.py: 20,000 images of 224x224 in 10
classes by default), then registers a classifier of the project's own image-folder architecture
taking `--side` x `--side` RGB images (64 by default: each file is decoded and resized by the
model's own code), trained one epoch on random images (tests/serving_models.register_champion:
the bench measures throughput, not accuracy), into a SQLite store of its own, as `champion`.
Both engines then score the whole folder as a user runs them (a subprocess each, start-up
included), with the same `--batch-size`; a run on `--startup-count` images first measures each
engine's fixed cost (Python and TensorFlow imports, the model's load, Spark's JVM and Python
workers), so the steady rate is (count - startup count) / (time - start-up time).

Prints, for each engine: the wall time, images/s end to end and in the steady state; then the
ratio spark / local, and how far the two outputs agree (the same predicted class, the largest
probability difference). Never asserts.

    python bench/bench_spark.py                  # 20,000 images, local[2]
    python bench/bench_spark.py --count 2000 --master 'local[*]'
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.make_images import class_name, make_images  # noqa: E402

PIPELINE = str(Path(sys.executable).parent / "pipeline")
NAME = "bench-spark"


def register(store: Path, side: int, classes: int) -> str:
    """The champion's URI in a fresh store at `store` (mlflow.db); the tracking URI."""
    from tests.serving_models import register_champion

    names = [class_name(label) for label in range(classes)]
    return register_champion(store, NAME, "image_folder", (side, side, 3), names, epochs=1)


def run_predict(
    source: Path, out: Path, tracking: str, batch_size: int, spark_master: str | None
) -> float:
    """Seconds `pipeline predict` (with --engine spark when `spark_master`) took on `source`."""
    command = [
        PIPELINE,
        "predict",
        str(source),
        "--model",
        f"models:/{NAME}@champion",
        "--out",
        str(out),
        "--batch-size",
        str(batch_size),
        "--root",
        str(out.parent),
    ]
    if spark_master is not None:
        command += ["--engine", "spark", "--master", spark_master]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-5:])
        raise SystemExit(f"{' '.join(command[:2])} failed ({result.returncode}):\n{tail}")
    return elapsed


def agreement(local_csv: Path, spark_parquet: Path) -> tuple[int, int, float]:
    """(rows, rows with the same predicted class, largest probability difference)."""
    import pandas as pd

    with open(local_csv, newline="") as stream:
        local = list(csv.DictReader(stream))
    spark = pd.read_parquet(spark_parquet)
    same = sum(
        row["predicted_class"] == answer
        for row, answer in zip(local, spark["predicted_class"], strict=True)
    )
    largest = max(
        abs(float(row["probability"]) - answer)
        for row, answer in zip(local, spark["probability"], strict=True)
        if row["probability"]
    )
    return len(local), same, largest


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000, help="images (default: 20000)")
    parser.add_argument("--size", type=int, default=224, help="image side (default: 224)")
    parser.add_argument("--classes", type=int, default=10, help="classes (default: 10)")
    parser.add_argument("--side", type=int, default=64, help="model input side (default: 64)")
    parser.add_argument("--master", default="local[2]", help="Spark master (default: local[2])")
    parser.add_argument("--batch-size", type=int, default=64, help="both engines (default: 64)")
    parser.add_argument(
        "--startup-count",
        type=int,
        default=64,
        help="images of the start-up runs (0: skip them; default: 64)",
    )
    parser.add_argument(
        "--images", type=Path, help="score this image folder instead of generating one"
    )
    args = parser.parse_args(argv)
    if args.images is not None and not any(args.images.rglob("*.png")):
        parser.error(f"--images {args.images}: no PNG file there (bench/make_images.py makes them)")
    with tempfile.TemporaryDirectory(prefix="bench-spark-") as directory:
        work = Path(directory)
        images = args.images
        if images is None:
            images = work / "images"
            start = time.perf_counter()
            make_images(images, args.count, args.size, args.classes)
            print(
                f"generated {args.count} images of {args.size}x{args.size} in {args.classes} "
                f"classes: {time.perf_counter() - start:.1f} s"
            )
        count = sum(1 for path in images.rglob("*.png"))
        tracking = register(work / "store", args.side, args.classes)
        startup: dict[str, float] = {}
        if args.startup_count:
            few = work / "few"
            few.mkdir()
            for path in sorted(images.rglob("*.png"))[: args.startup_count]:
                (few / path.name).symlink_to(path)
            startup["local"] = run_predict(few, work / "few.csv", tracking, args.batch_size, None)
            startup["spark"] = run_predict(
                few, work / "few.parquet", tracking, args.batch_size, args.master
            )
        seconds = {
            "local": run_predict(images, work / "local.csv", tracking, args.batch_size, None),
            "spark": run_predict(
                images, work / "spark.parquet", tracking, args.batch_size, args.master
            ),
        }
        rows, same, largest = agreement(work / "local.csv", work / "spark.parquet")
    print(
        f"\n{count} files of {args.size}x{args.size}, model {args.side}x{args.side}x3, batch "
        f"{args.batch_size}, {os.cpu_count()} cores"
    )
    header = f"{'engine':<22} {'wall s':>8} {'images/s':>9} {'start-up s':>11} {'steady img/s':>13}"
    print(header)
    print("-" * len(header))
    rates = {}
    for engine, elapsed in seconds.items():
        label = "pipeline predict" if engine == "local" else f"spark {args.master}"
        rates[engine] = count / elapsed
        steady = ""
        fixed = ""
        if engine in startup and elapsed > startup[engine]:
            fixed = f"{startup[engine]:.1f}"
            steady = f"{(count - args.startup_count) / (elapsed - startup[engine]):.1f}"
        print(f"{label:<22} {elapsed:>8.1f} {rates[engine]:>9.1f} {fixed:>11} {steady:>13}")
    print(f"\nspark / local images/s: {rates['spark'] / rates['local']:.2f}")
    print(
        f"agreement: {same}/{rows} rows with the same predicted class, largest probability "
        f"difference {largest:.2e}"
    )


if __name__ == "__main__":
    main()
