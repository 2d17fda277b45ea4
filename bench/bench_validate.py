"""Time the Great Expectations gate on CIFAR-10-shaped data: 60,000 generated 32x32x3 uint8
images split 50,000 / 5,000 / 5,000 over 10 classes, with Data Docs written.

Prints the time and its ratio to the 60 s budget (ratio <= 1.0 meets it), and the time of each
part. Never asserts.

    python bench/bench_validate.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.store import Split  # noqa: E402
from pipeline.validation.gate import run_gate  # noqa: E402
from pipeline.validation.profile import build_image_table, count_near_duplicates  # noqa: E402
from pipeline.validation.suites import GateSettings  # noqa: E402

BUDGET_S = 60.0
SIZES = {"train": 50_000, "val": 5_000, "test": 5_000}


def make_splits(seed: int = 0) -> dict[str, Split]:
    rng = np.random.default_rng(seed)
    classes = [f"class_{i}" for i in range(10)]
    return {
        name: Split(
            rng.integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8),
            np.tile(np.arange(10, dtype=np.int64), count // 10),
            classes,
        )
        for name, count in SIZES.items()
    }


def main() -> int:
    splits = make_splits()
    total = sum(SIZES.values())
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
    with tempfile.TemporaryDirectory() as docs:
        start = time.perf_counter()
        result = run_gate(splits, settings, docs_dir=Path(docs))
        gate_s = time.perf_counter() - start
    print(f"per-image table (stats, dHash, content hash)  {table_s:6.1f} s")
    print(f"near-duplicate search (dHash Hamming)         {near_s:6.1f} s")
    print(
        f"whole gate on {total} images (passed={result.passed})  {gate_s:6.1f} s  "
        f"budget {BUDGET_S:.0f} s  ratio {gate_s / BUDGET_S:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
