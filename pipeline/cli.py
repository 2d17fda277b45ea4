"""The `pipeline` command: verbs that run outside the DVC stages.

    pipeline predict PATH... classify image files and folders with the champion (or --model)
    pipeline predict --engine spark SOURCE --out F.parquet   the same, on a Spark cluster
    pipeline tune --trials N search params.yaml's tune.space with Optuna over DVC's queue
    pipeline serve           serve the champion over HTTP, following the alias; record answers
    pipeline monitor         has served traffic drifted from the champion's test split?
    pipeline retrain         one retraining cycle: lock, new data or drift?, dvc repro, gate
    pipeline retrain --force retrain even when the data has not changed
    pipeline rollback        move the champion back to the version it replaced
    pipeline card [VERSION]  print a version's model card (default: the champion's)
    pipeline sync-mlflow     log to MLflow what a lost tracking server missed
    pipeline deps            each stage's code dependencies, derived from its imports
    pipeline deps --check    exit 1, naming the stage and file, where dvc.yaml disagrees

`python -m pipeline ...` is the same command.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path

from pipeline.entry import run_entry
from pipeline.errors import PipelineError

logger = logging.getLogger("pipeline.cli")

_DEFAULT_PATHS = {"models": "models"}


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
        print(
            f"no new data: {record.data['summary']} and no drift verdict to act on; nothing "
            "retrained (--force retrains)"
        )
    elif record.outcome == "review queued":
        review = record.review or {}
        print(
            f"drift ({record.drift_report}) but no new labelled images: nothing retrained. "
            f"{review.get('images')} served images to label: {review.get('html')}; put them "
            "into the dataset's class folders and the next cycle retrains"
        )
    else:
        decision = record.decision or {}
        print(
            f"retrained ({', '.join(record.triggers)}) on {record.data['summary']}: "
            f"{record.outcome} "
            f"({decision.get('registered_model')} version "
            f"{decision.get('challenger', {}).get('version')}); see {RECORD_FILE}"
        )
    return 0


def _project_config(root: Path):
    from pipeline.config import load_config

    return load_config(root / "params.yaml")


def _registered_model(args: argparse.Namespace, config) -> str:
    return args.model_name or config.mlflow.registered_model_name(config.data.dataset)


def _tracking(root: Path) -> str:
    """The project's tracking URI, checked to answer (a clear error in seconds otherwise)."""
    from pipeline.tracking.server import check_tracking_server, limit_http_retries, tracking_uri

    limit_http_retries()
    uri = tracking_uri(root)
    check_tracking_server(uri)
    import mlflow

    mlflow.set_tracking_uri(uri)
    return uri


def serve(args: argparse.Namespace) -> int:
    """Serve the champion over HTTP, following the alias, recording every answer."""
    from pipeline.serving.server import ServeOptions
    from pipeline.serving.server import serve as run_server

    root = _project_root(args.root)
    config = _project_config(root)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    predictions = None if args.no_record else str(_under(root, args.predictions_dir))
    options = ServeOptions(
        registered_model=_registered_model(args, config),
        tracking_uri=_tracking(root),
        host=args.host,
        port=args.port,
        workers=args.workers,
        poll_seconds=args.poll,
        alias=args.alias,
        predictions_dir=predictions,
        keep_images=args.keep_images,
        flush_seconds=args.flush_seconds,
        backend=args.backend or config.serve.backend,
        **_serving_limits(args),
    )
    run_server(options)
    return 0


def _serving_limits(args: argparse.Namespace) -> dict:
    """The request limits given on the command line, as ServeOptions fields; a limit not given
    keeps ServeOptions' own default (one number, in one place)."""
    limits = {}
    if args.max_body_mb is not None:
        limits["max_body_bytes"] = max(1, int(args.max_body_mb * (1 << 20)))
    if args.max_json_depth is not None:
        limits["max_json_depth"] = args.max_json_depth
    return limits


def export(args: argparse.Namespace) -> int:
    """Export a model to ONNX, TFLite or SavedModel, proven equal on the test split."""
    import tempfile

    from pipeline.export.formats import check_format

    # A combination no converter makes fails before a champion is looked up or downloaded.
    check_format(args.format, args.quantize)
    root = _project_root(args.root)
    config = _project_config(root)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from pipeline.export.exporter import export_model
    from pipeline.export.sources import resolve_source
    from pipeline.prediction import choice
    from pipeline.store import open_split
    from pipeline.tracking.server import limit_http_retries, tracking_uri
    from pipeline.wiring import project_paths

    paths = project_paths(root)
    prepared = _under(root, args.prepared)
    if not (prepared / "store.json").is_file():
        raise PipelineError(
            f"{prepared}: no prepared splits; an export is proven on the test split: run "
            "`dvc repro` (or `dvc pull`) first, or pass --prepared"
        )
    store = tracking_uri(root)
    limit_http_retries()

    def champion() -> str:
        return choice.find_champion(store, _registered_model(args, config))

    with tempfile.TemporaryDirectory(prefix="pipeline-export-") as download:
        source = resolve_source(
            args.model,
            root / paths["models"],
            Path(download),
            champion,
            lambda uri: choice.use_tracking_store(store, uri),
            resize=config.data.resize,
        )
        exported = export_model(
            source,
            args.format,
            args.quantize,
            open_split(prepared, "test"),
            open_split(prepared, "train"),
            _under(root, args.out),
            seed=config.data.seed,
        )
    parity = exported.parity
    print(f"{exported.folder}/: {source.uri} as {args.format} ({args.quantize})")
    print(
        f"  parity on {parity.images} test images ({parity.runtime} {parity.runtime_version}): "
        f"top-1 agreement {parity.top1_agreement:.4f}, max |probability difference| "
        f"{parity.max_abs_diff:.2g}, accuracy {parity.export_accuracy:.4f} (Keras "
        f"{parity.keras_accuracy:.4f}), size {parity.size_ratio:.2f}x the Keras file"
    )
    return 0


def monitor(args: argparse.Namespace) -> int:
    """One drift check of recorded traffic; exit 0 whether it drifted or not."""
    from pipeline.monitoring.monitor import Window, parse_duration, run_monitor

    root = _project_root(args.root)
    config = _project_config(root)
    try:
        last = parse_duration(args.last) if args.last is not None else None
    except ValueError as error:
        raise PipelineError(str(error)) from None
    if last is None and args.last_n is None:
        last = parse_duration("24h")
    _tracking(root)
    from pipeline import registry

    name = _registered_model(args, config)
    version = args.version
    if version is None:
        champion = registry.champion_version(name)
        if champion is None:
            raise PipelineError(
                f"{name} has no champion to monitor: pass --version, or promote one first"
            )
        version = str(champion.version)
    report = run_monitor(
        root,
        name,
        version,
        registry.monitoring_reference(name, version),
        _under(root, args.predictions_dir),
        Window(last, args.last_n),
        args.alpha,
        config.mlflow.experiment_name,
    )
    verdict = "DRIFT" if report["drift"] else "no drift"
    fired = f" ({', '.join(report['fired'])})" if report.get("fired") else ""
    print(
        f"{verdict}{fired}: {report['registered_model']} version {report['model_version']}, "
        f"{report['window']}, {report['records']} images; {report['reason']}"
    )
    print(f"report: {report['report']}  page: {report['page']}")
    return 0


def rollback(args: argparse.Namespace) -> int:
    """Move the champion back to the version before it, recording why and who."""
    import getpass

    import mlflow

    from pipeline import registry
    from pipeline.tracking.runs import configure_tracking, create_run

    root = _project_root(args.root)
    config = _project_config(root)
    reason = args.reason.strip()
    if not reason:
        raise PipelineError("--reason is empty: say why the champion is rolled back")
    _tracking(root)
    name = _registered_model(args, config)
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    done = registry.roll_back_champion(name, reason, user, to=args.to)
    experiment_id = configure_tracking(root, config.mlflow.experiment_name)
    tags = {
        "pipeline.kind": "rollback",
        "registered_model": name,
        "from_version": done.from_version,
        "to_version": done.to_version,
        "reason": reason[: registry.MAX_TAG_TEXT],
        "user": user,
    }
    run_id = create_run(experiment_id, f"rollback-v{done.from_version}-to-v{done.to_version}", tags)
    with mlflow.start_run(run_id=run_id):
        mlflow.log_dict(done.to_dict(), "rollback.json")
    print(
        f"{name}: champion moved back from version {done.from_version} to version "
        f"{done.to_version} ({reason}); a `pipeline serve` follows within one poll. "
        f"Version {done.from_version} will not be promoted again. MLflow run {run_id}"
    )
    return 0


def card(args: argparse.Namespace) -> int:
    """Print a registered version's model card: its description, which the promote stage set."""
    from pipeline import registry

    root = _project_root(args.root)
    config = _project_config(root)
    _tracking(root)
    _, text = registry.model_card(_registered_model(args, config), args.which)
    print(text.rstrip("\n"))
    return 0


def _under(root: Path, path: Path) -> Path:
    return path if path.is_absolute() else root / path


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
    if args.engine == "spark":
        from pipeline.prediction.spark import predict_on_spark

        return predict_on_spark(args)
    if args.master is not None:
        raise PipelineError("--master is for --engine spark; drop it, or add --engine spark")
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

    def champion() -> str:
        if config is None:
            raise PipelineError(
                f"{root} has no params.yaml, so the registered model's name is unknown: run "
                "from the project root (or pass --root)"
            )
        name = config.mlflow.registered_model_name(config.data.dataset)
        return choice.find_champion(store, name)

    chosen = choice.choose_model(args.model, champion, root / paths["models"], paths["models"])
    if choice.is_model_uri(chosen.source):
        choice.use_tracking_store(store, chosen.source)
    classifier = load_classifier(chosen.source, trust_code=args.trust_code)
    # Every answer names its model: the registered version (an alias resolved), the strategy
    # folder asked for by name, or the source as given.
    model_name = chosen.name or classifier.source
    recorder = None
    if args.log:
        from pipeline.prediction.classifier import record_answers
        from pipeline.serving.recorder import PredictionRecorder

        recorder = PredictionRecorder(
            _under(root, args.predictions_dir), source="predict", keep_images=args.keep_images
        )
        recorder.start()
        classifier = record_answers(classifier, recorder)
    height, width, channels = classifier.image_shape
    logger.info(
        "predicting %d file(s) with %s (%s): %d classes, images %dx%dx%d",
        len(files),
        model_name,
        chosen.reason,
        len(classifier.classes),
        height,
        width,
        channels,
    )
    resize = config.data.resize if config is not None else "stretch"
    max_pixels = config.data.max_pixels if config is not None else None
    from tqdm.auto import tqdm

    with tqdm(
        total=len(files),
        unit="img",
        desc="predicting",
        disable=len(files) <= args.batch_size,
        file=sys.stderr,
    ) as bar:
        try:
            predictions = results.predict_files(
                classifier,
                files,
                resize,
                args.batch_size,
                bar.update,
                **({} if max_pixels is None else {"max_pixels": max_pixels}),
            )
        finally:
            if recorder is not None:
                recorder.close()
    if recorder is not None:
        logger.info(
            "recorded %d answer(s) under %s (%d dropped)",
            recorder.written,
            recorder.directory,
            recorder.dropped,
        )
    if args.out is None:
        results.write_predictions(predictions, classifier.classes, sys.stdout, model_name)
    else:
        with atomic_write(args.out) as stream:
            results.write_predictions(predictions, classifier.classes, stream, model_name)
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
The model: --model when given; else the version models:/<registered name>@champion points at
in the tracking store (MLFLOW_TRACKING_URI, else mlflow.db in the project). Without a champion
(no store, a server that does not answer, nothing promoted yet) predict fails saying why: a
local model answers only when named, --model scratch | feature_extraction | fine_tune for
models/<strategy>. A registered version loads only if its model file has the SHA-256 it was
registered with. A local MLflow model folder runs the code it holds: it needs --trust-code.
A .keras model answers in the class names of the classes.json beside it (training writes
it); a registered model carries its own.

Each file is decoded as the split stage decodes images (EXIF orientation, data.resize) to the
size and channels the model takes. The CSV has one row per file: path, predicted_class,
probability; with more than 3 classes also top2, top2_probability, top3, top3_probability;
error, which says why a file could not be read (the run goes on); and model, the model that
answered (models:/<name>/<version>, models/<strategy> or the path given). Cells that begin
with = + - @ are written with a leading ' so a spreadsheet shows them as text.

examples:
  pipeline predict photo.jpg
  pipeline predict new_images/ --out predictions.csv
  pipeline predict scans/ --model scratch
  pipeline predict scans/ --model models/scratch/model.keras
  pipeline predict scans/ --model models:/digits-classifier@challenger
  pipeline predict --engine spark scans/ --out predictions.parquet
  pipeline predict --engine spark --master spark://host:7077 'archive/**/*.jpg' --out p.parquet
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
        "paths",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="an image file or a folder of them; with --engine spark also a glob "
        "('scans/*.png') or a .parquet/.csv whose `path` column lists the files",
    )
    predict_parser.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="local: this process; spark: mlflow.pyfunc.spark_udf on a Spark cluster, writing "
        "Parquet (needs the spark extra: pip install -e '.[spark]') (default: local)",
    )
    predict_parser.add_argument(
        "--master",
        metavar="URL",
        help="with --engine spark: local[*], local[N] or spark://host:port (default: the "
        "session's, local[*] outside spark-submit)",
    )
    predict_parser.add_argument(
        "--model",
        metavar="MODEL",
        help="models:/<name>@<alias>, models:/<name>/<version>, runs:/<run id>/<path>, "
        "scratch | feature_extraction | fine_tune (models/<strategy>), a .keras file or a "
        "strategy's folder (default: the registry's champion, or an error saying why there is "
        "none)",
    )
    predict_parser.add_argument(
        "--trust-code",
        action="store_true",
        help="allow --model to be a local MLflow model folder, whose Python code loading runs",
    )
    predict_parser.add_argument(
        "--out",
        type=Path,
        metavar="FILE",
        help="write the CSV here (default: standard output); with --engine spark, the Parquet "
        "folder (required), replaced whole",
    )
    predict_parser.add_argument(
        "--batch-size",
        type=_positive_int,
        default=64,
        metavar="N",
        help="images decoded and predicted at a time (default: 64); with --engine spark, files "
        "per Arrow batch (at most the model's max_batch, 256)",
    )
    predict_parser.add_argument(
        "--log",
        action="store_true",
        help="record each answer as `pipeline serve` does, for `pipeline monitor`",
    )
    _add_predictions_dir(predict_parser, "with --log: where answers are recorded")
    predict_parser.add_argument(
        "--keep-images", action="store_true", help="with --log: keep each image too (PNG)"
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

    _add_operate_verbs(verbs)

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


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    if math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is at most 65535, got {value}")
    return value


def _add_model_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-name",
        metavar="NAME",
        help="the registered model (default: mlflow.registered_model in params.yaml, else "
        "<dataset>-classifier)",
    )


_PREDICTIONS_DIR = Path("monitoring/predictions")


def _add_predictions_dir(parser: argparse.ArgumentParser, what: str) -> None:
    """--predictions-dir, the one folder serve and predict --log write and monitor reads."""
    parser.add_argument(
        "--predictions-dir",
        type=Path,
        default=_PREDICTIONS_DIR,
        metavar="DIR",
        help=f"{what} (default: {_PREDICTIONS_DIR}/ in the project)",
    )


def _add_operate_verbs(verbs) -> None:
    """serve, monitor and rollback: the loop after promotion."""
    serve_parser = _add_verb(
        verbs,
        "serve",
        "serve the champion over HTTP; follows the alias, records answers",
        "Serve models:/<name>@champion with MLflow's scoring app on uvicorn (the same "
        "/invocations as `mlflow models serve`). The registry is polled: when the alias moves, "
        "the new version is loaded and warmed up beside the old one, then swapped in; a version "
        "that fails to load is never swapped in. Every answered image is recorded under "
        "--predictions-dir (Parquet, one folder per day). SIGINT or SIGTERM stops it cleanly.",
    )
    serve_parser.add_argument("--host", default="127.0.0.1", help="(default: 127.0.0.1)")
    serve_parser.add_argument("--port", type=_port, default=5001, help="(default: 5001)")
    serve_parser.add_argument(
        "--workers", type=_positive_int, default=1, metavar="N", help="processes (default: 1)"
    )
    serve_parser.add_argument(
        "--poll",
        type=_positive_float,
        default=10.0,
        metavar="SECONDS",
        help="how often the registry is asked where the alias points (default: 10)",
    )
    serve_parser.add_argument(
        "--alias", default="champion", help="the alias to follow (default: champion)"
    )
    serve_parser.add_argument(
        "--backend",
        choices=("keras", "onnx"),
        help="what answers: keras, or the version's ONNX export through onnxruntime (the same "
        "answers, faster; promote.exports must list onnx) (default: serve.backend in "
        "params.yaml, keras)",
    )
    _add_predictions_dir(serve_parser, "where answers are recorded")
    serve_parser.add_argument(
        "--keep-images",
        action="store_true",
        help="also keep each served image (as the model saw it, PNG); off by default, for privacy",
    )
    serve_parser.add_argument(
        "--no-record", action="store_true", help="record nothing (benchmarks, tests)"
    )
    serve_parser.add_argument(
        "--max-body-mb",
        type=_positive_float,
        metavar="MB",
        help="refuse a request body over this many MiB with 413, before parsing it (default: 64)",
    )
    serve_parser.add_argument(
        "--max-json-depth",
        type=_positive_int,
        metavar="N",
        help="refuse JSON nested deeper than this with 400 (default: the server's own limit)",
    )
    serve_parser.add_argument(
        "--flush-seconds",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="how often records are written; a SIGKILL loses at most this much (default: 2)",
    )
    _add_model_name(serve_parser)
    _add_root(serve_parser)
    serve_parser.set_defaults(run=serve)

    monitor_parser = _add_verb(
        verbs,
        "monitor",
        "has served traffic drifted from the champion's test split?",
        "Compare a window of recorded traffic with the champion's reference (its test split, "
        "stored at registration): predicted-class shift (chi-square), confidence shift "
        "(Kolmogorov-Smirnov) and embedding drift (MMD, permutation test), at --alpha split "
        "between them. Writes reports/monitoring/<window end>.json and .html and latest.json, "
        "and an MLflow run. Exits 0 either way: the JSON says drift true or false.",
    )
    window = monitor_parser.add_mutually_exclusive_group()
    window.add_argument("--last", metavar="DURATION", help="a period: 30m, 24h, 7d (default: 24h)")
    window.add_argument(
        "--last-n", type=_positive_int, metavar="N", help="the last N recorded images"
    )
    monitor_parser.add_argument(
        "--alpha",
        type=float,
        default=0.01,
        help="the chance of a false alarm per window, split between the tests (default: 0.01)",
    )
    monitor_parser.add_argument(
        "--version", help="the version whose traffic to judge (default: the champion)"
    )
    _add_predictions_dir(monitor_parser, "where the server recorded answers")
    _add_model_name(monitor_parser)
    _add_root(monitor_parser)
    monitor_parser.set_defaults(run=monitor)

    rollback_parser = _add_verb(
        verbs,
        "rollback",
        "move the champion back to the version it replaced",
        "Point champion back at the version that held it before (or --to VERSION), recording "
        "the reason, the user and the time on both versions and in an MLflow run. A server "
        "follows within one poll, and the gate never promotes the rolled-back model again.",
    )
    rollback_parser.add_argument("--reason", required=True, help="why, for the record")
    rollback_parser.add_argument("--to", metavar="VERSION", help="the version to serve")
    _add_model_name(rollback_parser)
    _add_root(rollback_parser)
    rollback_parser.set_defaults(run=rollback)

    _add_export_verb(verbs)
    _add_tune_verb(verbs)

    card_parser = _add_verb(
        verbs,
        "card",
        "print a registered version's model card",
        "Print the model card of a registered version: its description in the registry, which "
        "the promote stage generates from the records (data, training, figures, limits, "
        "lineage) and the MLflow UI shows on the version's page; model_card.md in the "
        "promotion's run holds the same text.",
    )
    card_parser.add_argument(
        "which",
        nargs="?",
        default="champion",
        metavar="VERSION",
        help="a version number, or an alias: champion, challenger (default: champion)",
    )
    card_parser.add_argument(
        "--model-name",
        "--model",
        dest="model_name",
        metavar="NAME",
        help="the registered model (default: mlflow.registered_model in params.yaml, else "
        "<dataset>-classifier)",
    )
    _add_root(card_parser)
    card_parser.set_defaults(run=card)


_EXPORT_EPILOG = """\
The export takes what the Keras model takes, uint8 pixels (batch, height, width, channels),
and answers its class probabilities: preprocessing and calibration travel inside. The folder
<out>/<format>[-<quantize>]/ holds the model (model.onnx, model.tflite or saved_model/),
signature.json (input, output, classes in label order, what the client still does: decode and
resize a file as the split stage does) and parity.json. Every test image is scored by the
format's own runtime (onnxruntime, LiteRT, TensorFlow), never Keras: a float export must give
the same class for every image and probabilities within 1e-4 (fp16: 1e-2); int8, calibrated
on training images, an accuracy at most 1 point lower. An export that misses is refused,
naming the figure, and the folder keeps the previous good export.

examples:
  pipeline export --format onnx
  pipeline export --format tflite --quantize int8 --model scratch
  pipeline export --format saved_model --model models:/digits-classifier/3 --out /tmp/exports
"""


def _add_export_verb(verbs) -> None:
    from pipeline.export.formats import FORMATS, QUANTIZATIONS

    parser = _add_verb(
        verbs,
        "export",
        "export a model to ONNX, TFLite or SavedModel, proven equal on the test split",
        "Export a model to ONNX, TFLite or SavedModel, quantized or not, and prove on the test "
        "split that the export answers as the Keras model does.",
        epilog=_EXPORT_EPILOG,
    )
    parser.add_argument("--format", required=True, choices=FORMATS, help="the format")
    parser.add_argument(
        "--quantize",
        choices=QUANTIZATIONS,
        default="none",
        help="none (float32), fp16, or int8 (post-training, on training images); onnx and "
        "tflite only (default: none)",
    )
    parser.add_argument(
        "--model",
        default="champion",
        metavar="MODEL",
        help="champion (the registry's), scratch | feature_extraction | fine_tune "
        "(models/<strategy>), a .keras file, models:/<name>/<version>, models:/<name>@<alias> "
        "or runs:/<run id>/<path> (default: champion)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("exports"),
        metavar="DIR",
        help="where the export's folder goes (default: exports/ in the project)",
    )
    parser.add_argument(
        "--prepared",
        type=Path,
        default=Path("data/prepared"),
        metavar="DIR",
        help="the prepared splits: test proves parity, train calibrates int8 "
        "(default: data/prepared)",
    )
    _add_model_name(parser)
    _add_root(parser)
    parser.set_defaults(run=export)


def tune(args: argparse.Namespace) -> int:
    """Search tune.space with Optuna, each trial a DVC experiment from DVC's queue."""
    from pipeline.tuning.search import run_search

    return run_search(args)


def _add_tune_verb(verbs) -> None:
    parser = _add_verb(
        verbs,
        "tune",
        "search params.yaml's tune.space with Optuna, each trial a queued DVC experiment",
        "Search the params of tune.space: Optuna proposes each trial's values (ask), each "
        "trial runs as a DVC experiment from DVC's own queue (`dvc exp run --queue -S ...`, "
        "`dvc queue start -j JOBS`), and its validation figure (tune.metric; never a test "
        "figure) goes back to the study (tell). The study lives in Optuna's storage, so an "
        "interrupted search resumes, and workers on several hosts can share one study.",
    )
    parser.add_argument(
        "--trials",
        type=_positive_int,
        required=True,
        metavar="N",
        help="trials this worker runs to completion",
    )
    parser.add_argument(
        "--jobs",
        type=_positive_int,
        default=1,
        metavar="J",
        help="trials run at once by DVC's queue workers (default: 1)",
    )
    parser.add_argument(
        "--study",
        metavar="NAME",
        help="the study (default: tune.study, else one named after "
        "the dataset, strategy and metric)",
    )
    parser.add_argument(
        "--storage",
        metavar="URL",
        help="Optuna's storage (default: tune.storage, else sqlite:///optuna.db in the project)",
    )
    _add_root(parser)
    parser.set_defaults(run=tune)


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


def entry_point() -> None:
    """The console script `pipeline`."""
    run_entry(main, "pipeline")
