"""Synthetic labelled RGB images, as an image folder: OUT/<class>/<class>_<index>.png.

The benches and the GPU run need many images of a real size without downloading a dataset.
Each class is a family of coloured stripes: its own hue and its own stripe angle, so a small
convnet (or VGG16 features) tells the classes apart; each image draws its stripe period, phase,
brightness and light gradient from its own seed, so no two images are alike. Image `i` is in class
`i % classes` and depends only on (seed, i): the same arguments give byte-identical files, on
any number of processes. PNGs are written with fast compression (level 1), in parallel.

    python bench/make_images.py OUT --count 20000 --size 224 --classes 10
"""

from __future__ import annotations

import argparse
import colorsys
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

CHUNK = 256
"""Images one worker task writes."""


def class_name(label: int) -> str:
    return f"class_{label:02d}"


def image_path(out: Path, index: int, classes: int) -> Path:
    label = index % classes
    return out / class_name(label) / f"{class_name(label)}_{index:06d}.png"


def render(index: int, size: int, classes: int, seed: int) -> np.ndarray:
    """Image `index`, a (size, size, 3) uint8 array: its class's hue and stripe angle, its own
    period, phase, brightness and light gradient."""
    label = index % classes
    rng = np.random.default_rng([seed, index])
    angle = np.pi * label / classes + rng.normal(0.0, 0.05)
    period = size * rng.uniform(0.08, 0.2)
    phase = rng.uniform(0.0, 2.0 * np.pi)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    wave = np.sin((x * np.cos(angle) + y * np.sin(angle)) * (2.0 * np.pi / period) + phase)
    stripes = (wave > 0).astype(np.float32)[..., None]
    hue = (label / classes + rng.normal(0.0, 0.01)) % 1.0
    colour = np.asarray(colorsys.hsv_to_rgb(hue, 0.85, rng.uniform(0.7, 1.0)), np.float32) * 255
    background = rng.uniform(10.0, 60.0)
    # A smooth, random light gradient instead of per-pixel noise, which would make every PNG
    # several times larger and slower to write and read.
    light = 1.0 + rng.uniform(-0.25, 0.25) * (x - size / 2) / size
    light += rng.uniform(-0.25, 0.25) * (y - size / 2) / size
    pixels = (stripes * colour + (1.0 - stripes) * background) * light[..., None]
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_chunk(out: Path, start: int, stop: int, size: int, classes: int, seed: int) -> int:
    for index in range(start, stop):
        pixels = render(index, size, classes, seed)
        Image.fromarray(pixels).save(image_path(out, index, classes), compress_level=1)
    return stop - start


def make_images(
    out: Path, count: int, size: int, classes: int, seed: int = 0, workers: int | None = None
) -> list[Path]:
    """Write `count` images into `out` (one folder per class); return their paths, in order."""
    for label in range(classes):
        (out / class_name(label)).mkdir(parents=True, exist_ok=True)
    chunks = [(start, min(start + CHUNK, count)) for start in range(0, count, CHUNK)]
    workers = workers or os.cpu_count() or 1
    if workers == 1 or len(chunks) == 1:
        for start, stop in chunks:
            write_chunk(out, start, stop, size, classes, seed)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [
                pool.submit(write_chunk, out, start, stop, size, classes, seed)
                for start, stop in chunks
            ]
            for future in futures:
                future.result()
    return [image_path(out, index, classes) for index in range(count)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="the image folder to write")
    parser.add_argument("--count", type=int, default=20_000, help="images (default: 20000)")
    parser.add_argument("--size", type=int, default=224, help="side in pixels (default: 224)")
    parser.add_argument("--classes", type=int, default=10, help="classes (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    args = parser.parse_args(argv)
    if args.count < 1 or args.size < 8 or args.classes < 2:
        parser.error("--count must be >= 1, --size >= 8 and --classes >= 2")
    start = time.perf_counter()
    make_images(args.out, args.count, args.size, args.classes, args.seed, args.workers)
    elapsed = time.perf_counter() - start
    print(
        f"wrote {args.count} images of {args.size}x{args.size} in {args.classes} classes to "
        f"{args.out} in {elapsed:.1f} s ({args.count / elapsed:,.0f} images/s)",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
