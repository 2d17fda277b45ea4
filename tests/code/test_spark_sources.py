"""What `pipeline predict --engine spark` scores, decided before Spark starts: folders, globs and
Parquet or CSV tables of paths, listed in a deterministic order with every missing file named;
the read step's errors, worded as `pipeline predict` words them; and the one-line error when
pyspark or Java is missing. No Spark runs here (tests/integration/test_predict_spark.py runs it).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.datasets.images import BadImage, decode_image
from pipeline.errors import PipelineError
from pipeline.prediction import spark
from pipeline.prediction.files import find_images


def _png(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((4, 4, 3), value, dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def images(tmp_path, monkeypatch) -> Path:
    """scans/{a,b}/*.png, a hidden file, and a JPEG, with the current folder at tmp_path."""
    monkeypatch.chdir(tmp_path)
    for name in ("a/2.png", "a/1.png", "b/3.png", "b/.hidden.png", "b/4.jpg"):
        _png(tmp_path / "scans" / name)
    return tmp_path / "scans"


def test_a_folder_is_listed_as_pipeline_predict_lists_it(images) -> None:
    listed = spark.list_sources([Path("scans")])
    assert listed == find_images([Path("scans")])
    assert [path.as_posix() for path in listed] == [
        "scans/a/1.png",
        "scans/a/2.png",
        "scans/b/3.png",
        "scans/b/4.jpg",
    ]


def test_a_glob_lists_its_matches_sorted_and_crosses_folders_with_two_stars(images) -> None:
    assert [path.as_posix() for path in spark.list_sources([Path("scans/*/*.png")])] == [
        "scans/a/1.png",
        "scans/a/2.png",
        "scans/b/3.png",
    ]
    assert [path.as_posix() for path in spark.list_sources([Path("scans/**/*.jpg")])] == [
        "scans/b/4.jpg"
    ]


def test_a_glob_that_matches_nothing_is_named(images) -> None:
    with pytest.raises(PipelineError, match=r"scans/\*\.gif: no file matches this pattern"):
        spark.list_sources([Path("scans/*.gif")])


def test_a_csv_lists_its_path_column_in_order_from_the_current_folder(images) -> None:
    table = images.parent / "todo.csv"
    pd.DataFrame(
        {"id": [1, 2, 3], "path": ["scans/b/3.png", "scans/a/1.png", "scans/b/3.png"]}
    ).to_csv(table, index=False)
    listed = spark.list_sources([table])
    assert [path.as_posix() for path in listed] == ["scans/b/3.png", "scans/a/1.png"]


def test_a_parquet_table_lists_its_path_column(images) -> None:
    table = images.parent / "todo.parquet"
    absolute = str(images / "a" / "2.png")
    pd.DataFrame({"path": [absolute, "scans/b/4.jpg"], "label": ["x", "y"]}).to_parquet(table)
    assert spark.list_sources([table]) == [Path(absolute), Path("scans/b/4.jpg")]


def test_sources_of_every_kind_mix_and_a_file_listed_twice_counts_once(images) -> None:
    table = images.parent / "todo.csv"
    table.write_text("path\nscans/b/4.jpg\nscans/a/1.png\n")
    listed = spark.list_sources([Path("scans/a"), table, Path("scans/b/*.png")])
    assert [path.as_posix() for path in listed] == [
        "scans/a/1.png",
        "scans/a/2.png",
        "scans/b/4.jpg",
        "scans/b/3.png",
    ]


def test_a_table_without_a_path_column_names_its_columns(images) -> None:
    table = images.parent / "todo.csv"
    table.write_text("file,label\nscans/a/1.png,x\n")
    with pytest.raises(PipelineError, match=r"todo.csv has no `path` column \(its columns: file, "):
        spark.list_sources([table])


def test_the_files_a_table_lists_that_do_not_exist_are_named_and_counted(images) -> None:
    table = images.parent / "todo.csv"
    missing = [f"scans/gone/{index}.png" for index in range(7)]
    table.write_text("path\n" + "\n".join(["scans/a/1.png", *missing]) + "\n")
    with pytest.raises(PipelineError) as raised:
        spark.list_sources([table])
    message = str(raised.value)
    assert "lists 7 file(s) that do not exist: scans/gone/0.png" in message
    assert "scans/gone/4.png and 2 more" in message and "scans/gone/5.png" not in message


def test_a_blank_path_in_a_table_names_its_row(images) -> None:
    table = images.parent / "todo.csv"
    table.write_text("path,label\nscans/a/1.png,x\n,y\n")
    with pytest.raises(PipelineError, match=r"todo.csv: row 2 has no `path`"):
        spark.list_sources([table])


def test_a_missing_folder_fails_as_pipeline_predict_fails(images) -> None:
    with pytest.raises(PipelineError, match="nowhere: no such file or folder"):
        spark.list_sources([Path("nowhere")])


def test_the_read_step_words_its_errors_as_pipeline_predict_does(images) -> None:
    empty = images / "empty.png"
    empty.write_bytes(b"")
    folder = images / "a"
    good = images / "a" / "1.png"
    answer = spark.read_files(
        pd.Series([str(empty), "scans/a", "scans/a/1.png"]),
        pd.Series([str(empty), str(folder.resolve()), str(good.resolve())]),
    )
    for row, path in ((0, empty), (1, Path("scans/a"))):
        with pytest.raises(BadImage) as local:
            decode_image(path, 4)
        assert answer["read_error"][row] == str(local.value)
        assert answer["image"][row] is None
    assert answer["image"][2] == good.read_bytes() and pd.isna(answer["read_error"][2])


def test_the_model_error_loses_its_batch_index_only() -> None:
    pattern = spark.MODEL_ERROR_PREFIX
    assert pattern.sub("", "image 17: cannot decode: broken") == "cannot decode: broken"
    assert not pattern.match("None")


@pytest.mark.parametrize(
    ("shown", "version"),
    [
        ('openjdk version "17.0.15" 2025-04-15', 17),
        ('openjdk version "21" 2023-09-19', 21),
        ('java version "1.8.0_392"', 8),
        ("no version here", None),
    ],
)
def test_the_java_version_is_read_from_its_banner(shown: str, version: int | None) -> None:
    assert spark.parse_java_version(shown) == version


def test_without_java_the_error_says_what_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    with pytest.raises(PipelineError, match=r"needs Java 17 or later.*openjdk-17-jre-headless"):
        spark.require_spark()


def test_without_pyspark_the_error_says_what_to_install(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyspark", None)
    with pytest.raises(PipelineError, match=r"needs pyspark.*pip install -e '\.\[spark\]'"):
        spark.require_spark()


def test_a_local_keras_model_is_refused_naming_the_models_spark_runs(tmp_path) -> None:
    with pytest.raises(PipelineError, match=r"--model scratch is a local Keras model.*runs:/"):
        spark.spark_model(tmp_path, "scratch", "sqlite:///unused.db", False, tmp_path)
    keras_file = tmp_path / "model.keras"
    keras_file.write_bytes(b"not read")
    with pytest.raises(PipelineError, match=r"not an MLflow model folder.*models:/<name>@<alias>"):
        spark.spark_model(tmp_path, str(keras_file), "sqlite:///unused.db", False, tmp_path)


def test_a_local_mlflow_folder_needs_trust_code(tmp_path) -> None:
    folder = tmp_path / "exported"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors: {}\n")
    with pytest.raises(PipelineError, match=r"runs the Python code it holds.*--trust-code"):
        spark.spark_model(tmp_path, str(folder), "sqlite:///unused.db", False, tmp_path)


def test_a_model_that_takes_no_image_files_is_refused(tmp_path) -> None:
    """A bare Keras flavor (a training run's `model`) takes pixel tensors: Spark feeds files."""
    from mlflow.models import Model, ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    folder = tmp_path / "bare"
    folder.mkdir()
    tensor = Schema([TensorSpec(np.dtype(np.uint8), (-1, 8, 8, 1))])
    Model(signature=ModelSignature(inputs=tensor, outputs=tensor)).save(str(folder / "MLmodel"))
    with pytest.raises(PipelineError, match=r"not the pipeline's served classifier"):
        spark.served_classifier(folder, "runs:/abc/model")


def test_out_may_only_replace_nothing_or_an_earlier_spark_output(images, tmp_path) -> None:
    """The output replaces --out whole: a folder of other files, a file, or a folder holding the
    images scored would be deleted, so each is refused before Spark starts."""
    files = spark.list_sources([images])
    spark.check_output(tmp_path / "new.parquet", files)  # new: fine
    earlier = tmp_path / "earlier.parquet"
    earlier.mkdir()
    for name in ("part-00000-abc.snappy.parquet", "_SUCCESS", ".part-00000-abc.snappy.parquet.crc"):
        (earlier / name).write_bytes(b"x")
    spark.check_output(earlier, files)  # an earlier Spark output: replaced
    (earlier / "notes.txt").write_text("mine")
    with pytest.raises(PipelineError, match=r"holds notes\.txt, which is not an earlier Spark"):
        spark.check_output(earlier, files)
    csv = tmp_path / "predictions.csv"
    csv.write_text("path\n")
    with pytest.raises(PipelineError, match="is a file"):
        spark.check_output(csv, files)
    with pytest.raises(PipelineError, match=r"holds a, b, which is not an earlier Spark"):
        spark.check_output(images, files)
    # Images named as Spark names its files are still the sources.
    parts = [_png(tmp_path / "parts" / "part-0001.png")]
    with pytest.raises(PipelineError, match="holds .*part-0001.png, a file to score"):
        spark.check_output(tmp_path / "parts", parts)
