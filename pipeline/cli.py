"""The `pipeline` command: verbs that run outside the DVC stages.

    pipeline retrain         one retraining cycle: lock, new data?, dvc repro, promotion gate
    pipeline retrain --force retrain even when the data has not changed
    pipeline sync-mlflow     log to MLflow what a lost tracking server missed
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

    root = _project_root(args.root)
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


def retrain(args: argparse.Namespace) -> int:
    """One retraining cycle; 75 when another cycle holds the lock."""
    from pipeline.retrain import LOCK_HELD_STATUS, RECORD_FILE, LockHeld, run_cycle

    root = _project_root(args.root)
    try:
        record = run_cycle(root, force=args.force)
    except LockHeld as held:
        print(f"pipeline retrain: {held}", file=sys.stderr)
        return LOCK_HELD_STATUS
    if record.outcome == "no new data":
        print(f"no new data: {record.data['summary']}; nothing retrained (--force retrains)")
    else:
        decision = record.decision or {}
        print(
            f"retrained on {record.data['summary']}: {record.outcome} "
            f"({decision.get('registered_model')} version "
            f"{decision.get('challenger', {}).get('version')}); see {RECORD_FILE}"
        )
    return 0


def sync_mlflow(args: argparse.Namespace) -> int:
    """Log the runs (and evaluations) a lost tracking server missed."""
    from pipeline.tracking.server import check_tracking_server, tracking_uri
    from pipeline.wiring import project_paths

    root = _project_root(args.root)
    uri = tracking_uri(root)
    check_tracking_server(uri)
    from pipeline.tracking.sync import sync_runs

    outcomes = sync_runs(root, project_paths(root))
    if not outcomes:
        print("no trained model to sync: run `dvc repro` first")
    for outcome in outcomes:
        print(f"{outcome.strategy}: {'; '.join(outcome.actions)} (run {outcome.run_id})")
    return 0


def _project_root(root: Path) -> Path:
    root = root.resolve()
    if not (root / "dvc.yaml").is_file():
        raise PipelineError(f"{root} has no dvc.yaml: run from the project root, or pass --root")
    return root


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.split("\n\n")[0])
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    deps_parser = verbs.add_parser("deps", help="each stage's code dependencies, from the code")
    deps_parser.add_argument("--check", action="store_true", help="compare them with dvc.yaml")
    deps_parser.add_argument("--root", type=Path, default=Path("."), help="the project root")
    deps_parser.set_defaults(run=deps)
    retrain_parser = verbs.add_parser(
        "retrain", help="one retraining cycle (for cron, systemd timers, CI schedules)"
    )
    retrain_parser.add_argument(
        "--force", action="store_true", help="retrain even when the data has not changed"
    )
    retrain_parser.add_argument("--root", type=Path, default=Path("."), help="the project root")
    retrain_parser.set_defaults(run=retrain)
    sync_parser = verbs.add_parser(
        "sync-mlflow", help="log to MLflow the runs a lost tracking server missed"
    )
    sync_parser.add_argument("--root", type=Path, default=Path("."), help="the project root")
    sync_parser.set_defaults(run=sync_mlflow)
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def entry_point() -> None:
    """The console script `pipeline`."""
    run_entry(main, "pipeline")
