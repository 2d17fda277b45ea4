"""The `pipeline` command: verbs that run outside the DVC stages.

    pipeline deps            each stage's code dependencies, derived from its imports
    pipeline deps --check    exit 1, naming the stage and file, where dvc.yaml disagrees

`python -m pipeline ...` is the same command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.entry import run_entry
from pipeline.errors import PipelineError


def deps(args: argparse.Namespace) -> int:
    """Print, or check, the package modules each stage of dvc.yaml must list as deps."""
    from pipeline.wiring import check_code_deps, import_closure, load_stages

    root = args.root.resolve()
    if not (root / "dvc.yaml").is_file():
        raise PipelineError(f"{root} has no dvc.yaml: run from the project root, or pass --root")
    if not args.check:
        for stage in load_stages(root):
            print(f"{stage.name}:")
            for path in sorted(import_closure(stage.module, root)):
                print(f"  - {path}")
        return 0
    problems = 0
    for report in check_code_deps(root):
        for path in report.missing:
            print(f"{report.stage}: imports {path}, which dvc.yaml does not list: add it")
        for path in report.unused:
            print(f"{report.stage}: lists {path}, which it never imports: remove it")
        problems += len(report.missing) + len(report.unused)
    if problems:
        print(f"{problems} problem(s) in dvc.yaml's code deps", file=sys.stderr)
        return 1
    print("dvc.yaml lists exactly the code each stage imports")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    deps_parser = verbs.add_parser("deps", help="each stage's code dependencies, from the code")
    deps_parser.add_argument("--check", action="store_true", help="compare them with dvc.yaml")
    deps_parser.add_argument("--root", type=Path, default=Path("."), help="the project root")
    deps_parser.set_defaults(run=deps)
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def entry_point() -> None:
    """The console script `pipeline`."""
    run_entry(main, "pipeline")
