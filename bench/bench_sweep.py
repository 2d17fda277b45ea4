"""Time a scratch-only experiment, `dvc exp run -S train.scratch.epochs=6`, after a baseline
`dvc repro` with the default params on the bundled digits, in a fresh copy of the project.

Prints the stages the experiment ran, its time and the ratio to the budget (ratio <= 1.0 meets
it). Never asserts. Runs on any commit of the project, so the same command measures before and
after a change (`git worktree add /tmp/before <rev>` and run it there too).

    python bench/bench_sweep.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.project import dvc, make_project_copy  # noqa: E402

BUDGET_S = 120.0
SWEEP = ("exp", "run", "-S", "train.scratch.epochs=6")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as directory:
        root = Path(directory)
        env = make_project_copy(root, edit=lambda params: params)  # the default params
        start = time.perf_counter()
        baseline = dvc(root, env, "repro", timeout=3600)
        baseline_seconds = time.perf_counter() - start
        if baseline.returncode != 0:
            print(baseline.stdout[-3000:], baseline.stderr[-3000:], sep="\n")
            return 1
        start = time.perf_counter()
        sweep = dvc(root, env, *SWEEP, timeout=3600)
        seconds = time.perf_counter() - start
        if sweep.returncode != 0:
            print(sweep.stdout[-3000:], sweep.stderr[-3000:], sep="\n")
            return 1
    stages = [line.split("'")[1] for line in sweep.stdout.splitlines() if "Running stage" in line]
    print(f"baseline dvc repro          {baseline_seconds:7.1f} s")
    print(f"stages the experiment ran   {', '.join(stages)}")
    print(
        f"scratch-only dvc exp run    {seconds:7.1f} s  budget {BUDGET_S:5.0f} s  "
        f"ratio {seconds / BUDGET_S:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
