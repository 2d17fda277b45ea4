"""The served model: image files or raw uint8 pixels in, class names and probabilities out.

MLflow logs this file as the model's code ("models from code"), so a registered version loads
anywhere MLflow, Keras, pandas and Pillow are installed, without this package. Its artifacts are
the Keras model (preprocessing included), the class names, in label order, and the training
manifest: the content digests of the images the model trained on, which the promotion gate
checks every later test split against.

Each request holds one column: `image` (encoded files: base64 in JSON, bytes in pandas), decoded
and resized exactly as the split stage decodes a file (pipeline.datasets.images.decode_image),
or `pixels` (uint8 arrays of the model's input size). A bad payload raises an MlflowException
with INVALID_PARAMETER_VALUE, which MLflow's scoring server answers with HTTP 400 and the message,
naming the image's index; the params flag `row_errors` fails only the bad image's row instead.

The model config's `backend` picks what computes the probabilities: `keras` (the default) runs
the Keras model; `onnx` runs the version's ONNX export (the artifact `export_onnx`, proven equal
to the Keras model on the test split when it was made, pipeline.export) through onnxruntime,
several times faster for a small convnet on a CPU. Requests and answers are the same either way;
embeddings (what the recorder stores) always come from the Keras model's penultimate layer.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.environment_variables import MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

try:
    from pipeline import columns as _columns
    from pipeline.datasets.images import BadImage, decode_image
    from pipeline.models.outputs import class_probabilities
except ImportError:
    # Loaded where this package is not installed: MLflow put the model's code (logged with
    # `code_paths`, see registry.log_classifier) on sys.path.
    import columns as _columns
    from images import BadImage, decode_image
    from outputs import class_probabilities

# The answer's columns, defined once in pipeline/columns.py (check_params reads them too).
ANSWER_COLUMNS = _columns.ANSWER_COLUMNS
ERROR = _columns.ERROR
LEADING_COLUMNS = _columns.LEADING_COLUMNS
MODEL_ALIAS = _columns.MODEL_ALIAS
MODEL_NAME = _columns.MODEL_NAME
MODEL_VERSION = _columns.MODEL_VERSION
PREDICTED_CLASS = _columns.PREDICTED_CLASS
PROBABILITY = _columns.PROBABILITY
TOP_CLASSES = _columns.TOP_CLASSES
TOP_PROBABILITIES = _columns.TOP_PROBABILITIES
TRAILING_COLUMNS = _columns.TRAILING_COLUMNS
IMAGE_COLUMN = "image"
PIXELS_COLUMN = "pixels"

ROW_ERRORS_PARAM = "row_errors"
TOP_K_PARAM = "top_k"
DEFAULT_TOP_K = 3
RESIZE_CONFIG = "resize"
MAX_BATCH_CONFIG = "max_batch"
DEFAULT_MAX_BATCH = 256
"""Images per request: a bound on the memory one request can take (decoded, every image of a
150x150 RGB model is 67 KB; a 12-megapixel photo is 36 MB while it is decoded)."""
MAX_PIXELS_CONFIG = "max_pixels"
DEFAULT_MAX_PIXELS = 40_000_000
"""Pixels one encoded image may declare (width x height) before it is refused unread: the
split's data.max_pixels, which registration passes in the model config. Images are decoded one
at a time, each within the decoder's memory budget (about 256 MB at its peak)."""
BACKEND_CONFIG = "backend"
KERAS_BACKEND = "keras"
ONNX_BACKEND = "onnx"
BACKENDS = (KERAS_BACKEND, ONNX_BACKEND)
DEFAULT_BACKEND = KERAS_BACKEND
"""What answers: the Keras model, or the version's ONNX export through onnxruntime."""
ONNX_MODEL_FILE = "model.onnx"
"""The file inside the `export_onnx` artifact (pipeline.export.formats.MODEL_FILES)."""
ONNX_SIGNATURE_FILE = "signature.json"
ONNX_INTRA_OP_THREADS = 1
"""Threads one onnxruntime call may use. One: the server runs each request in a thread of its
own, so concurrent requests already fill the cores, and the 32-px convnet takes 0.15 ms for one
image and 3 ms for 32 on one thread. Measured in process on 2 shared cores: 2 threads without
spinning were no faster, and onnxruntime's default (a spinning pool over every core) took a p99
of 10 to 12 ms for one image and halved a lone client's images/s at batch 32, its idle threads
spinning on the cores the requests need."""
MESSAGE_LIMIT = 900
"""Characters of an error message: answers stay under 1 KB whatever the reason's length."""

KERAS_MODEL_ARTIFACT = "keras_model"
CLASSES_ARTIFACT = "classes"
MANIFEST_ARTIFACT = "training_manifest"
PROJECTION_ARTIFACT = "embedding_projection"
"""The PCA projection (npz: `mean`, `components`) of the penultimate layer to a small
embedding, fitted on the training split at registration (pipeline.monitoring.reference)."""
REFERENCE_ARTIFACT = "monitoring_reference"
"""The test split's embeddings, predicted classes and confidences at registration: what
`pipeline monitor` compares served traffic with (pipeline.monitoring.reference)."""
EXPORT_ARTIFACT_PREFIX = "export_"
"""Artifacts `export_onnx`, `export_tflite_int8`...: the version's exports (pipeline.export), each
a folder with the model, signature.json and parity.json."""
ONNX_EXPORT_ARTIFACT = "export_onnx"
"""The version's ONNX export (a folder holding model.onnx), which `backend: onnx` runs."""
OUTPUT_LAYER = "predictions"
"""The name of every pipeline model's output layer (pipeline.models.heads); the embedding is
taken from its input."""
SCORING_SERVER_MODEL_PATH = "__pyfunc_model_path__"
"""Set by `mlflow models serve` in the processes that serve the model."""
REGISTERED_MODEL_META = "registered_model_meta"
"""What MLflow writes beside MLmodel when it downloads models:/<name>@<alias> (or /<version>)."""


class BadPayload(MlflowException):
    """A request the model cannot answer; MLflow's scoring server answers it with HTTP 400."""

    def __init__(self, message: str) -> None:
        if len(message) > MESSAGE_LIMIT:
            message = message[: MESSAGE_LIMIT - 3] + "..."
        self._own_message = message
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._own_message

    @message.setter
    def message(self, value: str) -> None:
        # The scoring server rewrites the message to "Failed to predict data '<the request>'
        # ...": megabytes for a batch of pixels, and the client's data echoed into logs. The
        # answer keeps the model's own message, which names the image and the problem.
        pass


class ImageClassifier(mlflow.pyfunc.PythonModel):
    """A Keras classifier that answers in class names, as Hugging Face's id2label does."""

    def load_context(self, context) -> None:
        import keras

        config = getattr(context, "model_config", None) or {}
        self.backend = served_backend(config)
        self.model = keras.saving.load_model(context.artifacts[KERAS_MODEL_ARTIFACT])
        shape = tuple(self.model.inputs[0].shape[1:])
        self.image_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
        with open(context.artifacts[CLASSES_ARTIFACT]) as stream:
            self.classes = [str(name) for name in json.load(stream)]
        clashing = sorted(set(self.classes) & set(ANSWER_COLUMNS))
        if clashing:
            raise MlflowException(f"class names {clashing} clash with the answer's own columns")
        self.resize = config.get(RESIZE_CONFIG, "stretch")
        self.max_batch = int(config.get(MAX_BATCH_CONFIG, DEFAULT_MAX_BATCH))
        self.max_pixels = int(config.get(MAX_PIXELS_CONFIG, DEFAULT_MAX_PIXELS))
        # Versions registered before manifests existed have none: None, not an empty set.
        self.training_manifest = None
        manifest = context.artifacts.get(MANIFEST_ARTIFACT)
        if manifest:
            with open(manifest) as stream:
                self.training_manifest = {line.strip() for line in stream if line.strip()}
        self.identity = registry_identity(Path(context.artifacts[KERAS_MODEL_ARTIFACT]))
        self.projection = _read_projection(context.artifacts.get(PROJECTION_ARTIFACT))
        self._feature_model = None
        self.observer = None
        """Set by a caller that records answers (the server, `pipeline predict --log`): called
        after each prediction as observer(answered images, their class probabilities)."""
        self._onnx: OnnxExport | None = None
        if self.backend == ONNX_BACKEND:
            self._onnx = open_onnx_export(
                context.artifacts.get(ONNX_EXPORT_ARTIFACT),
                Path(context.artifacts[KERAS_MODEL_ARTIFACT]),
                self.image_shape,
                describe_version(self.identity),
            )
        if os.environ.get(SCORING_SERVER_MODEL_PATH):
            keep_nagle_off()
        # Warm up what answers, for one image and for a batch: Keras traces its compiled
        # predict function (after two shapes it takes any batch size; about a second), and
        # onnxruntime plans its first runs' memory. Under `onnx` the Keras predict function is
        # never called, so it is not traced; the recorder's feature model traces on first use.
        for size in (1, 2):
            self._call_model(np.zeros((size, *self.image_shape), dtype=np.uint8))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        """One row per image: the predicted class and its probability, the top-k classes, one
        probability column per class name, the registry's name, version and aliases, and the
        error (None unless `row_errors` is set and the image could not be read)."""
        deadline = request_deadline()
        params = params or {}
        row_errors = bool(params.get(ROW_ERRORS_PARAM, False))
        top_k = int(params.get(TOP_K_PARAM, DEFAULT_TOP_K))
        if top_k < 1:
            raise BadPayload(f"params.{TOP_K_PARAM} must be at least 1, got {top_k}")
        items, column = _input_items(model_input)
        if len(items) == 0:
            raise BadPayload(
                f"empty batch: send at least one image in the `{IMAGE_COLUMN}` column (encoded "
                f"files, base64 in JSON) or the `{PIXELS_COLUMN}` column (uint8 arrays)"
            )
        if len(items) > self.max_batch:
            raise BadPayload(
                f"batch of {len(items)} images is over the limit of {self.max_batch} per "
                f"request: send at most {self.max_batch} images per request"
            )
        images, errors = self._read_items(items, column, row_errors, deadline)
        deadline.check(len(items), len(items))
        good = [index for index in range(len(items)) if index not in errors]
        probabilities = np.full((len(items), len(self.classes)), np.nan)
        observer = self.observer
        batch = None
        if good:
            batch = images if len(good) == len(items) else images[good]
            probabilities[good] = class_probabilities(self._call_model(batch))
        answer = self._answer(probabilities, errors, top_k)
        if observer is not None and batch is not None:
            # The answered images and their probabilities only: digests, embeddings (embed)
            # and files are the recorder's work, off the request path.
            observer(batch, probabilities[good])
        return answer

    def embed(self, images: np.ndarray) -> np.ndarray | None:
        """The embeddings of a uint8 batch (the penultimate layer on the version's projection),
        or None for a version registered without a projection."""
        if self.projection is None:
            return None
        return _project(self._features(images), self.projection)

    def call_with_features(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(penultimate features: the output layer's input, flattened; outputs) of one uint8
        batch: what embeddings are made from. The features are the Keras model's under either
        backend (an export holds no penultimate layer); the outputs are the backend's, as one
        probability column per class (a two-class Keras model's one sigmoid unit becomes two
        columns, as its ONNX export answers)."""
        return self._features(images), class_probabilities(self._call_model(images))

    def _features(self, images: np.ndarray) -> np.ndarray:
        if self._feature_model is None:
            self._feature_model = feature_model(self.model)
        features = np.asarray(self._feature_model.predict_on_batch(images), dtype=np.float32)
        return features.reshape(len(images), -1)

    def _read_items(
        self, items: list, column: str, row_errors: bool, deadline: Deadline
    ) -> tuple[np.ndarray, dict[int, str]]:
        """The items as one uint8 batch of the model's shape, and {index: reason} for those
        that could not be read (raised as BadPayload at the first one, unless `row_errors`).
        The request stops between two images once its deadline has passed."""
        if isinstance(items, np.ndarray):
            if items.shape[1:] == self.image_shape:
                return items, {}
            items = list(items)
        images = np.zeros((len(items), *self.image_shape), dtype=np.uint8)
        errors: dict[int, str] = {}
        for index, item in enumerate(items):
            deadline.check(index, len(items))
            try:
                images[index] = self._read_item(item, column)
            except (ValueError, TypeError, OverflowError) as problem:
                reason = f"image {index}: {problem}"
                if not row_errors:
                    raise BadPayload(
                        f"{reason}. Nothing was predicted; set params.{ROW_ERRORS_PARAM}=true "
                        "to get answers for the other images"
                    ) from None
                errors[index] = reason
        return images, errors

    def _read_item(self, item, column: str) -> np.ndarray:
        """One image of the request as a (H, W, C) uint8 array of the model's shape."""
        height, _, channels = self.image_shape
        if item is None:
            raise ValueError("no image (null)")
        if column == PIXELS_COLUMN:
            return check_pixels(item, self.image_shape)
        if isinstance(item, np.bytes_):
            # MLflow parses `{"inputs": {"image": [...]}}` into numpy bytes of the base64 text
            # (the dataframe formats arrive decoded, as Python bytes).
            item = item.decode("ascii", errors="replace")
        if isinstance(item, str):
            item = strict_base64(item)
        if not isinstance(item, bytes | bytearray | memoryview):
            raise ValueError(
                f"an `{IMAGE_COLUMN}` is an encoded file (base64 text in JSON, bytes in "
                f"pandas), got {type(item).__name__}; send arrays in the `{PIXELS_COLUMN}` column"
            )
        try:
            return decode_image(
                bytes(item), height, self.resize, channels, max_pixels=self.max_pixels
            )
        except BadImage as error:
            raise ValueError(str(error)) from None

    def _call_model(self, images: np.ndarray) -> np.ndarray:
        """The model's output layer on one uint8 batch, by the backend: the ONNX export's
        `probabilities` (the Keras output layer's values, in float32), or the Keras model's.
        predict_on_batch runs the compiled predict function on the batch as it is:
        model.predict's data adapter and callbacks cost about 30 ms a call, and an eager call
        runs layer by layer (25 ms at batch 1 on 2 cores)."""
        onnx = self._onnx
        if onnx is not None:
            return onnx.predict(images)
        return np.asarray(self.model.predict_on_batch(images))

    def _answer(
        self, probabilities: np.ndarray, errors: dict[int, str], top_k: int
    ) -> pd.DataFrame:
        classes = np.asarray(self.classes, dtype=object)
        k = min(top_k, len(self.classes))
        order = np.argsort(-np.nan_to_num(probabilities, nan=0.0), axis=1, kind="stable")[:, :k]
        top = np.take_along_axis(probabilities, order, axis=1)
        columns: dict[str, object] = {
            PREDICTED_CLASS: classes[order[:, 0]],
            PROBABILITY: top[:, 0],
            TOP_CLASSES: classes[order].tolist(),
            TOP_PROBABILITIES: top.tolist(),
        }
        columns.update(zip(self.classes, probabilities.T, strict=True))
        name, version, aliases = self.identity
        columns.update({MODEL_NAME: name, MODEL_VERSION: version, MODEL_ALIAS: aliases})
        columns[ERROR] = None
        frame = pd.DataFrame(columns)
        if errors:
            # None, not NaN, in the failed rows: NaN is not JSON, and clients choke on it.
            frame = frame.astype({column: object for column in frame.columns})
            rows = list(errors)
            frame.loc[rows, [PREDICTED_CLASS, PROBABILITY, *self.classes]] = None
            for row in rows:
                frame.at[row, TOP_CLASSES] = []
                frame.at[row, TOP_PROBABILITIES] = []
                frame.at[row, ERROR] = errors[row]
        return frame


def served_backend(config: dict) -> str:
    """The backend the model config asks for (`keras` when it names none); MlflowException
    naming the value and the choices otherwise."""
    backend = config.get(BACKEND_CONFIG) or DEFAULT_BACKEND
    if backend not in BACKENDS:
        raise MlflowException(
            f"model_config {BACKEND_CONFIG}={backend!r} is not a serving backend: choose one of "
            f"{', '.join(BACKENDS)}",
            error_code=INVALID_PARAMETER_VALUE,
        )
    return str(backend)


def describe_version(identity: tuple[str | None, str | None, str | None]) -> str:
    """`version 3 of 'flowers'` for a registered version, `this model` for one loaded from a
    run or a folder: how load errors name what failed."""
    name, version, _ = identity
    return f"version {version} of {name!r}" if name and version else "this model"


def missing_onnx_export(who: str) -> str:
    """Why `who` (see describe_version) cannot serve with the onnx backend, and what to do."""
    return (
        f"{who} has no ONNX export (no artifact `{ONNX_EXPORT_ARTIFACT}` holding "
        f"{ONNX_MODEL_FILE}), so it cannot serve with backend onnx: register a version with "
        "its ONNX export (promote.exports including onnx; a model registered before cannot "
        "gain one: `pipeline retrain --force` trains and registers a new version), or serve "
        "this one with --backend keras (serve.backend: keras)"
    )


class OnnxExport:
    """A version's ONNX export loaded into onnxruntime: uint8 batches in, the output layer's
    values out. onnxruntime's `run` is safe to call from several request threads at once."""

    def __init__(self, session) -> None:
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name

    def predict(self, images: np.ndarray) -> np.ndarray:
        feed = {self.input_name: np.ascontiguousarray(images, dtype=np.uint8)}
        return self.session.run([self.output_name], feed)[0]


def open_onnx_export(
    folder: str | None, keras_file: Path, image_shape: tuple[int, int, int], who: str
) -> OnnxExport:
    """The ONNX export in artifact folder `folder` as an onnxruntime session on the CPU (every
    graph optimisation, ONNX_INTRA_OP_THREADS threads, no spinning), checked to take this
    version's uint8 images and, by its signature.json, to have been made from this version's
    own Keras file. MlflowException naming `who`, the problem and the fix otherwise."""
    model_file = Path(folder) / ONNX_MODEL_FILE if folder else None
    if model_file is None or not model_file.is_file():
        raise MlflowException(missing_onnx_export(who), error_code=INVALID_PARAMETER_VALUE)
    _check_export_source(model_file.parent / ONNX_SIGNATURE_FILE, keras_file, who)
    try:
        import onnxruntime
    except ImportError:
        raise MlflowException(
            f"{who} is asked to serve with backend onnx, but onnxruntime is not installed here: "
            "install the version's requirements (they pin onnxruntime), or serve with "
            "--backend keras"
        ) from None
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = ONNX_INTRA_OP_THREADS
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(
        str(model_file), sess_options=options, providers=["CPUExecutionProvider"]
    )
    model_input = session.get_inputs()[0]
    shape = tuple(model_input.shape[1:])
    if model_input.type != "tensor(uint8)" or shape != tuple(image_shape):
        raise MlflowException(
            f"{who}: its ONNX export takes {model_input.type} of shape {shape}, the Keras model "
            f"uint8 of shape {tuple(image_shape)}: re-export it (`pipeline export --format "
            "onnx`) and register it again, or serve with --backend keras"
        )
    return OnnxExport(session)


def _check_export_source(signature_file: Path, keras_file: Path, who: str) -> None:
    """An export proved equal to another Keras model must not answer for this one: its
    signature.json names the SHA-256 of the Keras file it was made from."""
    if not signature_file.is_file():
        return
    with open(signature_file) as stream:
        expected = ((json.load(stream) or {}).get("source") or {}).get("keras_model_sha256")
    if not expected:
        return
    digest = hashlib.sha256()
    with open(keras_file, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise MlflowException(
            f"{who}: its ONNX export was made from another Keras model (SHA-256 "
            f"{expected[:16]}..., this version's is {digest.hexdigest()[:16]}...), so its "
            "parity proves nothing here: register the version again with its own export, or "
            "serve with --backend keras"
        )


def feature_model(model):
    """A model from `model`'s inputs to its output layer's input, sharing its weights: the
    penultimate layer, what embeddings are made from. The transfer strategies' output layer
    sits inside their nested `head` model: that part is cut there, and the outer graph is
    rebuilt around it (clone_model keeps every other layer, weights and all)."""
    import keras

    try:
        return keras.Model(model.inputs, model.get_layer(OUTPUT_LAYER).input)
    except ValueError:
        pass  # no top-level output layer, or one not connected to the inputs
    for layer in reversed(model.layers):
        if isinstance(layer, keras.Model):
            try:
                inner = feature_model(layer)
            except ValueError:
                continue
            return keras.models.clone_model(
                model,
                clone_function=lambda each, cut=layer, part=inner: part if each is cut else each,
            )
    last = model.layers[-1] if model.layers else None
    if isinstance(last, keras.layers.Dense):
        # A classifier built elsewhere, whose output layer has another name.
        return keras.Model(model.inputs, last.input)
    raise ValueError(
        f"the model has no layer named {OUTPUT_LAYER!r}, nor a Dense output layer, to take "
        "embeddings from"
    )


def _read_projection(path: str | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, components) of the version's embedding projection; None for versions
    registered without one (their answers are recorded without embeddings)."""
    if not path:
        return None
    with np.load(path) as saved:
        return saved["mean"].astype(np.float32), saved["components"].astype(np.float32)


def _project(features: np.ndarray, projection: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The embedding: centred features on the projection's components (the same formula as
    pipeline.monitoring.reference.apply_projection, which this file cannot import)."""
    mean, components = projection
    return ((features - mean) @ components.T).astype(np.float32)


class Deadline:
    """When a request's work must stop: MLflow's scoring server answers 504 after
    MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT seconds, but its handler thread goes on unless the
    model itself stops."""

    def __init__(self, seconds: float, clock=time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.at = clock() + seconds

    def check(self, done: int, total: int) -> None:
        """BadPayload once the deadline has passed, saying how far the request got."""
        if self.clock() > self.at:
            raise BadPayload(
                f"stopped after {done} of {total} images: the request ran past the server's "
                f"timeout of {self.seconds:g} s (MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT); send "
                "fewer or smaller images per request"
            )


def request_deadline() -> Deadline:
    """The deadline of a request starting now, from the scoring server's own timeout."""
    try:
        seconds = float(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.get())
    except (TypeError, ValueError):
        seconds = float(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT.default)
    return Deadline(seconds)


def strict_base64(text: str) -> bytes:
    """The bytes of base64 `text`, refusing any character outside the alphabet (whitespace and
    line breaks included) and bad padding; ValueError saying which character, not echoing it."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        pass
    alphabet = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
    offset = next((i for i, char in enumerate(text) if char not in alphabet), None)
    if offset is not None:
        code = ord(text[offset])
        raise ValueError(
            f"not base64: character U+{code:04X} at offset {offset} is outside the base64 "
            "alphabet (send the file encoded on one line, e.g. `base64 -w0`)"
        )
    raise ValueError(f"not base64: {len(text)} characters, wrongly padded or cut short")


def check_pixels(values, image_shape: tuple[int, int, int]) -> np.ndarray:
    """`values` (one image: (H, W), (H, W, 1) or (H, W, 3) integers in 0..255) as uint8 of
    `image_shape`, gray or RGB converted as Pillow converts them; ValueError naming the problem.
    """
    try:
        array = np.asarray(values)
    except ValueError:
        # numpy refuses nested lists of unequal lengths ("inhomogeneous shape").
        raise ValueError(
            "pixels must be a (height, width, channels) array: its rows are of unequal lengths"
        ) from None
    if array.dtype == object:
        raise ValueError("pixels must be a (height, width, channels) array of numbers")
    if array.dtype.kind == "f" and np.array_equal(array, np.round(array)):
        array = array.astype(np.int64)
    if array.dtype.kind not in "ui":
        raise ValueError(f"pixels must be integers 0..255 (uint8), got dtype {array.dtype}")
    if array.size and (array.min() < 0 or array.max() > 255):
        raise ValueError(f"pixels must be in 0..255 (uint8), got {array.min()}..{array.max()}")
    height, width, channels = image_shape
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[:2] != (height, width) or array.shape[2] not in (1, 3):
        raise ValueError(
            f"pixels of shape {np.shape(values)}; the model takes ({height}, {width}, {channels})"
            f" (or ({height}, {width}), ({height}, {width}, {4 - channels})). Send the encoded "
            f"file in the `{IMAGE_COLUMN}` column to have it resized as the split stage does"
        )
    array = array.astype(np.uint8)
    if array.shape[2] == channels:
        return array
    if channels == 3:
        return np.repeat(array, 3, axis=2)
    # Pillow's own fixed-point ITU-R 601 luma, so a gray image is what `convert("L")` gives.
    rgb = array.astype(np.uint32)
    luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
    return luma[..., None].astype(np.uint8)


def keep_nagle_off() -> None:
    """Set TCP_NODELAY on every connection this process's asyncio servers accept.

    `mlflow models serve --workers N` (N > 1) runs uvicorn's supervisor, which hands each worker
    a listening socket whose `proto` is 0; asyncio sets TCP_NODELAY only where `proto` is TCP,
    so Nagle's algorithm stays on and every keep-alive answer waits for the client's delayed
    ACK: 40 ms or more a request, even for /ping (Kludex/uvicorn#3149, open in uvicorn 0.54).
    """
    import asyncio.base_events
    import socket

    def set_nodelay(sock: socket.socket) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.type == socket.SOCK_STREAM:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    asyncio.base_events._set_nodelay = set_nodelay


def _input_items(model_input) -> tuple[list | np.ndarray, str]:
    """The request's images in order, encoded files (bytes, or base64 str) or pixel arrays, and
    the column they came in.

    A uint8 batch of arrays (a direct call, as the promotion gate makes) stays one array.
    MLflow turns `{"inputs": {"image": [...]}}` into one row per image, and a dict of arrays
    into rows too; a cell holding a list of several images is unpacked in place. Images of
    unequal sizes (ragged lists) stay separate items, each checked on its own.
    """
    if isinstance(model_input, np.ndarray) and model_input.dtype == np.uint8:
        return (model_input if model_input.ndim == 4 else model_input[None]), PIXELS_COLUMN
    if isinstance(model_input, dict):
        model_input = pd.DataFrame({key: _rows(value) for key, value in model_input.items()})
    if not isinstance(model_input, pd.DataFrame):
        raise BadPayload(
            f"send a table with an `{IMAGE_COLUMN}` column (encoded files) or a "
            f"`{PIXELS_COLUMN}` column (uint8 arrays), got {type(model_input).__name__}"
        )
    present = [name for name in (IMAGE_COLUMN, PIXELS_COLUMN) if name in model_input.columns]
    if len(present) != 1:
        raise BadPayload(
            f"send exactly one of the columns `{IMAGE_COLUMN}` (encoded files, base64 in JSON) "
            f"and `{PIXELS_COLUMN}` (uint8 arrays); got columns {list(model_input.columns)}"
        )
    items: list = []
    for cell in model_input[present[0]]:
        if present[0] == IMAGE_COLUMN and isinstance(cell, list | tuple | np.ndarray):
            items.extend(cell)
        elif present[0] == PIXELS_COLUMN and _is_batch(cell):
            items.extend(_rows(cell))
        else:
            items.append(cell)
    return items, present[0]


def _rows(value) -> list:
    """`value`'s first axis as a list, without making one array of it (ragged lists stay)."""
    if isinstance(value, list | tuple):
        return list(value)
    array = np.asarray(value)
    return list(array) if array.ndim else [array.item()]


def _is_batch(cell) -> bool:
    """Whether a `pixels` cell holds several images (4 dimensions); ragged ones are judged by
    their first image."""
    try:
        return np.ndim(cell) == 4
    except ValueError:
        return isinstance(cell, list | tuple) and len(cell) > 0 and _ndim(cell[0]) == 3


def _ndim(value) -> int:
    try:
        return int(np.ndim(value))
    except ValueError:
        return -1


def registry_identity(artifact: Path) -> tuple[str | None, str | None, str | None]:
    """(registered name, version, its aliases joined by ",") of the model holding `artifact`,
    from the file MLflow writes when it downloads a models:/ URI and from the registry, at load
    time; Nones for a model loaded from a run or a folder."""
    meta = next(
        (
            folder / REGISTERED_MODEL_META
            for folder in artifact.parents
            if (folder / "MLmodel").is_file()
        ),
        None,
    )
    if meta is None or not meta.is_file():
        return None, None, None
    from mlflow.utils.yaml_utils import read_yaml

    registered = read_yaml(str(meta.parent), REGISTERED_MODEL_META)
    name, version = registered.get("model_name"), registered.get("model_version")
    if not name or version is None:
        return None, None, None
    try:
        aliases = mlflow.MlflowClient().get_model_version(name, str(version)).aliases
    except Exception:  # noqa: BLE001 - no registry here: the name and version are still known
        aliases = []
    return str(name), str(version), ",".join(sorted(aliases)) or None


def served_input(input_schema, images: np.ndarray):
    """What a loaded version's predict takes for a uint8 batch: the batch itself for a version
    logged with a tensor signature (before encoded images), else a `pixels` column."""
    if input_schema is None or input_schema.is_tensor_spec():
        return images
    return pd.DataFrame({PIXELS_COLUMN: list(images)})


def class_columns(columns) -> list[str]:
    """The class-probability columns of an answer, in order (any version's answer)."""
    return [str(column) for column in columns if column not in ANSWER_COLUMNS]


set_model(ImageClassifier())
