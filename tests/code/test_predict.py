"""`pipeline predict`: files decoded as the split decodes them, the answers model.predict gives
on the same arrays, unreadable files as rows with a reason, the model chosen as documented,
and every error as one line."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from pipeline import cli
from pipeline.datasets.images import decode_image
from pipeline.errors import ModelError, PipelineError, TrackingUnavailable
from pipeline.prediction.choice import ModelChoice, choose_model
from pipeline.prediction.classifier import load_classifier
from pipeline.prediction.files import find_images, read_images
from pipeline.prediction.results import prediction_header
from pipeline.store import write_classes, write_store_from_arrays

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CONSOLE_SCRIPT = Path(sys.executable).parent / "pipeline"
DIGIT_CLASSES = [str(digit) for digit in range(10)]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    """sklearn's digits as the split stage stores them: 0..16 spread over 0..255, uint8 8x8x1."""
    from sklearn.datasets import load_digits

    data = load_digits()
    pixels = np.rint(data.data * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return pixels.reshape(-1, 8, 8, 1), data.target.astype(np.int64)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> SimpleNamespace:
    """A project folder with a small trained digits model (model.keras and classes.json, as
    training writes them), its test split, and a folder (with a subfolder) of digit PNGs, a
    corrupt PNG and files predict must skip."""
    import keras
    from keras import layers

    root = tmp_path_factory.mktemp("digits-project")
    x, y = _digits()
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(8, 8, 1), dtype="uint8", name="image")
    hidden = layers.Flatten()(layers.Rescaling(1.0 / 255)(inputs))
    outputs = layers.Dense(10, activation="softmax")(layers.Dense(32, activation="relu")(hidden))
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=3, batch_size=64, verbose=0)
    model_file = root / "model.keras"
    model.save(model_file)
    write_classes(root, DIGIT_CLASSES)
    write_store_from_arrays(
        root / "data" / "prepared",
        {"train": (x[40:], y[40:]), "val": (x[20:40], y[20:40]), "test": (x[:20], y[:20])},
        DIGIT_CLASSES,
    )

    images = root / "images"
    files: dict[str, int] = {}
    for index in range(30):
        folder = images / "more" if index >= 20 else images
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"digit_{index:02d}.png"
        Image.fromarray(x[index, :, :, 0], mode="L").save(path)
        files[str(path)] = index
    (images / "broken.png").write_bytes(b"this is not a PNG")
    (images / "notes.txt").write_text("not an image: skipped")
    (images / ".hidden.png").write_bytes(b"hidden: skipped")
    expected = model.predict(x[:30], verbose=0)
    return SimpleNamespace(
        root=root, model_file=model_file, images=images, files=files, expected=expected
    )


def _run_predict(capsys, *args: str) -> list[dict[str, str]]:
    """`pipeline predict ARGS` in this process; the CSV it writes to standard output."""
    assert cli.main(["predict", *args]) == 0
    return list(csv.DictReader(io.StringIO(capsys.readouterr().out)))


def _check_digit_rows(rows: list[dict[str, str]], digits: SimpleNamespace) -> None:
    by_path = {row["path"]: row for row in rows}
    assert set(by_path) == {*digits.files, str(digits.images / "broken.png")}
    for path, index in digits.files.items():
        row, expected = by_path[path], digits.expected[index]
        order = np.argsort(-expected, kind="stable")
        assert row["predicted_class"] == str(order[0]), path
        assert float(row["probability"]) == pytest.approx(expected[order[0]], abs=1e-5)
        assert row["top2"] == str(order[1]) and row["top3"] == str(order[2])
        assert float(row["top3_probability"]) == pytest.approx(expected[order[2]], abs=1e-5)
        assert row["error"] == ""
    broken = by_path[str(digits.images / "broken.png")]
    assert broken["predicted_class"] == "" and broken["probability"] == ""
    assert "not an image" in broken["error"]


def test_find_images_walks_folders_in_sorted_order_and_skips_non_images(tmp_path) -> None:
    for name in ("b/z.png", "b/a.JPG", "a.png", "c/.cache/x.png", "notes.txt", ".x.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    single = tmp_path / "notes.txt"
    assert find_images([tmp_path, single, tmp_path / "a.png"]) == [
        tmp_path / "a.png",
        tmp_path / "b" / "a.JPG",
        tmp_path / "b" / "z.png",
        single,  # named on the command line: tried, whatever its extension
    ]


def test_missing_paths_are_all_named(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PipelineError, match=r"^nowhere\.png, gone: no such file or folder"):
        find_images([Path("nowhere.png"), Path("."), Path("gone")])
    Path("empty").mkdir()
    with pytest.raises(PipelineError, match="no image file .* in empty"):
        find_images([Path("empty")])


def test_predictions_equal_model_predict_on_the_split_arrays(digits, capsys) -> None:
    # A batch size that does not divide the 31 files, with the corrupt one inside a batch.
    rows = _run_predict(
        capsys,
        str(digits.images),
        "--model",
        str(digits.model_file),
        "--root",
        str(digits.root),
        "--batch-size",
        "7",
    )
    assert list(rows[0]) == prediction_header(DIGIT_CLASSES)
    assert [row["path"] for row in rows] == sorted(row["path"] for row in rows)
    _check_digit_rows(rows, digits)


def test_files_are_decoded_and_predicted_a_batch_at_a_time(digits, monkeypatch) -> None:
    """Many files are never decoded at once: each batch of files is decoded, predicted and let
    go before the next, and every readable file is predicted once."""
    from pipeline.prediction import results

    decoded: list[int] = []
    predicted: list[int] = []
    read_images = results.read_images

    def read_counted(paths, *args, **kwargs):
        decoded.append(len(paths))
        return read_images(paths, *args, **kwargs)

    monkeypatch.setattr(results, "read_images", read_counted)
    classifier = load_classifier(str(digits.model_file))
    predict = classifier.predict_batch

    def predict_counted(images: np.ndarray) -> np.ndarray:
        predicted.append(len(images))
        return predict(images)

    counted = replace(classifier, predict_batch=predict_counted)
    files = find_images([digits.images])
    predictions = results.predict_files(counted, files, batch_size=4)
    assert decoded == [4] * 7 + [3]  # 31 files
    assert max(predicted) <= 4 and sum(predicted) == 30  # the broken file is not predicted
    assert [item.path for item in predictions] == files


def test_console_script_writes_the_csv_and_names_the_model(digits) -> None:
    out = digits.root / "predictions.csv"
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "predict", "images", "--model", "model.keras", "--out", str(out)],
        cwd=digits.root,
        env={**env, "TF_CPP_MIN_LOG_LEVEL": "3"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "predicting 31 file(s) with model.keras (--model)" in result.stderr
    assert "1 file(s) could not be read" in result.stderr
    rows = list(csv.DictReader(out.open()))
    # Relative paths in, relative paths out: rows name files as the user named them.
    absolute = [{**row, "path": str(digits.root / row["path"])} for row in rows]
    _check_digit_rows(absolute, digits)


def test_a_missing_path_stops_with_one_line_before_any_model_loads(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "predict", "no/such/folder", "--model", "x.keras"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error in pipeline: no/such/folder: no such file or folder; pass image files or "
        "folders of them"
    ]


@pytest.mark.parametrize(
    ("model", "error", "message"),
    [
        ("missing.keras", ModelError, "model .*missing.keras does not exist"),
        ("damaged.keras", ModelError, "cannot load the model .*damaged.keras"),
        (
            "models:/no-such-model@champion",
            ModelError,
            "cannot load the model models:/no-such-model@champion: .*not found",
        ),
        (
            "models:/digits-classifier/1",
            TrackingUnavailable,
            "models:/digits-classifier/1 needs a tracking store, and .*absent.db does not exist",
        ),
    ],
)
def test_a_model_that_cannot_be_loaded_is_named(
    digits, tmp_path, monkeypatch, model: str, error: type, message: str
) -> None:
    import mlflow

    (tmp_path / "damaged.keras").write_bytes(b"not a zip")
    store = "absent.db" if error is TrackingUnavailable else "mlflow.db"
    uri = f"sqlite:///{tmp_path / store}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    try:
        if store == "mlflow.db":
            mlflow.MlflowClient(uri).search_experiments()  # creates an empty store
        source = model if model.startswith("models:/") else str(tmp_path / model)
        with pytest.raises(error, match=message):
            cli.main(["predict", str(digits.images), "--model", source, "--root", str(tmp_path)])
    finally:
        mlflow.set_tracking_uri(previous)
    assert not (tmp_path / "absent.db").exists()


def test_unknown_class_names_are_refused_with_the_fix(digits, tmp_path) -> None:
    """A model.keras without classes.json beside it: the project's test split is not read."""
    shutil.copy(digits.model_file, tmp_path / "model.keras")
    one = (np.zeros((1, 8, 8, 1), np.uint8), np.zeros(1, np.int64))
    write_store_from_arrays(
        tmp_path / "data" / "prepared", {"train": one, "val": one, "test": one}, DIGIT_CLASSES
    )
    with pytest.raises(ModelError, match="class names of .* are unknown.*classes.json"):
        cli.main(
            [
                "predict",
                str(digits.images),
                "--model",
                str(tmp_path / "model.keras"),
                "--root",
                str(tmp_path),
            ]
        )


def test_class_names_of_another_model_are_refused(digits, tmp_path) -> None:
    shutil.copy(digits.model_file, tmp_path / "model.keras")
    write_classes(tmp_path, ["cat", "dog"])
    with pytest.raises(ModelError, match="10 output unit.*names 2 classes"):
        cli.main(["predict", str(digits.images), "--model", str(tmp_path / "model.keras")])


def test_a_gray_model_gets_pillows_luminance_of_a_colour_file(tmp_path) -> None:
    """Pillow's "L" (fixed-point ITU-R 601), as a grayscale PNG stores it: these colours are
    where a float luminance rounds the other way."""
    colours = np.array([[[0, 4, 168], [0, 18, 131]], [[0, 22, 49], [255, 255, 255]]], np.uint8)
    Image.fromarray(colours).save(tmp_path / "colours.png")
    images, bad = read_images([tmp_path / "colours.png"], (2, 2, 1))
    assert bad == {}
    np.testing.assert_array_equal(images[0, ..., 0], [[21, 25], [19, 255]])


@pytest.fixture(scope="module")
def two_class_model(tmp_path_factory) -> SimpleNamespace:
    """An untrained RGB 16x16 model with one sigmoid unit, and its classes.json beside it."""
    import keras
    from keras import layers

    folder = tmp_path_factory.mktemp("two-class")
    keras.utils.set_random_seed(1)
    inputs = keras.Input(shape=(16, 16, 3), dtype="uint8")
    x = layers.Conv2D(4, 3, activation="relu")(layers.Rescaling(1.0 / 255)(inputs))
    outputs = layers.Dense(1, activation="sigmoid")(layers.Flatten()(x))
    model = keras.Model(inputs, outputs)
    model.save(folder / "model.keras")
    (folder / "classes.json").write_text(json.dumps(["cat", "dog"]))
    return SimpleNamespace(folder=folder, model=model)


@pytest.mark.parametrize("resize", ["stretch", "pad"])
def test_photos_are_decoded_as_at_split_and_sigmoid_answers_in_two_classes(
    two_class_model, tmp_path, capsys, resize: str
) -> None:
    rng = np.random.default_rng(3)
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(rng.integers(0, 256, (20, 12, 3), dtype=np.uint8)).save(photos / "a.png")
    Image.fromarray(rng.integers(0, 256, (9, 30), dtype=np.uint8)).save(photos / "b.jpg")
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(photos / "c.webp", lossless=True)
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")
    params = (tmp_path / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(params.replace("resize: stretch", f"resize: {resize}"))

    rows = _run_predict(
        capsys,
        str(photos),
        "--model",
        str(two_class_model.folder),  # a strategy's folder, holding model.keras
        "--root",
        str(tmp_path),
    )

    assert list(rows[0]) == ["path", "predicted_class", "probability", "error", "model"]
    files = sorted(photos.iterdir())
    arrays = np.stack([decode_image(path, 16, resize) for path in files])
    dog = two_class_model.model.predict(arrays, verbose=0)[:, 0]
    for row, path, p_dog in zip(rows, files, dog, strict=True):
        assert row["path"] == str(path)
        assert row["predicted_class"] == ("dog" if p_dog > 0.5 else "cat")
        assert float(row["probability"]) == pytest.approx(max(p_dog, 1 - p_dog), abs=1e-5)


def test_choice_order_is_model_then_champion_and_never_a_local_substitute(tmp_path) -> None:
    """A local strategy's model answers only when --model names it: without --model it is the
    champion or an error (tests/code/test_model_checks.py runs the CLI's cases)."""
    models = tmp_path / "models"
    for strategy in ("scratch", "feature_extraction", "fine_tune"):
        (models / strategy).mkdir(parents=True)
        (models / strategy / "model.keras").write_bytes(b"")
    champion = "models:/digits-classifier/4"

    def no_champion() -> str:
        raise TrackingUnavailable("the tracking server at http://x does not answer")

    assert choose_model("m.keras", lambda: champion, models) == ModelChoice("m.keras", "--model")
    assert choose_model(None, lambda: champion, models).source == champion
    named = choose_model("scratch", no_champion, models)
    assert named == ModelChoice(str(models / "scratch"), "--model scratch", "models/scratch")
    with pytest.raises(TrackingUnavailable, match="no champion to predict with.*--model <strat"):
        choose_model(None, no_champion, models)


@pytest.fixture
def sqlite_experiment(tmp_path, monkeypatch):
    """An MLflow SQLite store in `tmp_path` (for this process and the CLI alike) and an
    experiment in it; the process's tracking URI is restored afterwards."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield mlflow.create_experiment(
            "predict", artifact_location=(tmp_path / "artifacts").as_uri()
        )
    finally:
        mlflow.set_tracking_uri(previous)


def test_the_registry_champion_is_used_by_default(
    digits, tmp_path, sqlite_experiment, capsys, caplog, monkeypatch
):
    """A champion in a SQLite store answers, in the class names it carries; predict sends it
    no more images a call than it takes (its batch limit, 7 here, for 30 files)."""
    import mlflow

    from pipeline import registry
    from pipeline.store import open_split

    monkeypatch.setattr("pipeline.serving.model.DEFAULT_MAX_BATCH", 7)
    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")  # dataset: digits
    test = open_split(digits.root / "data" / "prepared", "test")
    with mlflow.start_run(experiment_id=sqlite_experiment):
        info = registry.log_classifier(digits.model_file, test.classes, test.read([0, 1]))
    version = registry.register_challenger("digits-classifier", info.model_uri, {})
    registry.set_champion("digits-classifier", version.version)
    caplog.set_level(logging.INFO, logger="pipeline")
    # No --model, and a project without models/ or metrics: the champion it must be.
    rows = _run_predict(capsys, str(digits.images), "--root", str(tmp_path))
    champion = f"models:/digits-classifier/{version.version}"
    assert f"{champion} (the registry's champion)" in caplog.text
    _check_digit_rows(rows, digits)
    assert {row["model"] for row in rows} == {champion}


def test_predict_log_records_each_answer_as_the_server_does(
    digits, tmp_path, sqlite_experiment, capsys
):
    """--log: one record per readable file, from the registered champion with its embedding
    and the split's digest of the decoded image; a .keras file records without embeddings."""
    import mlflow

    from pipeline import registry
    from pipeline.monitoring.records import read_window
    from pipeline.store import image_digest, open_split

    shutil.copy(PROJECT_ROOT / "params.yaml", tmp_path / "params.yaml")  # dataset: digits
    prepared = digits.root / "data" / "prepared"
    train, test = open_split(prepared, "train"), open_split(prepared, "test")
    with mlflow.start_run(experiment_id=sqlite_experiment):
        info = registry.log_classifier(
            digits.model_file, test.classes, test.read([0, 1]), monitoring_splits=(train, test)
        )
    version = registry.register_challenger("digits-classifier", info.model_uri, {})
    registry.set_champion("digits-classifier", version.version)
    records_dir = tmp_path / "records"
    common = ["--root", str(tmp_path), "--log", "--predictions-dir", str(records_dir)]
    rows = _run_predict(capsys, str(digits.images), *common)
    _check_digit_rows(rows, digits)
    records = read_window(records_dir, last_n=1000)
    assert len(records) == len(digits.files), "one record per readable file, none for broken"
    assert set(records["source"]) == {"predict"}
    assert set(records["model_version"]) == {str(version.version)}
    x, _ = _digits()
    assert set(records["digest"]) == {image_digest(x[index]) for index in digits.files.values()}
    by_digest = {
        image_digest(x[index]): str(int(np.argmax(digits.expected[index])))
        for index in digits.files.values()
    }
    assert all(
        by_digest[d] == c
        for d, c in zip(records["digest"], records["predicted_class"], strict=True)
    )
    assert records["embedding"].map(len).eq(len(records["embedding"].iloc[0])).all()
    assert not list(records_dir.rglob("*.png")), "no image is kept without --keep-images"

    plain = tmp_path / "plain"
    _run_predict(
        capsys,
        str(digits.images),
        "--model",
        str(digits.model_file),
        "--root",
        str(tmp_path),
        "--log",
        "--predictions-dir",
        str(plain),
        "--keep-images",
    )
    records = read_window(plain, last_n=1000)
    assert len(records) == len(digits.files)
    assert records["embedding"].isna().all() and set(records["model_name"]) == {
        str(digits.model_file)
    }
    assert len(list(plain.rglob("*.png"))) == len(set(records["digest"]))


def test_help_lists_every_verb_on_one_line_and_describes_predict(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    listing = capsys.readouterr().out
    for verb in ("predict", "serve", "monitor", "retrain", "rollback", "sync-mlflow", "deps"):
        line = next(line for line in listing.splitlines() if line.strip().startswith(verb))
        assert len(line.split()) > 2, f"{verb} has no help on its line: {line!r}"
    for verb in ("predict", "serve", "monitor", "retrain", "rollback", "sync-mlflow", "deps"):
        with pytest.raises(SystemExit):
            cli.main([verb, "--help"])
        text = capsys.readouterr().out
        assert text.startswith(f"usage: pipeline {verb}")
        assert "--root" in text
    with pytest.raises(SystemExit):
        cli.main(["predict", "--help"])
    text = capsys.readouterr().out
    for option in ("--model", "--out", "--batch-size", "champion", "top2_probability"):
        assert option in text


def test_batch_size_must_be_positive(capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["predict", "x.png", "--batch-size", "0"])
    assert exited.value.code == 2
    assert "must be at least 1" in capsys.readouterr().err


def test_a_training_runs_model_answers_in_the_class_names_the_run_logged(
    digits, tmp_path, sqlite_experiment, capsys
) -> None:
    """`runs:/<id>/model` is a bare Keras model; its run holds classes.json, logged by training
    with the model (the same function sync-mlflow calls), so predict names the classes."""
    import keras
    import mlflow

    from pipeline.tracking.strategy_runs import log_training_outputs

    model = keras.saving.load_model(digits.model_file)
    example = np.zeros((2, 8, 8, 1), dtype=np.uint8)
    with mlflow.start_run(experiment_id=sqlite_experiment) as run:
        log_training_outputs(digits.root, model, example)
    source = f"runs:/{run.info.run_id}/model"
    capsys.readouterr()  # What logging printed; the CSV follows.
    rows = _run_predict(capsys, str(digits.images), "--model", source, "--root", str(tmp_path))
    _check_digit_rows(rows, digits)
    # A run without class names is refused with the ways that do work.
    with mlflow.start_run(experiment_id=sqlite_experiment) as bare:
        log_training_outputs(tmp_path / "empty", model, example)
    with pytest.raises(ModelError, match="without class names.*runs:/<run id>/model"):
        load_classifier(f"runs:/{bare.info.run_id}/model")
