"""Time the Great Expectations gate on CIFAR-10-shaped data: 60,000 generated 32x32x3 uint8
images split 50,000 / 5,000 / 5,000 over 10 classes, written as a sharded store (as the split
stage writes data/prepared) and read back a batch at a time, with Data Docs written.

Prints the time and its ratio to the 60 s budget (ratio <= 1.0 meets it), the time of each
part, and the peak of what the per-image table allocates while it reads the images (traced by
tracemalloc, in a run of its own, so the timings are untraced) against the splits' uint8
bytes. Never asserts.

    python bench/bench_validate.py
"""

from __future__ import annotations

import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.store import SplitReader, open_splits, write_store_from_arrays  # noqa: E402
from pipeline.validation.gate import run_gate  # noqa: E402
from pipeline.validation.profile import build_image_table, count_near_duplicates  # noqa: E402
from pipeline.validation.suites import GateSettings  # noqa: E402

BUDGET_S = 60.0
SIZES = {"train": 50_000, "val": 5_000, "test": 5_000}


def write_splits(root: Path, seed: int = 0) -> dict[str, SplitReader]:
    """Write the generated splits as a store under `root` and open it (the arrays that were
    written are freed on return: the gate reads the store)."""
    rng = np.random.default_rng(seed)
    classes = [f"class_{i}" for i in range(10)]
    arrays = {
        name: (
            rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8),
            np.tile(np.arange(10, dtype=np.int64), count // 10),
        )
        for name, count in SIZES.items()
    }
    write_store_from_arrays(root, arrays, classes)
    return open_splits(root)


def main() -> int:
    total = sum(SIZES.values())
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        splits = write_splits(Path(scratch) / "prepared")
        write_s = time.perf_counter() - start
        settings = GateSettings(
            image_shape=(32, 32, 3),
            class_names=splits["train"].classes,
            expected_fractions={name: count / total for name, count in SIZES.items()},
        )
        start = time.perf_counter()
        table = build_image_table(splits)
        table_s = time.perf_counter() - start
        start = time.perf_counter()
        count_near_duplicates(table, settings.near_duplicate_distance)
        near_s = time.perf_counter() - start
        del table
        start = time.perf_counter()
        result = run_gate(splits, settings, docs_dir=Path(scratch) / "docs")
        gate_s = time.perf_counter() - start
        tracemalloc.start()
        build_image_table(splits)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        image_bytes = sum(split.nbytes for split in splits.values())
    print(f"store written ({len(splits)} splits, 60,000 images)     {write_s:6.1f} s")
    print(f"per-image table (stats, dHash, stored hashes) {table_s:6.1f} s")
    print(f"near-duplicate search (dHash Hamming)         {near_s:6.1f} s")
    print(
        f"whole gate on {total} images (passed={result.passed})  {gate_s:6.1f} s  "
        f"budget {BUDGET_S:.0f} s  ratio {gate_s / BUDGET_S:.2f}"
    )
    print(
        f"per-image table's peak allocations {peak / 2**20:.1f} MiB for "
        f"{image_bytes / 2**20:.1f} MiB of images ({peak / image_bytes:.2f} x)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
