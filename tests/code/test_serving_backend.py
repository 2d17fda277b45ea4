"""The served classifier's backends (pipeline.serving.model): under `backend: onnx` it answers
through its ONNX export as it does through Keras (same columns, classes and, within 1e-4,
probabilities) without tracing Keras' predict; a version without its export, or with an export
of another model, is refused naming what to do; the holder and `pipeline serve`'s options carry
the backend to every version they load, and never swap in one that cannot serve with it.

The models are tiny Keras classifiers exported with the project's own exporter
(pipeline.export), loaded in process; real servers over HTTP are in
tests/integration/test_serve_onnx.py.
"""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow.exceptions import MlflowException
from PIL import Image

from pipeline.errors import ConfigError, ModelError, RegistryError
from pipeline.registry import _classifier_artifacts, _Context
from pipeline.serving import model as serving
from pipeline.serving.holder import VersionHolder
from pipeline.serving.server import SERVE_BACKENDS, ServeOptions, answer_records
from pipeline.serving.verification import served_config
from pipeline.store import ArraySplit
from tests.serving_models import tracking_store

CLASSES = ["cat", "dog", "bird", "fish"]
SHAPE = (12, 12, 3)
TOLERANCE = 1e-4


@dataclass(frozen=True)
class Version:
    """A classifier's artifacts as a logged version holds them, its ONNX export included."""

    model_file: Path
    classes: list[str]
    export: Path
    """The export folder (model.onnx, signature.json, parity.json)."""

    def artifacts(self, scratch: Path, with_export: bool = True) -> dict[str, str]:
        scratch.mkdir(parents=True, exist_ok=True)
        artifacts = _classifier_artifacts(self.model_file, self.classes, scratch, None)
        if with_export:
            artifacts[serving.ONNX_EXPORT_ARTIFACT] = str(self.export)
        return artifacts


def _make_version(folder: Path, classes: list[str], shape=SHAPE, seed: int = 0) -> Version:
    """A small convnet (uint8 in, rescaled inside, softmax or one sigmoid unit out), saved and
    exported to ONNX by pipeline.export, which proves parity on a few images."""
    import keras
    from keras import layers

    from pipeline.export.exporter import ExportSource, export_model

    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=shape, dtype="uint8")
    hidden = layers.Conv2D(8, 3, activation="relu")(layers.Rescaling(1 / 255)(inputs))
    hidden = layers.Dense(16, activation="relu")(layers.Flatten()(hidden))
    units = 1 if len(classes) == 2 else len(classes)
    outputs = layers.Dense(
        units, activation="sigmoid" if units == 1 else "softmax", name=serving.OUTPUT_LAYER
    )(hidden)
    folder.mkdir(parents=True, exist_ok=True)
    model_file = folder / "model.keras"
    keras.Model(inputs, outputs).save(model_file)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(16, *shape), dtype=np.uint8)
    test = ArraySplit(images, rng.integers(0, len(classes), size=16), classes)
    exported = export_model(
        ExportSource(model_file, classes, str(model_file)), "onnx", "none", test, None, folder
    )
    return Version(model_file, classes, exported.folder)


@pytest.fixture(scope="module")
def version(tmp_path_factory) -> Version:
    return _make_version(tmp_path_factory.mktemp("version"), CLASSES)


@pytest.fixture(scope="module")
def two_classes(tmp_path_factory) -> Version:
    return _make_version(tmp_path_factory.mktemp("binary"), ["no", "yes"], seed=1)


def _classifier(artifacts: dict[str, str], backend: str | None) -> serving.ImageClassifier:
    config = {} if backend is None else {serving.BACKEND_CONFIG: backend}
    classifier = serving.ImageClassifier()
    classifier.load_context(_Context(artifacts, config))
    return classifier


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _requests(shape=SHAPE, count: int = 12) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same images as PNG files of mixed sizes and modes, and as pixels of the model's
    size."""
    rng = np.random.default_rng(5)
    files = []
    for index in range(count):
        side = shape[0] * (1 + index % 4)
        pixels = rng.integers(0, 256, size=(side, side + index, 3), dtype=np.uint8)
        files.append(_png(pixels if index % 3 else pixels[..., 0]))
    pixels = rng.integers(0, 256, size=(count, *shape), dtype=np.uint8)
    return (
        pd.DataFrame({serving.IMAGE_COLUMN: files}),
        pd.DataFrame({serving.PIXELS_COLUMN: list(pixels)}),
    )


@pytest.mark.parametrize("fixture", ["version", "two_classes"])
def test_the_onnx_backend_answers_as_the_keras_backend(request, tmp_path, fixture) -> None:
    chosen: Version = request.getfixturevalue(fixture)
    keras_backend = _classifier(chosen.artifacts(tmp_path / "keras"), None)
    onnx_backend = _classifier(chosen.artifacts(tmp_path / "onnx"), "onnx")
    assert (keras_backend.backend, onnx_backend.backend) == ("keras", "onnx")
    for frame in _requests():
        expected = keras_backend.predict(None, frame, {"top_k": 2})
        answer = onnx_backend.predict(None, frame, {"top_k": 2})
        assert list(answer.columns) == list(expected.columns)
        assert (
            answer[serving.PREDICTED_CLASS].tolist() == expected[serving.PREDICTED_CLASS].tolist()
        )
        assert answer[serving.TOP_CLASSES].tolist() == expected[serving.TOP_CLASSES].tolist()
        difference = np.abs(
            answer[chosen.classes].to_numpy(np.float64)
            - expected[chosen.classes].to_numpy(np.float64)
        )
        assert difference.max() <= TOLERANCE
        # The answer is class probabilities either way: a sigmoid unit became two columns.
        assert np.allclose(answer[chosen.classes].sum(axis=1), 1.0, atol=1e-5)


def test_the_onnx_backend_never_traces_keras_predict_and_keeps_embeddings(
    version: Version, tmp_path
) -> None:
    classifier = _classifier(version.artifacts(tmp_path), "onnx")
    images = np.random.default_rng(2).integers(0, 256, size=(3, *SHAPE), dtype=np.uint8)
    classifier.predict(None, images)
    # The warm-up and the request ran onnxruntime only: Keras built no predict function.
    assert classifier.model.predict_function is None
    features, outputs = classifier.call_with_features(images)
    assert features.shape == (3, 16)  # the Keras model's penultimate layer
    keras_outputs = np.asarray(classifier.model.predict_on_batch(images))
    assert np.abs(outputs - keras_outputs).max() <= TOLERANCE


def test_keras_is_the_default_backend(version: Version, tmp_path) -> None:
    classifier = _classifier(version.artifacts(tmp_path, with_export=False), None)
    assert classifier.backend == serving.DEFAULT_BACKEND == "keras"
    assert classifier.model.predict_function is not None  # traced at load, as before


def test_an_unknown_backend_is_refused_naming_the_choices(version: Version, tmp_path) -> None:
    with pytest.raises(MlflowException, match=r"backend='tflite'.*keras, onnx"):
        _classifier(version.artifacts(tmp_path), "tflite")


def test_onnx_without_the_export_is_refused_saying_what_to_do(version: Version, tmp_path) -> None:
    with pytest.raises(MlflowException) as raised:
        _classifier(version.artifacts(tmp_path, with_export=False), "onnx")
    message = raised.value.message
    assert "this model has no ONNX export" in message
    assert serving.ONNX_EXPORT_ARTIFACT in message
    assert "promote.exports" in message
    assert "--backend keras" in message


def test_an_export_of_another_keras_model_is_refused(
    version: Version, tmp_path_factory, tmp_path
) -> None:
    other = _make_version(tmp_path_factory.mktemp("other"), CLASSES, seed=3)
    artifacts = version.artifacts(tmp_path)
    artifacts[serving.ONNX_EXPORT_ARTIFACT] = str(other.export)
    with pytest.raises(MlflowException, match="made from another Keras model"):
        _classifier(artifacts, "onnx")


def test_an_export_of_another_input_shape_is_refused(
    version: Version, tmp_path_factory, tmp_path
) -> None:
    other = _make_version(tmp_path_factory.mktemp("wide"), CLASSES, shape=(12, 16, 3))
    # Without its signature the export's source is unknown: the session's input is checked.
    signature = other.export / serving.ONNX_SIGNATURE_FILE
    signature.unlink()
    artifacts = version.artifacts(tmp_path)
    artifacts[serving.ONNX_EXPORT_ARTIFACT] = str(other.export)
    with pytest.raises(MlflowException, match=r"takes tensor\(uint8\) of shape \(12, 16, 3\)"):
        _classifier(artifacts, "onnx")


# --- what a downloaded version is loaded with (pipeline.serving.verification) -------------------


def _downloaded(folder: Path, *, logged_backend: bool = True, export: Path | None = None) -> Path:
    """A downloaded version's folder as verification reads it: its MLmodel's pyfunc flavor
    (the logged model config, the artifacts) and the export's files where it lists them."""
    config = {serving.RESIZE_CONFIG: "stretch"}
    if logged_backend:
        config[serving.BACKEND_CONFIG] = serving.DEFAULT_BACKEND
    artifacts = {serving.KERAS_MODEL_ARTIFACT: {"path": "artifacts/model.keras"}}
    if export is not None:
        shutil.copytree(export, folder / "artifacts" / "export_onnx")
        artifacts[serving.ONNX_EXPORT_ARTIFACT] = {"path": "artifacts/export_onnx"}
    flavor = {"loader_module": "mlflow.pyfunc.model", "config": config, "artifacts": artifacts}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": flavor}}))
    return folder


WHO = "version 7 of 'flowers'"
ONNX = {serving.BACKEND_CONFIG: "onnx"}
KERAS = {serving.BACKEND_CONFIG: "keras"}


def test_a_version_with_its_export_is_loaded_with_the_backend(version: Version, tmp_path) -> None:
    folder = _downloaded(tmp_path, export=version.export)
    assert served_config(folder, WHO, ONNX) == ONNX
    assert served_config(folder, WHO, KERAS) == KERAS
    assert served_config(folder, WHO, None) is None


def test_onnx_for_a_version_without_its_export_is_refused_before_loading(tmp_path) -> None:
    folder = _downloaded(tmp_path)
    with pytest.raises(ModelError) as raised:
        served_config(folder, WHO, ONNX)
    message = str(raised.value)
    assert message.startswith(f"{WHO} has no ONNX export")
    assert serving.ONNX_EXPORT_ARTIFACT in message and "--backend keras" in message


def test_a_version_logged_without_the_backend_key_is_not_served_onnx_silently(
    version: Version, tmp_path
) -> None:
    # MLflow would drop the key with a warning and load the Keras backend: refused instead.
    folder = _downloaded(tmp_path, logged_backend=False, export=version.export)
    with pytest.raises(ModelError, match=f"{WHO} was logged without a `backend` key"):
        served_config(folder, WHO, ONNX)
    # The default backend needs no key: it is left out, so MLflow warns of nothing.
    assert served_config(folder, WHO, KERAS) is None


# --- pipeline serve's options and the holder ----------------------------------------------------


def test_the_served_models_export_names_are_the_exporters() -> None:
    """model.py cannot import pipeline.export (it loads without the package): its copies of
    the export's file names must stay the exporter's."""
    from pipeline.export.formats import MODEL_FILES, SIGNATURE_FILE
    from pipeline.registry import export_artifact

    assert MODEL_FILES["onnx"] == serving.ONNX_MODEL_FILE
    assert SIGNATURE_FILE == serving.ONNX_SIGNATURE_FILE
    assert export_artifact("onnx") == serving.ONNX_EXPORT_ARTIFACT


def test_serve_options_carry_the_backend_through_json() -> None:
    options = ServeOptions("flowers", "sqlite:///mlflow.db", backend="onnx")
    assert ServeOptions.from_json(options.to_json()) == options
    assert ServeOptions("flowers", "sqlite:///mlflow.db").backend == "keras"
    assert SERVE_BACKENDS == serving.BACKENDS


def test_the_servers_answer_records_are_mlflows_json(version: Version, tmp_path) -> None:
    """pipeline serve hands MLflow's app the answer as records it builds itself: the JSON a
    client gets must be byte for byte what MLflow writes for the DataFrame."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    classifier = _classifier(version.artifacts(tmp_path), "onnx")
    files, _ = _requests()
    broken = files.copy()
    broken.loc[2, serving.IMAGE_COLUMN] = b"not an image"
    for frame, params in ((files, {}), (broken, {serving.ROW_ERRORS_PARAM: True})):
        answer = classifier.predict(None, frame, params)
        expected, written = io.StringIO(), io.StringIO()
        predictions_to_json(answer, expected)
        predictions_to_json(answer_records(answer), written)
        assert written.getvalue() == expected.getvalue()
    assert '"error": "image 2: ' in written.getvalue()


def test_serve_options_refuse_an_unknown_backend() -> None:
    with pytest.raises(ConfigError, match=r"'tensorrt' is not one of keras, onnx"):
        ServeOptions("flowers", "sqlite:///mlflow.db", backend="tensorrt")


def test_the_holder_serves_onnx_and_never_swaps_in_a_version_without_its_export(
    version: Version, template_store, tmp_path
) -> None:
    """Real versions in a real registry: version 1 carries its ONNX export, version 2 not."""
    from pipeline import registry

    shutil.copy(template_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    name = "flowers"
    example = np.zeros((1, *SHAPE), dtype=np.uint8)
    with tracking_store(uri):
        experiment = mlflow.create_experiment("backend", (tmp_path / "mlruns").as_uri())
        for exports in ({"onnx": version.export}, None):
            with mlflow.start_run(experiment_id=experiment):
                info = registry.log_classifier(
                    version.model_file, CLASSES, example, exports=exports
                )
            registry.register_challenger(name, info.model_uri, {})
        registry.set_champion(name, "1")
        holder = VersionHolder(name, backend="onnx")
        try:
            served = holder.load_initial()
            assert (served.version, served.backend) == ("1", "onnx")
            assert holder.status()["backend"] == "onnx"
            registry.set_champion(name, "2")
            outcome = holder.poll_once()
            status = holder.status()
            assert outcome.startswith("version 2 failed")
            assert (status["version"], status["backend"]) == ("1", "onnx")
            assert status["failed_version"] == "2"
            assert "version 2 of 'flowers' has no ONNX export" in status["failure"]
        finally:
            holder.stop()
        # Started on it, the onnx server refuses version 2 at once, saying why.
        fresh = VersionHolder(name, backend="onnx")
        try:
            with pytest.raises(RegistryError, match=r"version 2 of flowers \(@champion\) cannot"):
                fresh.load_initial()
        finally:
            fresh.stop()
        # The keras backend serves it.
        keras_holder = VersionHolder(name, backend="keras")
        try:
            assert keras_holder.load_initial().backend == "keras"
        finally:
            keras_holder.stop()


def test_an_onnx_export_changed_after_registration_never_answers(
    version: Version, template_store, tmp_path
) -> None:
    """The file that answers under onnx is the one registered: its SHA-256 (the version's
    export.onnx.sha256 tag, set by the promote stage) is checked before it loads, as the
    Keras file's is; keras still serves the version."""
    import onnx

    from pipeline import registry
    from pipeline.errors import ModelError
    from pipeline.promotion import ExportsMade
    from pipeline.serving.verification import ONNX_SHA_TAG, load_verified_version
    from pipeline.store import sha256_of

    shutil.copy(template_store, tmp_path / "mlflow.db")
    name = "tampered"
    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        experiment = mlflow.create_experiment("tamper", (tmp_path / "mlruns").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            info = registry.log_classifier(
                version.model_file,
                CLASSES,
                np.zeros((1, *SHAPE), dtype=np.uint8),
                exports={"onnx": version.export},
            )
        number = registry.register_challenger(name, info.model_uri, {}).version
        made = ExportsMade()
        made.figures = {"onnx": json.loads((version.export / "parity.json").read_text())}
        made.digests = {"onnx": sha256_of(version.export / "model.onnx")}
        registry.tag_exports(name, number, made.tags())
        tags = mlflow.MlflowClient().get_model_version(name, number).tags
        assert tags[ONNX_SHA_TAG] == made.digests["onnx"]
        # Re-promoted later, the version's card lists the exports read back from these tags.
        carried = registry.version_exports(name, number)
        assert carried["onnx"]["passed"] and carried["onnx"]["top1_agreement"] == 1.0
        assert carried["onnx"]["runtime"] == "onnxruntime"
        loaded = load_verified_version(name, number, tmp_path / "good", {"backend": "onnx"})
        assert loaded.unwrap_python_model().backend == "onnx"

        # Someone with write access to the artifact store moves one output bias.
        stored = next((tmp_path / "mlruns").rglob("onnx/model.onnx"))
        graph = onnx.load(str(stored))
        bias = next(item for item in graph.graph.initializer if item.dims == [len(CLASSES)])
        values = onnx.numpy_helper.to_array(bias).copy()
        values[0] += 50.0
        bias.CopyFrom(onnx.numpy_helper.from_array(values, bias.name))
        onnx.save(graph, str(stored))
        with pytest.raises(
            ModelError, match=r"its ONNX export model.onnx has SHA-256 .* registered"
        ):
            load_verified_version(name, number, tmp_path / "onnx", {"backend": "onnx"})
        kept = load_verified_version(name, number, tmp_path / "keras", {"backend": "keras"})
        assert kept.unwrap_python_model().backend == "keras"
