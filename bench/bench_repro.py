"""Time `dvc repro` on the bundled digits with the default params, in a fresh copy of the
project: once from an empty cache, then once with nothing changed.

Prints each time and its ratio to the budget (ratio <= 1.0 meets it), each stage's wall time
(from the moment DVC prints "Running stage '...'" to the next stage's, as the lines stream),
and how many lines `dvc repro` printed. Never asserts: timings belong here, not in the test
suite.

    python bench/bench_repro.py [--code DIR] [--code DIR ...] [--log FILE]

`--code DIR` runs another checkout's project (its pipeline/, dvc.yaml and params.yaml) the same
way; given twice, both run one after the other in one sitting and the table puts them side by
side (`git worktree add /tmp/before <commit>`, then
`python bench/bench_repro.py --code /tmp/before --code .`).

`--rounds N` measures the checkouts N times over, alternating (A B A B ...), and ends with each
checkout's fastest and median full repro and, round by round, each one's ratio to the first
checkout's. A shared 2-core VM's speed drifts by 10 to 30 % within minutes: the paired ratios
say more than any single time.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import tests.project as project  # noqa: E402

ALL_PROJECT_FILES = project.PROJECT_FILES

FULL, NO_OP = "full repro (empty cache)", "no-op repro"
BUDGETS_S = {FULL: 180.0, NO_OP: 10.0}
RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)'")


def run_repro(root: Path, env: dict[str, str]) -> dict:
    """`dvc repro` in `root`, its output (stdout and stderr together) read line by line as it
    comes: the total seconds, each stage's seconds (from its "Running stage" line to the next
    one, or to the end), the lines printed, the exit status and the output."""
    start = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=root,
        env={**env, "PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    stages: dict[str, float] = {}
    current, since, output = None, start, []
    for line in process.stdout:
        now = time.perf_counter()
        output.append(line)
        match = RUNNING.match(line)
        if match:
            if current is not None:
                stages[current] = now - since
            current, since = match["stage"], now
    code = process.wait()
    end = time.perf_counter()
    if current is not None:
        stages[current] = end - since
    return {
        "seconds": end - start,
        "stages": stages,
        "lines": len(output),
        "returncode": code,
        "output": "".join(output),
    }


def bench(code: Path, log: Path | None) -> dict:
    """Both repros of `code`'s project in a fresh copy; the full repro's output goes to `log`
    when given."""
    # make_project_copy copies from tests.project.PROJECT_ROOT: point it at the checkout.
    project.PROJECT_ROOT = code
    # An older checkout lacks files that this one's copy list names (tools/dvc_plots/...).
    project.PROJECT_FILES = tuple(name for name in ALL_PROJECT_FILES if (code / name).exists())
    with tempfile.TemporaryDirectory(prefix="bench-repro-") as directory:
        root = Path(directory)
        env = project.make_project_copy(root, edit=lambda params: params)  # the default params
        env["PYTHONPATH"] = str(root)
        runs = {}
        for label in BUDGETS_S:
            runs[label] = run_repro(root, env)
            if log is not None and label == FULL:
                log.write_text(runs[label]["output"])
            if runs[label]["returncode"] != 0:
                print(runs[label]["output"][-3000:])
                raise SystemExit(f"{code}: dvc repro failed ({label})")
        metrics = json.loads((root / "reports" / "metrics.json").read_text())
    return {"runs": runs, "metrics": metrics}


def print_results(measured: list[tuple[Path, dict]], rounds: int = 1) -> None:
    """One column per measurement: the totals against their budgets (ratio <= 1.0 meets it),
    the lines the full repro printed, each stage's seconds and the strategies' test
    accuracies; over several rounds, each checkout's fastest and median full repro and the
    round-by-round ratios to the first checkout."""
    results = [result for _, result in measured]
    full = [result["runs"][FULL] for result in results]
    codes = list(dict.fromkeys(code for code, _ in measured))
    names = [
        f"{_commit(code)} {code.name}"[:17] + (f" #{i // len(codes) + 1}" if rounds > 1 else "")
        for i, (code, _) in enumerate(measured)
    ]
    print(f"\n{'':40s}" + "".join(f"{name:>22s}" for name in names))
    for label, budget in BUDGETS_S.items():
        seconds = [result["runs"][label]["seconds"] for result in results]
        cells = "".join(f"{f'{value:.1f} s ({value / budget:.2f})':>22s}" for value in seconds)
        print(f"{f'{label} (budget {budget:.0f} s)':40s}{cells}")
    print(
        f"{'lines printed by the full repro':40s}" + "".join(f"{run['lines']:22d}" for run in full)
    )
    print("\nfull repro, seconds per stage:")
    for stage in dict.fromkeys(stage for run in full for stage in run["stages"]):
        cells = "".join(f"{run['stages'].get(stage, float('nan')):22.1f}" for run in full)
        print(f"  {stage:32s}{cells}")
    print("\ntest accuracy (backbone weights):")
    for strategy in results[0]["metrics"]:
        cells = "".join(
            f"{_accuracy(result['metrics'].get(strategy, {})):>22s}" for result in results
        )
        print(f"  {strategy:32s}{cells}")
    if rounds > 1:
        _print_rounds(measured, codes)


def _print_rounds(measured: list[tuple[Path, dict]], codes: list[Path]) -> None:
    seconds = {
        code: [result["runs"][FULL]["seconds"] for each, result in measured if each == code]
        for code in codes
    }
    print(f"\nfull repro over {len(seconds[codes[0]])} rounds (fastest, median):")
    for code in codes:
        values = sorted(seconds[code])
        median = statistics.median(values)
        print(f"  {_commit(code)} {code.name:24s}{values[0]:8.1f} s{median:8.1f} s")
    for code in codes[1:]:
        pairs = zip(seconds[code], seconds[codes[0]], strict=True)
        ratios = [after / before for after, before in pairs]
        print(
            f"  {_commit(code)} {code.name} / {codes[0].name}, round by round: "
            + ", ".join(f"{ratio:.2f}" for ratio in ratios)
        )


def _accuracy(values: dict) -> str:
    if "test_accuracy" not in values:
        return "-"
    return f"{values['test_accuracy']:.4f} ({values.get('backbone_weights', '?')})"


def _commit(code: Path) -> str:
    completed = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return completed.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--code",
        type=Path,
        action="append",
        help="a checkout whose project is measured (repeat to compare; default: this one)",
    )
    parser.add_argument(
        "--log", type=Path, help="write each full repro's output here (FILE.0.log, FILE.1.log)"
    )
    parser.add_argument(
        "--rounds", type=int, default=1, help="measure the checkouts this many times, alternating"
    )
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    codes = [code.resolve() for code in (args.code or [ROOT])]
    measured = []
    for number, code in enumerate(codes * args.rounds):
        print(f"measuring {code} (git {_commit(code)})", flush=True)
        log = args.log.with_suffix(f".{number}{args.log.suffix}") if args.log else None
        measured.append((code, bench(code, log)))
    print_results(measured, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
