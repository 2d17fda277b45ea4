"""The `pipeline` command: verbs that run outside the DVC stages.

    pipeline predict PATH... classify image files and folders with the champion (or --model)
    pipeline retrain         one retraining cycle: lock, new data?, dvc repro, promotion gate
    pipeline retrain --force retrain even when the data has not changed
    pipeline sync-mlflow     log to MLflow what a lost tracking server missed
    pipeline deps            each stage's code dependencies, derived from its imports
    pipeline deps --check    exit 1, naming the stage and file, where dvc.yaml disagrees

`python -m pipeline ...` is the same command.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from pipeline.entry import run_entry
from pipeline.errors import PipelineError

logger = logging.getLogger("pipeline.cli")

_DEFAULT_PATHS = {
    "models": "models",
    "metrics": "reports/metrics.json",
}


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
    from pipeline.retraining.cycle import RECORD_FILE, run_cycle
    from pipeline.retraining.lock import LOCK_HELD_STATUS, LockHeld

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


def predict(args: argparse.Namespace) -> int:
    """Classify image files and folders; write one CSV row per file."""
    from pipeline.prediction import choice, results
    from pipeline.prediction.files import find_images

    # Every path is checked before a model loads: a typo fails in a second, not after Keras.
    files = find_images(args.paths)
    root = args.root.resolve()
    # Quiet what can be quieted of TensorFlow's C++ start-up lines, as the stages do.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from pipeline.config import load_config
    from pipeline.prediction.classifier import load_classifier
    from pipeline.store import atomic_write
    from pipeline.tracking.server import limit_http_retries, tracking_uri
    from pipeline.wiring import project_paths

    config = load_config(root / "params.yaml") if (root / "params.yaml").is_file() else None
    paths = project_paths(root) if (root / "dvc.yaml").is_file() else _DEFAULT_PATHS
    store = tracking_uri(root)
    limit_http_retries()

    def champion() -> str | None:
        if config is None:
            return None
        name = config.mlflow.registered_model_name(config.data.dataset)
        return choice.find_champion(store, name)

    chosen = choice.choose_model(
        args.model, champion, root / paths["metrics"], root / paths["models"]
    )
    if choice.is_model_uri(chosen.source):
        choice.use_tracking_store(store, chosen.source)
    classifier = load_classifier(chosen.source)
    height, width, channels = classifier.image_shape
    logger.info(
        "predicting %d file(s) with %s (%s): %d classes, images %dx%dx%d",
        len(files),
        classifier.source,
        chosen.reason,
        len(classifier.classes),
        height,
        width,
        channels,
    )
    resize = config.data.resize if config is not None else "stretch"
    from tqdm.auto import tqdm

    with tqdm(
        total=len(files),
        unit="img",
        desc="predicting",
        disable=len(files) <= args.batch_size,
        file=sys.stderr,
    ) as bar:
        predictions = results.predict_files(classifier, files, resize, args.batch_size, bar.update)
    if args.out is None:
        results.write_predictions(predictions, classifier.classes, sys.stdout)
    else:
        with atomic_write(args.out) as stream:
            results.write_predictions(predictions, classifier.classes, stream)
        logger.info("wrote %d row(s) to %s", len(predictions), args.out)
    unreadable = [item for item in predictions if item.error is not None]
    if unreadable:
        logger.warning(
            "%d file(s) could not be read, e.g. %s: %s (their rows say why)",
            len(unreadable),
            unreadable[0].path,
            unreadable[0].error,
        )
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _project_root(root: Path) -> Path:
    root = root.resolve()
    if not (root / "dvc.yaml").is_file():
        raise PipelineError(f"{root} has no dvc.yaml: run from the project root, or pass --root")
    return root


# Descriptions are wrapped to the width of the hand-wrapped epilogs.
_WIDTH = 92

_PREDICT_EPILOG = """\
The model: --model when given; else models:/<registered name>@champion when the tracking store
(MLFLOW_TRACKING_URI, else mlflow.db in the project) has a champion; else the best strategy's
models/<strategy>/model.keras by test_accuracy in reports/metrics.json. A log line (stderr)
names the model used. A .keras model answers in the class names of the classes.json beside
it (training writes it); a registered model carries its own.

Each file is decoded as the split stage decodes images (EXIF orientation, data.resize) to the
size and channels the model takes. The CSV has one row per file: path, predicted_class,
probability; with more than 3 classes also top2, top2_probability, top3, top3_probability;
and error, which says why a file could not be read (the run goes on).

examples:
  pipeline predict photo.jpg
  pipeline predict new_images/ --out predictions.csv
  pipeline predict scans/ --model models/scratch/model.keras
  pipeline predict scans/ --model models:/digits-classifier@challenger
"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps line breaks in descriptions and epilogs, and each verb's help on its verb's line.

    argparse measures the verbs without the indent it lists them under, so a verb as long as
    `sync-mlflow` would push its help onto a line of its own.
    """

    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            longest = max(map(len, action.choices), default=0)
            indented = longest + self._current_indent + 2 * self._indent_increment
            self._action_max_length = max(self._action_max_length, indented)


def _add_verb(verbs, name: str, help_line: str, description: str, **options):
    """A verb: `help_line` for `pipeline --help`, `description` for `pipeline NAME --help`."""
    return verbs.add_parser(
        name,
        help=help_line,
        description=textwrap.fill(description, width=_WIDTH),
        formatter_class=_Formatter,
        **options,
    )


def _add_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        type=Path,
        default=Path("."),
        help="the project root, holding dvc.yaml and params.yaml (default: .)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description=__doc__.split("\n\n")[0],
        epilog="`pipeline VERB --help` describes a verb and its options.\n"
        "`python -m pipeline` is the same command.",
        formatter_class=_Formatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB", title="verbs")
    predict_parser = _add_verb(
        verbs,
        "predict",
        "classify image files and folders with a trained model",
        "Classify image files and folders (searched recursively) with a trained model, "
        "writing one CSV row per file.",
        epilog=_PREDICT_EPILOG,
    )
    predict_parser.add_argument(
        "paths", nargs="+", type=Path, metavar="PATH", help="an image file or a folder of them"
    )
    predict_parser.add_argument(
        "--model",
        metavar="MODEL",
        help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/<path>, "
        "a .keras file or a models/<strategy> folder (default: the champion, else the best "
        "evaluated strategy)",
    )
    predict_parser.add_argument(
        "--out", type=Path, metavar="FILE", help="write the CSV here (default: standard output)"
    )
    predict_parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        metavar="N",
        help="images decoded and predicted at a time (default: 64)",
    )
    _add_root(predict_parser)
    predict_parser.set_defaults(run=predict)

    retrain_parser = _add_verb(
        verbs,
        "retrain",
        "one retraining cycle (for cron, timers, CI schedules)",
        "One retraining cycle: take the lock, check for new data, run `dvc repro`, and move "
        "the champion only if the promotion gate passes. Exits 75 when another cycle holds "
        "the lock.",
    )
    retrain_parser.add_argument(
        "--force", action="store_true", help="retrain even when the data has not changed"
    )
    _add_root(retrain_parser)
    retrain_parser.set_defaults(run=retrain)

    sync_parser = _add_verb(
        verbs,
        "sync-mlflow",
        "log to MLflow the runs a lost tracking server missed",
        "Log to the tracking store (MLFLOW_TRACKING_URI, else mlflow.db) the training runs and "
        "evaluations that were recorded while it could not be reached.",
    )
    _add_root(sync_parser)
    sync_parser.set_defaults(run=sync_mlflow)

    deps_parser = _add_verb(
        verbs,
        "deps",
        "each stage's code dependencies, derived from its imports",
        "Print the package modules each stage of dvc.yaml imports (directly or not), which "
        "its deps must list; with --check, compare them with dvc.yaml.",
    )
    deps_parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1, naming the stage and file, where dvc.yaml disagrees",
    )
    _add_root(deps_parser)
    deps_parser.set_defaults(run=deps)
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def entry_point() -> None:
    """The console script `pipeline`."""
    run_entry(main, "pipeline")
