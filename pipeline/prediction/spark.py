"""`pipeline predict --engine spark`: the same answers as `pipeline predict`, scored on Spark.

A backlog of a million images outgrows one process. Spark spreads it over a cluster, and
`mlflow.pyfunc.spark_udf` runs a registered model there: the model loads once per task, in
Spark's Python workers, and answers Arrow batches of rows. The rows are fed as the served model
takes them, as encoded files in its `image` column, so each file is decoded by the model's
own code (pipeline.datasets.images.decode_image: EXIF orientation, data.resize, data.max_pixels),
exactly as `pipeline predict`, `pipeline serve` and the split stage decode it.

The files come from folders and files (as `pipeline predict` finds them), globs, or a Parquet or
CSV table whose `path` column lists them; the driver lists and checks them all before Spark
starts, so a typo fails in a second. The workers read each file by its absolute path: on a
cluster, the files must sit at the same path on every worker (a shared file system).

The answers are written as Parquet, in the columns and order of `pipeline predict`'s CSV
(results.prediction_header), typed: probabilities are doubles, and the cells that the CSV leaves
empty are nulls. A file that cannot be read or decoded gets a row with the error, as in the
CSV. The output folder is staged beside `--out` and swapped in whole, so a failed run leaves the
previous predictions in place.

Only an MLflow model runs on Spark: the registry's champion, a models:/ or runs:/ URI, or (with
--trust-code) a local MLflow model folder, holding the pipeline's served classifier. A registered
version's model file is checked against its registered SHA-256 on the driver, and that checked
copy is what Spark ships to the workers.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.entry import debug_requested
from pipeline.errors import ModelError, PipelineError

logger = logging.getLogger(__name__)

INSTALL_HINT = "pip install -e '.[spark]'"
MIN_JAVA = 17
"""The oldest Java that Spark 4 runs on."""
LISTING_SUFFIXES = (".parquet", ".csv")
"""A source with one of these suffixes is a table of paths, not an image."""
PATH_COLUMN = "path"
GLOB_CHARACTERS = re.compile(r"[*?\[]")
LOCAL_HOST = "127.0.0.1"
ROWS_PER_TASK = 50_000
"""At most this many files a Spark task: a failed task is retried without redoing the rest."""
MISSING_SHOWN = 5
"""Missing files a listing's error names (then a count)."""
MODEL_ERROR_PREFIX = re.compile(r"^image \d+: ")
"""How the served model names a failed image: by its index within the batch, which means
nothing in a table of files."""
ANSWER_TYPE = (
    "predicted_class string, probability double, top_classes array<string>, "
    "top_probabilities array<double>, error string"
)
"""What the UDF keeps of the served model's answer (pipeline.serving.model): the ranked classes
and the error, not the per-class columns."""
MODEL_HINT = (
    "--engine spark runs an MLflow model through mlflow.pyfunc.spark_udf: the registry's "
    "champion (no --model), --model models:/<name>@<alias>, models:/<name>/<version> or "
    "runs:/<run id>/<path>; a .keras file or models/<strategy> runs without --engine spark"
)


def predict_on_spark(args) -> int:
    """Score the files of `args.paths` on Spark with the champion (or `args.model`) and write
    `pipeline predict`'s columns as Parquet to `args.out`; 0 once written."""
    _check_arguments(args)
    files = list_sources(args.paths)
    check_output(args.out, files)
    require_spark()
    root = args.root.resolve()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from pipeline.tracking.server import limit_http_retries, tracking_uri

    store = tracking_uri(root)
    limit_http_retries()
    with tempfile.TemporaryDirectory(prefix="pipeline-spark-model-") as scratch:
        model = spark_model(root, args.model, store, args.trust_code, Path(scratch))
        logger.info(
            "scoring %d file(s) on Spark with %s (%s): %d classes",
            len(files),
            model.name,
            model.reason,
            len(model.classes),
        )
        with spark_session(args.master, store, Path(scratch)) as spark:
            overrides = model_config_overrides(root, model.config)
            written, unreadable = score(spark, files, model, args.out, args.batch_size, overrides)
    logger.info("wrote %d row(s) to %s", written, args.out)
    if unreadable:
        logger.warning("%d file(s) could not be read (their rows say why)", unreadable)
    return 0


def _check_arguments(args) -> None:
    if args.out is None:
        raise PipelineError(
            "--engine spark writes Parquet: pass --out, e.g. --out predictions.parquet"
        )
    if args.log or args.keep_images:
        raise PipelineError(
            "--log and --keep-images record answers in this process: they work without "
            "--engine spark only"
        )


SPARK_OUTPUT_FILE = re.compile(r"^(part-.*|_SUCCESS|_committed_.*|_started_.*|\..*\.crc)$")
"""What Spark's Parquet writer leaves in its output folder: the only files --out may replace."""


def check_output(out: Path, files: Sequence[Path]) -> None:
    """Raise PipelineError unless `out` is new or an earlier Spark output: the output replaces
    it whole, so a folder of images, a project folder or a CSV given as --out by mistake would
    otherwise be deleted."""
    target = out.resolve()
    if target.exists() and not target.is_dir():
        raise PipelineError(
            f"--out {out} is a file: --engine spark writes a Parquet folder there and replaces "
            "what is there; pass a new path, e.g. --out predictions.parquet"
        )
    if target.is_dir():
        foreign = sorted(
            entry.name for entry in target.iterdir() if not SPARK_OUTPUT_FILE.match(entry.name)
        )
        if foreign:
            raise PipelineError(
                f"--out {out} holds {', '.join(foreign[:3])}"
                f"{f' and {len(foreign) - 3} more' if len(foreign) > 3 else ''}, which is not "
                "an earlier Spark output: it would be replaced whole; pass a new path, e.g. "
                "--out predictions.parquet"
            )
    inside = next((path for path in files if target in path.resolve().parents), None)
    if inside is not None:
        raise PipelineError(
            f"--out {out} holds {inside}, a file to score: pass an --out outside the sources"
        )


# --- The files ---------------------------------------------------------------------------


def list_sources(paths: Sequence[Path]) -> list[Path]:
    """The files to score, in order: a folder's images and a file as `pipeline predict` finds
    them (pipeline.prediction.files.find_images), a glob's matches (sorted; `**` crosses
    folders), and the `path` column of a .parquet or .csv table, in its order (relative paths
    are taken from the current folder, as on the command line, so a CSV written by `pipeline
    predict` can be scored again). A file listed twice counts once.

    Raises PipelineError naming a path or pattern that matches nothing, a table without a
    `path` column, and the files a table lists that do not exist."""
    from pipeline.prediction.files import find_images

    expanded: list[Path] = []
    for path in paths:
        if not path.exists() and GLOB_CHARACTERS.search(str(path)):
            expanded.extend(_glob(str(path)))
        elif path.suffix.lower() in LISTING_SUFFIXES and path.exists():
            expanded.extend(listed_paths(path))
        else:
            expanded.append(path)
    return find_images(expanded)


def _glob(pattern: str) -> list[Path]:
    matches = sorted(glob.glob(pattern, recursive=True))
    if not matches:
        raise PipelineError(
            f"{pattern}: no file matches this pattern (quote it, e.g. 'scans/**/*.png', so the "
            "shell does not expand it first)"
        )
    return [Path(match) for match in matches]


def listed_paths(table: Path) -> list[Path]:
    """The files that `table`'s `path` column lists (a .csv file, or a Parquet file or
    folder), in order; PipelineError naming the table when it has no such column, an empty
    cell, or files that do not exist."""
    values = _csv_paths(table) if table.suffix.lower() == ".csv" else _parquet_paths(table)
    blank = next((row for row, value in enumerate(values, start=1) if not value), None)
    if blank is not None:
        raise PipelineError(
            f"{table}: row {blank} has no `{PATH_COLUMN}`; give every row an image file's path"
        )
    listed = [Path(value) for value in values]
    missing = [str(path) for path in listed if not path.exists()]
    if missing:
        shown = ", ".join(missing[:MISSING_SHOWN])
        more = f" and {len(missing) - MISSING_SHOWN} more" if len(missing) > MISSING_SHOWN else ""
        raise PipelineError(
            f"{table} lists {len(missing)} file(s) that do not exist: {shown}{more} (relative "
            f"paths are taken from the current folder, {Path.cwd()}); fix or drop those rows"
        )
    if not listed:
        raise PipelineError(f"{table} lists no file: its `{PATH_COLUMN}` column is empty")
    return listed


def _csv_paths(table: Path) -> list[str]:
    import csv

    with open(table, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        if reader.fieldnames is None or PATH_COLUMN not in reader.fieldnames:
            raise _no_path_column(table, reader.fieldnames or [])
        return [(row[PATH_COLUMN] or "").strip() for row in reader]


def _parquet_paths(table: Path) -> list[str]:
    import pyarrow.dataset

    try:
        dataset = pyarrow.dataset.dataset(str(table), format="parquet")
        names = dataset.schema.names
        if PATH_COLUMN not in names:
            raise _no_path_column(table, names)
        column = dataset.to_table(columns=[PATH_COLUMN]).column(PATH_COLUMN)
    except (OSError, ValueError, TypeError) as error:
        raise PipelineError(f"{table} cannot be read as Parquet: {_first_line(error)}") from None
    return ["" if value is None else str(value).strip() for value in column.to_pylist()]


def _no_path_column(table: Path, columns: Sequence[str]) -> PipelineError:
    return PipelineError(
        f"{table} has no `{PATH_COLUMN}` column (its columns: {', '.join(columns) or 'none'}); "
        f"list the image files in a column named `{PATH_COLUMN}`"
    )


# --- Spark and Java ----------------------------------------------------------------------


def require_spark() -> None:
    """PipelineError saying what to install when pyspark or Java 17+ is missing."""
    try:
        import pyspark  # noqa: F401 - only whether it imports
    except ImportError:
        raise PipelineError(
            f"--engine spark needs pyspark, which is not installed: {INSTALL_HINT} "
            f"(Spark also needs Java {MIN_JAVA} or later)"
        ) from None
    if _submitted():
        return  # spark-submit started the JVM already
    java = find_java()
    if java is None:
        raise PipelineError(
            f"--engine spark needs Java {MIN_JAVA} or later, and there is no `java` on PATH "
            f"nor in JAVA_HOME: install a JDK or JRE {MIN_JAVA}+ (Debian: apt-get install "
            "openjdk-17-jre-headless) or set JAVA_HOME"
        )
    version = java_version(java)
    if version is not None and version < MIN_JAVA:
        raise PipelineError(
            f"--engine spark needs Java {MIN_JAVA} or later, and {java} is Java {version}: "
            f"install Java {MIN_JAVA}+ and put it first on PATH, or set JAVA_HOME to it"
        )


def find_java() -> str | None:
    """The `java` Spark would start: JAVA_HOME's, else the one on PATH; None when neither."""
    home = os.environ.get("JAVA_HOME")
    if home:
        candidate = Path(home) / "bin" / "java"
        return str(candidate) if candidate.is_file() else None
    return shutil.which("java")


def java_version(java: str) -> int | None:
    """The major version of `java` (8 for 1.8), or None when it cannot be told."""
    try:
        shown = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_java_version(shown.stderr + shown.stdout)


def parse_java_version(text: str) -> int | None:
    """The major version in `java -version`'s output: `version "17.0.15"` -> 17, `"1.8.0"` -> 8."""
    found = re.search(r'version "(\d+)(?:\.(\d+))?', text)
    if found is None:
        return None
    major = int(found.group(1))
    return int(found.group(2) or 0) if major == 1 else major


def _submitted() -> bool:
    """Whether this process runs under spark-submit (its JVM already up, its master set)."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


LOG4J_CONFIG = """\
rootLogger.level = {level}
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{{HH:mm:ss}} %p %c{{1}}: %m%n
logger.gateway.name = org.apache.spark.api.python.PythonGatewayServer
logger.gateway.level = {level}
"""
"""Spark's JVM logs: fatal errors only (warnings with -v or PIPELINE_LOG=debug). A failed task
is logged by the executor, the task set, the writer and the job, each with the worker's whole
traceback; its reason reaches the driver, which says it in one line (spark_failure). The Python
gateway's logger is set too, or pyspark announces the default level it sets."""


def _jvm_log_level() -> str:
    return "warn" if debug_requested() else "fatal"


@contextlib.contextmanager
def spark_session(master: str | None, store: str, scratch: Path) -> Iterator:
    """A Spark session on `master` (default: spark-submit's, else local[*]), logging fatal
    errors only, without its UI, a local one bound to 127.0.0.1, its Python workers on this
    Python and pointed at the tracking store `store`; stopped when the block ends. `scratch`
    holds its log configuration while it runs."""
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.appName("pipeline predict")
    if master is None and not _submitted():
        master = "local[*]"
    if master is not None:
        builder = builder.master(master)
    if master is not None and master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", LOCAL_HOST)
        builder = builder.config("spark.driver.host", LOCAL_HOST).config(
            "spark.driver.bindAddress", LOCAL_HOST
        )
    if not os.environ.get("PYSPARK_PYTHON"):
        # The workers run this interpreter (on a cluster: the same path on every worker).
        builder = builder.config("spark.pyspark.python", sys.executable)
    for name, value in _worker_environment(store).items():
        builder = builder.config(f"spark.executorEnv.{name}", value)
    log_config = scratch / "log4j2.properties"
    log_config.write_text(LOG4J_CONFIG.format(level=_jvm_log_level()))
    builder = (
        builder.config("spark.driver.extraJavaOptions", f"-Dlog4j2.configurationFile={log_config}")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
    )
    logging.getLogger("py4j").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        # pyspark 4.3 warns on every pandas UDF that it "does not yet fully support pandas >=
        # 3.0.0"; the answers are checked equal to `pipeline predict`'s
        # (tests/integration/test_predict_spark.py).
        warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
        spark = builder.getOrCreate()
        spark.sparkContext.setLogLevel(_jvm_log_level().upper())
        try:
            yield spark
        finally:
            spark.stop()


def _worker_environment(store: str) -> dict[str, str]:
    """What the Python workers need from this process's environment: the tracking store (the
    served model reads its registry aliases as it loads) and TensorFlow's quiet start-up."""
    names = ("TF_CPP_MIN_LOG_LEVEL", "KERAS_BACKEND", "PIPELINE_LOG")
    environment = {name: os.environ[name] for name in names if os.environ.get(name)}
    environment["MLFLOW_TRACKING_URI"] = store
    return environment


# --- The model ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SparkModel:
    """A local MLflow model folder for spark_udf, and how answers name it."""

    folder: Path
    name: str
    """The `model` column: models:/<name>/<version>, or the source as given."""
    reason: str
    classes: list[str]
    config: dict
    """The model's own model_config (resize, max_batch, max_pixels, backend)."""


def spark_model(
    root: Path, requested: str | None, store: str, trust_code: bool, scratch: Path
) -> SparkModel:
    """The model to score with, downloaded (a registered version: checked against its
    registered SHA-256) into `scratch`: `requested`, else the registry's champion of the
    project's params.yaml, as `pipeline predict` chooses it (pipeline.prediction.choice)."""
    from pipeline.config import STRATEGY_NAMES
    from pipeline.prediction import choice

    if requested in STRATEGY_NAMES:
        raise ModelError(f"--model {requested} is a local Keras model. {MODEL_HINT}")

    def champion() -> str:
        params = root / "params.yaml"
        if not params.is_file():
            raise PipelineError(
                f"{root} has no params.yaml, so the registered model's name is unknown: run "
                "from the project root (or pass --root)"
            )
        from pipeline.config import load_config

        config = load_config(params)
        return choice.find_champion(store, config.mlflow.registered_model_name(config.data.dataset))

    chosen = choice.choose_model(requested, champion, root / "models")
    if choice.is_model_uri(chosen.source):
        choice.use_tracking_store(store, chosen.source)
        folder, name = _download(chosen.source, scratch)
    else:
        folder, name = _local_folder(Path(chosen.source), trust_code), chosen.source
    classes, config = served_classifier(folder, chosen.source)
    return SparkModel(folder, chosen.name or name, chosen.reason, classes, config)


def _download(source: str, scratch: Path) -> tuple[Path, str]:
    """The model at `source` in a local folder, and its name in answers: a registered version
    (an alias resolved) as models:/<name>/<version>, checked against its SHA-256; any other
    URI as given."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipeline.prediction.classifier import registered_version
    from pipeline.serving.verification import verified_model_path

    registered = registered_version(source)
    if registered is not None:
        name, version = registered
        return verified_model_path(name, version, scratch), f"models:/{name}/{version}"
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(scratch))
    except MlflowException as error:
        raise ModelError(f"cannot download the model {source}: {_first_line(error)}") from None
    return Path(local), source


def _local_folder(path: Path, trust_code: bool) -> Path:
    from pipeline.prediction.classifier import TRUST_CODE_HINT

    if not path.exists():
        raise ModelError(f"model {path} does not exist. {MODEL_HINT}")
    if not (path.is_dir() and (path / "MLmodel").is_file()):
        raise ModelError(f"{path} is not an MLflow model folder (no MLmodel). {MODEL_HINT}")
    if not trust_code:
        raise ModelError(
            f"{path} is an MLflow model folder: loading it runs the Python code it holds, "
            f"which could be anything. {TRUST_CODE_HINT}"
        )
    return path


def served_classifier(folder: Path, source: str) -> tuple[list[str], dict]:
    """(class names, model_config) of the served classifier in `folder`; ModelError when the
    model is another kind (a bare Keras flavor takes pixel tensors, not image files)."""
    from mlflow.models import Model

    from pipeline.serving.model import IMAGE_COLUMN, class_columns

    metadata = Model.load(str(folder / "MLmodel"))
    inputs = metadata.get_input_schema()
    outputs = metadata.get_output_schema()
    takes_files = inputs is not None and not inputs.is_tensor_spec()
    if not takes_files or IMAGE_COLUMN not in inputs.input_names() or outputs is None:
        raise ModelError(
            f"the model {source} is not the pipeline's served classifier (it takes no "
            f"`{IMAGE_COLUMN}` column of image files, which Spark feeds it): score the "
            "registered classifier (models:/<name>@champion) or a training run's `classifier` "
            "(runs:/<run id>/classifier)"
        )
    config = (metadata.flavors.get("python_function") or {}).get("config") or {}
    return class_columns(outputs.input_names()), dict(config)


# --- Scoring -----------------------------------------------------------------------------


def read_files(paths, files):
    """Spark's read step, in its Python workers: each file's bytes (read from `files`, the
    absolute paths), or why it could not be read, in the words `pipeline predict` uses for the
    same file (pipeline.datasets.images.decode_image, naming it by its path as given)."""
    import pandas as pd

    images, errors = [], []
    for path, file in zip(paths, files, strict=True):
        try:
            content = Path(file).read_bytes()
        except OSError as error:
            images.append(None)
            errors.append(f"cannot decode: {_cut(str(OSError(error.errno, error.strerror, path)))}")
            continue
        images.append(content or None)
        errors.append(None if content else "empty file (0 bytes)")
    return pd.DataFrame({"image": images, "read_error": errors})


def _cut(text: str, limit: int = 300) -> str:
    """As decode_image cuts an exception's text for a CSV cell."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def model_config_overrides(root: Path, logged: dict) -> dict:
    """The project's data.resize and data.max_pixels, as `pipeline predict` decodes with them,
    for the keys the model was logged with (MLflow ignores the others, with a warning)."""
    params = root / "params.yaml"
    if not params.is_file():
        return {}
    from pipeline.config import load_config
    from pipeline.serving.model import MAX_PIXELS_CONFIG, RESIZE_CONFIG

    data = load_config(params).data
    wanted = {RESIZE_CONFIG: data.resize, MAX_PIXELS_CONFIG: data.max_pixels}
    return {key: value for key, value in wanted.items() if key in logged and value is not None}


def score(
    spark,
    files: Sequence[Path],
    model: SparkModel,
    out: Path,
    batch_size: int,
    overrides: dict | None = None,
) -> tuple[int, int]:
    """Score `files` with `model` through spark_udf, `batch_size` files an Arrow batch (at
    most the model's max_batch), its model_config updated with `overrides`, and write the
    answers as Parquet to `out` (staged, then swapped in); (rows written, rows with an error)."""
    from pyspark.sql import functions as F
    from pyspark.sql.functions import pandas_udf

    from pipeline.prediction.results import prediction_header
    from pipeline.serving.model import DEFAULT_MAX_BATCH, MAX_BATCH_CONFIG
    from pipeline.store import atomic_directory

    max_batch = int(model.config.get(MAX_BATCH_CONFIG, DEFAULT_MAX_BATCH))
    spark.conf.set("spark.sql.execution.arrow.maxRecordsPerBatch", min(batch_size, max_batch))
    rows = [(str(path), str(path.resolve())) for path in files]
    slices = min(len(rows), max(spark.sparkContext.defaultParallelism, 1))
    slices = max(slices, -(-len(rows) // ROWS_PER_TASK))
    table = spark.sparkContext.parallelize(rows, slices).toDF("path string, file string")
    read = pandas_udf(read_files, "image binary, read_error string").asNondeterministic()
    predict = _model_udf(spark, model, overrides)
    answered = table.withColumn("read", read("path", "file")).withColumn(
        "answer", predict(F.struct(F.col("read.image").alias("image")))
    )
    columns = answer_columns(answered, model.name)
    result = answered.select(
        *[columns[name].alias(name) for name in prediction_header(model.classes)]
    )
    with atomic_directory(out) as staging:
        try:
            result.write.mode("overwrite").parquet(str(staging))
        except Exception as error:  # noqa: BLE001 - Py4J and Spark raise their own, pages long
            raise PipelineError(
                f"Spark could not score the files: {spark_failure(error)}"
            ) from None
        counts = spark.read.parquet(str(staging)).agg(F.count("*"), F.count("error")).first()
    return int(counts[0]), int(counts[1])


def _model_udf(spark, model: SparkModel, overrides: dict | None):
    """mlflow.pyfunc.spark_udf on the model's folder: the served model's answer (ANSWER_TYPE),
    a row with its error for an image it cannot read (row_errors), the top TOP_K classes."""
    import mlflow.pyfunc

    from pipeline.prediction.results import TOP_K
    from pipeline.serving.model import ROW_ERRORS_PARAM, TOP_K_PARAM

    # MLflow warns that env_manager="local" does not recreate the model's environment: on
    # purpose, the workers run this project's own environment, which the model was made in.
    chatty = logging.getLogger("mlflow.pyfunc")
    level = chatty.level
    chatty.setLevel(logging.ERROR)
    try:
        return mlflow.pyfunc.spark_udf(
            spark,
            str(model.folder),
            result_type=ANSWER_TYPE,
            env_manager="local",
            params={ROW_ERRORS_PARAM: True, TOP_K_PARAM: TOP_K},
            model_config=overrides or None,
        )
    finally:
        chatty.setLevel(level)


def answer_columns(answered, model_name: str) -> dict:
    """`pipeline predict`'s columns (results.prediction_header) as Spark columns of `answered`
    (the read step's `read` and the model's `answer`): every one, by name; the header picks
    those of the model's class count, in order."""
    from pyspark.sql import functions as F

    from pipeline.prediction.results import TOP_K

    # The model's error without its batch index; any other value is no error (MLflow casts a
    # batch's None errors to the text "None" when another row of the batch has one).
    model_error = F.when(
        F.col("answer.error").rlike(MODEL_ERROR_PREFIX.pattern),
        F.regexp_replace("answer.error", MODEL_ERROR_PREFIX.pattern, ""),
    )
    error = F.coalesce(F.col("read.read_error"), model_error)
    answered_well = error.isNull()
    columns = {
        "path": F.col("path"),
        "predicted_class": F.when(answered_well, F.col("answer.predicted_class")),
        "probability": F.when(answered_well, F.col("answer.probability")),
    }
    for rank in range(2, TOP_K + 1):
        columns[f"top{rank}"] = F.when(
            answered_well, F.try_element_at("answer.top_classes", F.lit(rank))
        )
        columns[f"top{rank}_probability"] = F.when(
            answered_well, F.try_element_at("answer.top_probabilities", F.lit(rank))
        )
    columns["error"] = error
    columns["model"] = F.lit(model_name)
    return columns


def spark_failure(error: BaseException) -> str:
    """The line that says why a Spark job failed: the last Python exception's in a worker's
    traceback (MLflow's, the model's), else the first line of the error."""
    text = str(error)
    found = re.findall(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception|Failed)): (.+)$", text, re.M)
    if found:
        kind, message = found[-1]
        return f"{kind}: {message.strip()}"
    return _first_line(error)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
