"""`pipeline predict --engine spark --master local[2]` as a user runs it, on real pyspark and Java:
the champion of a SQLite store scores a folder, a CSV of paths and a glob through
mlflow.pyfunc.spark_udf, and the Parquet it writes holds the rows `pipeline predict` writes for
the same files (same columns in the same order, same classes, errors and model, probabilities
within float tolerance): images of other sizes, an EXIF-rotated JPEG, a gray PNG, an empty file
and a corrupt one. Without Java, `--engine spark` says in one line what to install.

Skipped where pyspark or Java is missing; a failure where CI provides them
(PIPELINE_TESTS_REQUIRE_SPARK=1)."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.servers import run_to_exit
from tests.serving_models import register_champion

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PIPELINE = str(Path(sys.executable).parent / "pipeline")
NAME = "spark-classifier"
CLASSES = ["bird", "cat", "dog", "fish", "frog"]
"""More than results.TOP_K classes: the runner-up columns are there too."""
SHAPE = (24, 24, 3)
TOLERANCE = 2e-6
"""The CSV's probabilities are rounded to 6 decimals; Parquet holds the doubles."""
TIMEOUT = 900


def spark_or_skip() -> None:
    """Skip when pyspark or Java is missing, or fail where CI provides them
    (PIPELINE_TESTS_REQUIRE_SPARK=1)."""
    missing = []
    if importlib.util.find_spec("pyspark") is None:
        missing.append("pyspark (pip install -e '.[spark]')")
    home = os.environ.get("JAVA_HOME")
    if not (Path(home) / "bin" / "java").is_file() if home else shutil.which("java") is None:
        missing.append("Java 17+ (Debian: apt-get install openjdk-17-jre-headless)")
    if not missing:
        return
    reason = f"--engine spark needs {' and '.join(missing)}; .ci/run installs them"
    if os.environ.get("PIPELINE_TESTS_REQUIRE_SPARK") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _pattern(width: int, height: int, seed: int) -> Image.Image:
    """A picture that looks different turned, so a missed EXIF rotation changes the answer."""
    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack([x + 0 * y, (255 - y) + 0 * x, (x * y) / 255], axis=-1)
    rgb = rgb + rng.integers(0, 60, size=rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A folder holding the store (the champion: a convnet trained a little on random images)
    and the files: scans/ (nested, of several kinds and sizes, a hidden file, an empty and a
    corrupt one), more/ (JPEGs for a glob) and todo.csv (a list of paths)."""
    root = tmp_path_factory.mktemp("predict-spark")
    register_champion(root / "store", NAME, "image_folder", SHAPE, CLASSES, epochs=2)
    scans = root / "scans"
    (scans / "nested").mkdir(parents=True)
    for index in range(6):
        size = (24 + 7 * index, 24 + 3 * index)
        (scans / f"{index}.png").write_bytes(_encoded(_pattern(*size, index), "PNG"))
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotated: viewers turn it 90 degrees clockwise.
    (scans / "nested" / "rotated.jpg").write_bytes(
        _encoded(_pattern(40, 20, 7), "JPEG", quality=95, exif=exif.tobytes())
    )
    (scans / "nested" / "gray.png").write_bytes(_encoded(_pattern(30, 30, 8).convert("L"), "PNG"))
    (scans / "nested" / ".hidden.png").write_bytes(_encoded(_pattern(30, 30, 9), "PNG"))
    (scans / "empty.png").write_bytes(b"")
    (scans / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    more = root / "more"
    more.mkdir()
    for index in range(3):
        (more / f"{index}.jpg").write_bytes(_encoded(_pattern(50, 50, 20 + index), "JPEG"))
    (root / "todo.csv").write_text("path,note\nmore/2.jpg,x\nscans/3.png,y\n")
    return root


def _environment(project: Path) -> dict[str, str]:
    return {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'store' / 'mlflow.db'}"}


def _predict(project: Path, *arguments: str, env: dict[str, str] | None = None):
    """`pipeline predict` in the project folder (relative paths, as a user types them)."""
    command = [PIPELINE, "predict", *arguments, "--root", str(project)]
    env = env or _environment(project)
    previous = Path.cwd()
    os.chdir(project)
    try:
        return run_to_exit(command, env, TIMEOUT)
    finally:
        os.chdir(previous)


def _local_rows(project: Path, *paths: str) -> tuple[list[str], list[dict[str, str]]]:
    result = _predict(project, *paths, "--model", f"models:/{NAME}@champion", "--out", "local.csv")
    assert result.returncode == 0, result.stderr
    with open(project / "local.csv", newline="") as stream:
        reader = csv.DictReader(stream)
        return list(reader.fieldnames or []), list(reader)


def test_spark_writes_the_rows_pipeline_predict_writes(project) -> None:
    spark_or_skip()
    out = project / "answers.parquet"
    out.mkdir()
    # An earlier Spark output (the only kind --out may replace: tests/code covers refusals).
    (out / "part-00000-earlier.snappy.parquet").write_bytes(b"an earlier run's output")
    result = _predict(
        project,
        "scans",
        "todo.csv",
        "more/*.jpg",
        "--engine",
        "spark",
        "--master",
        "local[2]",
        "--model",
        f"models:/{NAME}@champion",
        "--out",
        "answers.parquet",
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    # The same files as the local engine gets them: the folder as it lists it, then the CSV's
    # paths in order (scans/3.png, already listed, counts once), then the glob's, sorted.
    header, expected = _local_rows(
        project, "scans", "more/2.jpg", "scans/3.png", "more/0.jpg", "more/1.jpg", "more/2.jpg"
    )
    assert not (out / "part-00000-earlier.snappy.parquet").exists(), "not replaced whole"
    answers = pd.read_parquet(out)
    assert list(answers.columns) == header
    assert len(answers) == len(expected) == 13
    for (_, row), local in zip(answers.iterrows(), expected, strict=True):
        for column in header:
            value = row[column]
            if column.endswith("probability"):
                if local[column] == "":
                    assert pd.isna(value), (local["path"], column)
                else:
                    assert value == pytest.approx(float(local[column]), abs=TOLERANCE), (
                        local["path"],
                        column,
                    )
            else:
                assert ("" if pd.isna(value) else value) == local[column], (local["path"], column)
    errors = dict(zip(answers["path"], answers["error"], strict=True))
    assert errors["scans/empty.png"] == "empty file (0 bytes)"
    assert "not an image Pillow can identify" in errors["scans/corrupt.png"]
    assert pd.isna(errors["scans/nested/rotated.jpg"])
    assert set(answers["model"]) == {f"models:/{NAME}/1"}
    assert set(answers["predicted_class"].dropna()) <= set(CLASSES)


def test_without_java_spark_says_what_to_install(project) -> None:
    if importlib.util.find_spec("pyspark") is None:
        pytest.skip("pyspark is not installed: the missing-pyspark error is tested in tests/code")
    env = {key: value for key, value in _environment(project).items() if key != "JAVA_HOME"}
    env["PATH"] = str(Path(sys.executable).parent)  # the virtual environment, no java
    result = _predict(project, "scans", "--engine", "spark", "--out", "nowhere.parquet", env=env)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert "needs Java 17 or later" in lines[0] and "JAVA_HOME" in lines[0]
    assert not (project / "nowhere.parquet").exists()


def test_a_failed_scoring_says_why_in_one_line_and_keeps_the_previous_output(project) -> None:
    spark_or_skip()
    kept = project / "kept.parquet"
    kept.mkdir()
    (kept / "part-0.parquet").write_bytes(b"the previous run's answers")
    env = _environment(project)
    # The workers load the champion asked to answer with its ONNX export, which it lacks: the
    # model fails in Spark's Python workers, after the output is staged.
    env["MLFLOW_PYFUNC_INFERENCE_CONFIG"] = '{"backend": "onnx"}'
    result = _predict(
        project,
        "scans",
        "--engine",
        "spark",
        "--master",
        "local[2]",
        "--model",
        f"models:/{NAME}@champion",
        "--out",
        "kept.parquet",
        env=env,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr and "\tat org.apache" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error in pipeline: Spark could not score the files: MlflowException:")
    assert "has no ONNX export" in last
    assert [path.name for path in kept.iterdir()] == ["part-0.parquet"]
    assert (kept / "part-0.parquet").read_bytes() == b"the previous run's answers"
    assert not [path for path in project.iterdir() if path.name.startswith(".kept.parquet")]
