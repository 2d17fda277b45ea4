"""Time `dvc repro` on the bundled digits with the default params, in a fresh copy of the
project: once from an empty cache, then once with nothing changed.

Prints each time and its ratio to the budget (ratio <= 1.0 meets it). Never asserts: timings
belong here, not in the test suite.

    python bench/bench_repro.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.project import dvc, make_project_copy  # noqa: E402

BUDGETS_S = {"full repro (empty cache)": 300.0, "no-op repro": 10.0}


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as directory:
        root = Path(directory)
        env = make_project_copy(root, edit=lambda params: params)  # the default params
        timings = {}
        for label in BUDGETS_S:
            start = time.perf_counter()
            result = dvc(root, env, "repro", timeout=3600)
            timings[label] = time.perf_counter() - start
            if result.returncode != 0:
                print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
                return 1
        metrics = json.loads((root / "reports" / "metrics.json").read_text())
    for label, seconds in timings.items():
        print(
            f"{label:28s} {seconds:7.1f} s  budget {BUDGETS_S[label]:5.0f} s  "
            f"ratio {seconds / BUDGETS_S[label]:.2f}"
        )
    for strategy, values in metrics.items():
        print(
            f"{strategy:28s} test_accuracy {values['test_accuracy']:.4f}  "
            f"weights {values['backbone_weights']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
