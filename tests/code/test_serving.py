"""The served classifier in process (pipeline.serving): encoded files decoded exactly as the split
decodes them, raw pixels, the answer's columns, and every bad payload refused with HTTP 400's
error code and a message naming the image and the problem (or, with `row_errors`, its row)."""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from pipeline.datasets.images import decode_image
from pipeline.registry import _classifier_artifacts, _Context, classifier_signature, encode_png
from pipeline.serving import model as serving

CLASSES = ["cat", "dog", "bird", "fish"]
SHAPE = (12, 12, 3)


def _png(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _gradient(width: int, height: int, mode: str = "RGB") -> Image.Image:
    """An image that looks different turned or mirrored, so orientation mistakes show."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x * y) / 255], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb).convert(mode)


def _load(tmp_path: Path, shape=SHAPE, classes=CLASSES, **config) -> serving.ImageClassifier:
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=shape, dtype="uint8")
    hidden = layers.Dense(16, activation="relu")(
        layers.Flatten()(layers.Rescaling(1 / 255)(inputs))
    )
    units = 1 if len(classes) == 2 else len(classes)
    outputs = layers.Dense(units, activation="sigmoid" if units == 1 else "softmax")(hidden)
    model_file = tmp_path / "model.keras"
    keras.Model(inputs, outputs).save(model_file)
    artifacts = _classifier_artifacts(model_file, classes, tmp_path, None)
    classifier = serving.ImageClassifier()
    classifier.load_context(_Context(artifacts, config))
    return classifier


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> serving.ImageClassifier:
    return _load(tmp_path_factory.mktemp("served"))


@pytest.fixture(scope="module")
def gray_classifier(tmp_path_factory) -> serving.ImageClassifier:
    return _load(tmp_path_factory.mktemp("gray"), shape=(8, 8, 1), classes=["a", "b"])


def _images(*files: bytes | str) -> pd.DataFrame:
    return pd.DataFrame({serving.IMAGE_COLUMN: list(files)})


def _probabilities(frame: pd.DataFrame, classes=CLASSES) -> np.ndarray:
    return frame[classes].to_numpy(dtype=np.float64)


def test_files_of_any_size_and_mode_answer_as_their_split_decoding(classifier) -> None:
    files = [
        _png(_gradient(37, 19)),
        _png(_gradient(30, 30, "L")),
        _png(_gradient(20, 25, "RGBA")),
        _png(_gradient(16, 16), "JPEG", quality=90),
        _png(_gradient(16, 9), "BMP"),
        _png(_gradient(9, 16, "P"), "GIF"),
        _png(_gradient(40, 20), "WEBP"),
    ]
    frame = classifier.predict(None, _images(*files))
    expected = classifier.model.predict_on_batch(np.stack([decode_image(f, 12) for f in files]))
    np.testing.assert_allclose(_probabilities(frame), expected, rtol=1e-5, atol=1e-6)
    assert list(frame[serving.PREDICTED_CLASS]) == [CLASSES[i] for i in expected.argmax(axis=1)]


def test_base64_text_and_raw_bytes_give_the_same_answer(classifier) -> None:
    file = _png(_gradient(33, 21))
    raw = classifier.predict(None, _images(file))
    text = classifier.predict(None, _images(base64.b64encode(file).decode()))
    numpy_text = classifier.predict(None, _images(np.bytes_(base64.b64encode(file))))
    np.testing.assert_array_equal(_probabilities(raw), _probabilities(text))
    np.testing.assert_array_equal(_probabilities(raw), _probabilities(numpy_text))


def test_the_exif_orientation_is_applied(classifier) -> None:
    upright = _gradient(20, 10)
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotated: the viewer turns it 90 degrees clockwise.
    turned = _png(upright, "JPEG", quality=95, exif=exif.tobytes())
    frame = classifier.predict(None, _images(turned))
    decoded = decode_image(turned, 12)
    ignored = np.asarray(Image.open(io.BytesIO(turned)).convert("RGB").resize((12, 12)))
    assert not np.array_equal(decoded, ignored)
    np.testing.assert_allclose(
        _probabilities(frame), classifier.model.predict_on_batch(decoded[None]), rtol=1e-5
    )


def test_the_split_resize_mode_travels_with_the_model(tmp_path) -> None:
    padded = _load(tmp_path, resize="pad")
    wide = _png(_gradient(40, 10))
    expected = padded.model.predict_on_batch(decode_image(wide, 12, "pad")[None])
    np.testing.assert_allclose(_probabilities(padded.predict(None, _images(wide))), expected)


def test_a_gray_model_gets_the_luminance_of_colour_files_and_pixels(gray_classifier) -> None:
    colour = _gradient(16, 16)
    frame = gray_classifier.predict(None, _images(_png(colour)))
    luminance = np.asarray(colour.resize((8, 8), Image.Resampling.BILINEAR).convert("L"))
    expected = gray_classifier.model.predict_on_batch(luminance[None, ..., None])
    np.testing.assert_allclose(frame[["b"]].to_numpy(), expected, rtol=1e-5)
    rgb_pixels = np.asarray(colour.resize((8, 8), Image.Resampling.BILINEAR))
    by_pixels = gray_classifier.predict(None, pd.DataFrame({"pixels": [rgb_pixels]}))
    np.testing.assert_allclose(by_pixels[["a", "b"]].to_numpy(), frame[["a", "b"]].to_numpy())


def test_the_answer_has_top_k_the_identity_and_no_error(classifier) -> None:
    frame = classifier.predict(None, _images(_png(_gradient(12, 12))), params={"top_k": 2})
    assert list(frame.columns) == [
        *serving.LEADING_COLUMNS,
        *CLASSES,
        *serving.TRAILING_COLUMNS,
    ]
    row = frame.iloc[0]
    probabilities = row[CLASSES].to_numpy(dtype=float)
    assert row[serving.TOP_CLASSES] == [CLASSES[i] for i in np.argsort(-probabilities)[:2]]
    assert row[serving.TOP_PROBABILITIES] == sorted(probabilities, reverse=True)[:2]
    assert row[serving.PREDICTED_CLASS] == row[serving.TOP_CLASSES][0]
    assert row[serving.PROBABILITY] == pytest.approx(probabilities.max())
    # Not loaded from the registry: nothing to name.
    assert row[serving.MODEL_VERSION] is None and row[serving.ERROR] is None


def test_pixels_and_a_uint8_batch_answer_as_the_model(classifier) -> None:
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, size=(3, *SHAPE), dtype=np.uint8)
    expected = classifier.model.predict_on_batch(batch)
    direct = classifier.predict(None, batch)
    column = classifier.predict(
        None, serving.served_input(classifier_signature(CLASSES).inputs, batch)
    )
    as_lists = classifier.predict(
        None, pd.DataFrame({"pixels": [image.tolist() for image in batch]})
    )
    for frame in (direct, column, as_lists):
        np.testing.assert_allclose(_probabilities(frame), expected, rtol=1e-5)


def _png_header(width: int, height: int) -> bytes:
    """A PNG declaring its size and holding no pixels (a bomb's header, costless here)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


GOOD_BASE64 = base64.b64encode(_png(_gradient(5, 5))).decode()
RAGGED = [[[0, 0, 0]] * 12] * 11 + [[[0, 0, 0]] * 5]

BAD = [
    (_images(b"not an image at all"), "image 0: not an image Pillow can identify"),
    (
        _images(_png(_gradient(5, 5)), _png_header(13000, 13000)),
        "image 1: 13000x13000 = 169 M pixels, over the budget of 40 M (data.max_pixels)",
    ),
    (
        _images(GOOD_BASE64[:12] + "!" + GOOD_BASE64[12:]),
        "image 0: not base64: character U+0021 at offset 12 is outside the base64 alphabet",
    ),
    (
        _images(GOOD_BASE64, GOOD_BASE64[:40] + "\n" + GOOD_BASE64[40:]),
        "image 1: not base64: character U+000A at offset 40",
    ),
    (_images(GOOD_BASE64[:-2]), "image 0: not base64: "),
    (_images(7), "image 0: an `image` is an encoded file (base64 text in JSON, bytes in pandas)"),
    (
        pd.DataFrame({"pixels": [RAGGED]}),
        "image 0: pixels must be a (height, width, channels) array: its rows are of unequal",
    ),
    ({"pixels": [np.zeros(SHAPE, np.uint8).tolist(), RAGGED]}, "image 1: pixels must be a"),
    (
        {"pixels": [np.zeros(SHAPE, np.uint8).tolist(), np.zeros((11, 12, 3), int).tolist()]},
        "image 1: pixels of shape (11, 12, 3)",
    ),
    (_images(_png(_gradient(5, 5)), b""), "image 1: not an image Pillow can identify"),
    (_images(_png(_gradient(30, 30), "JPEG")[:400]), "image 0: cannot decode"),
    (_images(None), "image 0: no image (null)"),
    (
        pd.DataFrame({"pixels": [np.zeros((5, 5, 3), np.uint8)]}),
        "image 0: pixels of shape (5, 5, 3)",
    ),
    (pd.DataFrame({"pixels": [np.zeros((12, 12, 4), np.uint8)]}), "image 0: pixels of shape"),
    (pd.DataFrame({"pixels": [np.full((12, 12, 3), 0.5)]}), "image 0: pixels must be integers"),
    (pd.DataFrame({"pixels": [np.full((12, 12, 3), 300)]}), "image 0: pixels must be in 0..255"),
    (pd.DataFrame({"pixels": [[["a"]]]}), "image 0: pixels must be"),
    (_images(), "empty batch"),
    (pd.DataFrame({"other": [1]}), "exactly one of the columns"),
    (pd.DataFrame({"image": [b"x"], "pixels": [None]}), "exactly one of the columns"),
    (_images(*[b"x"] * 257), "batch of 257 images is over the limit of 256"),
]


@pytest.mark.parametrize(("request_frame", "message"), BAD, ids=[m for _, m in BAD])
def test_a_bad_payload_is_refused_with_400_and_names_the_image(
    classifier, request_frame, message
) -> None:
    with pytest.raises(MlflowException) as error:
        classifier.predict(None, request_frame)
    assert error.value.get_http_status_code() == 400
    assert message in error.value.message
    # The scoring server prefixes the request's data: the message stays the model's own.
    error.value.message = f"Failed to predict data '{request_frame}'. Error: {error.value.message}"
    assert message in error.value.message and "Failed to predict" not in error.value.message


def test_row_errors_fail_only_the_bad_rows(classifier) -> None:
    good = _png(_gradient(14, 14))
    frame = classifier.predict(
        None, _images(good, b"junk", good), params={serving.ROW_ERRORS_PARAM: True}
    )
    assert list(frame[serving.ERROR]) == [
        None,
        "image 1: not an image Pillow can identify (corrupt or another format; formats read: "
        "JPEG, PNG, GIF, BMP, WEBP, TIFF, PPM)",
        None,
    ]
    assert frame[serving.PREDICTED_CLASS][1] is None and frame["cat"][1] is None
    assert frame[serving.TOP_CLASSES][1] == []
    alone = classifier.predict(None, _images(good))
    np.testing.assert_allclose(
        _probabilities(frame.iloc[[0, 2]]), np.repeat(_probabilities(alone), 2, 0), rtol=1e-5
    )
    # Every row bad: still an answer, with no prediction at all.
    bad = classifier.predict(None, _images(b"junk"), params={serving.ROW_ERRORS_PARAM: True})
    assert bad[serving.ERROR][0].startswith("image 0:")


def test_top_k_must_be_positive(classifier) -> None:
    with pytest.raises(MlflowException, match="top_k must be at least 1"):
        classifier.predict(None, _images(_png(_gradient(4, 4))), params={"top_k": 0})


def test_the_batch_limit_comes_from_the_model_config(tmp_path) -> None:
    small = _load(tmp_path, max_batch=2)
    with pytest.raises(MlflowException, match="batch of 3 images is over the limit of 2"):
        small.predict(None, _images(*[_png(_gradient(4, 4))] * 3))


def test_the_pixel_budget_comes_from_the_model_config(tmp_path) -> None:
    small = _load(tmp_path, max_pixels=100)
    with pytest.raises(MlflowException, match=r"image 0: 20x20 = 0.0004 M pixels, over the"):
        small.predict(None, _images(_png(_gradient(20, 20))))
    assert small.predict(None, _images(_png(_gradient(10, 10))))[serving.ERROR][0] is None


def test_a_request_past_the_servers_timeout_stops_between_images(classifier, monkeypatch) -> None:
    ticks = iter(range(0, 1000, 4))  # each look at the clock is 4 s later: 0, 4, 8, 12
    monkeypatch.setattr(
        serving, "request_deadline", lambda: serving.Deadline(10, clock=lambda: next(ticks))
    )
    decoded = []
    decode = serving.decode_image
    monkeypatch.setattr(
        serving,
        "decode_image",
        lambda *args, **kwargs: decoded.append(1) or decode(*args, **kwargs),
    )
    with pytest.raises(MlflowException) as stopped:
        classifier.predict(None, _images(*[_png(_gradient(12, 12))] * 5))
    assert stopped.value.get_http_status_code() == 400
    assert stopped.value.message.startswith(
        "stopped after 2 of 5 images: the request ran past the server's timeout of 10 s "
        "(MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT)"
    )
    assert len(decoded) == 2


def test_the_deadline_is_the_scoring_servers_timeout(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "7")
    assert serving.request_deadline().seconds == 7
    monkeypatch.setenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT", "soon")
    assert serving.request_deadline().seconds == 60
    monkeypatch.delenv("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT")
    assert serving.request_deadline().seconds == 60


def test_error_messages_stay_under_a_kilobyte() -> None:
    error = serving.BadPayload("image 0: " + "x" * 5000)
    assert len(error.message.encode()) <= 1000 and error.message.endswith("...")
    assert len(error.serialize_as_json().encode()) <= 1024


def test_class_columns_of_old_and_new_answers() -> None:
    assert serving.class_columns(["predicted_class", "a", "b"]) == ["a", "b"]
    assert serving.class_columns([*serving.LEADING_COLUMNS, "a", *serving.TRAILING_COLUMNS]) == [
        "a"
    ]


def test_a_tensor_signature_takes_the_batch_itself() -> None:
    from mlflow.types.schema import Schema, TensorSpec

    batch = np.zeros((2, 4, 4, 1), np.uint8)
    tensor = Schema([TensorSpec(np.dtype(np.uint8), (-1, 4, 4, 1))])
    assert serving.served_input(tensor, batch) is batch
    assert serving.served_input(None, batch) is batch
    column = serving.served_input(classifier_signature(["a"]).inputs, batch)
    assert list(column.columns) == ["pixels"] and len(column) == 2


def test_the_signature_documents_both_inputs_the_answer_and_the_params() -> None:
    signature = classifier_signature(CLASSES)
    inputs = {spec.name: spec for spec in signature.inputs.inputs}
    assert inputs["image"].type.name == "binary" and not inputs["image"].required
    assert not inputs["pixels"].required
    assert signature.outputs.input_names() == [
        *serving.LEADING_COLUMNS,
        *CLASSES,
        *serving.TRAILING_COLUMNS,
    ]
    params = {spec.name: spec.default for spec in signature.params.params}
    assert params == {"row_errors": False, "top_k": 3}


def test_encode_png_round_trips_gray_and_rgb() -> None:
    rgb = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    gray = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    np.testing.assert_array_equal(decode_image(encode_png(rgb), 4), rgb)
    np.testing.assert_array_equal(decode_image(encode_png(gray), 4, channels=1), gray)


def test_registry_identity_reads_what_mlflow_writes_on_download(tmp_path, monkeypatch) -> None:
    model = tmp_path / "model"
    (model / "artifacts").mkdir(parents=True)
    (model / "MLmodel").write_text("flavors: {}\n")
    artifact = model / "artifacts" / "model.keras"
    assert serving.registry_identity(artifact) == (None, None, None)
    (model / serving.REGISTERED_MODEL_META).write_text("model_name: flowers\nmodel_version: '7'\n")
    version = SimpleNamespace(aliases=["champion", "challenger"])
    monkeypatch.setattr(
        serving.mlflow.MlflowClient, "get_model_version", lambda self, name, v: version
    )
    assert serving.registry_identity(artifact) == ("flowers", "7", "challenger,champion")


def test_keep_nagle_off_sets_nodelay_where_the_listener_has_proto_0(monkeypatch) -> None:
    """uvicorn's supervisor binds with proto 0 (Kludex/uvicorn#3149): the accepted connections
    must still get TCP_NODELAY, or every keep-alive answer waits ~40 ms for a delayed ACK."""
    import asyncio
    import asyncio.base_events
    import socket

    monkeypatch.setattr(asyncio.base_events, "_set_nodelay", asyncio.base_events._set_nodelay)
    serving.keep_nagle_off()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    assert listener.proto == 0
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    seen: list[int] = []

    async def connect_once() -> None:
        accepted = asyncio.Event()

        def on_connect(reader, writer) -> None:
            sock = writer.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()
            accepted.set()

        server = await asyncio.start_server(on_connect, sock=listener)
        _, writer = await asyncio.open_connection(*listener.getsockname())
        await asyncio.wait_for(accepted.wait(), timeout=10)
        writer.close()
        server.close()
        await server.wait_closed()

    asyncio.run(connect_once())
    assert seen and seen[0] != 0


def test_embeddings_of_a_nested_transfer_model_are_its_heads_penultimate_layer() -> None:
    """The transfer strategies nest their output layer inside a `head` model (preprocessing ->
    base -> head): the embedding model cuts the head there and shares every weight."""
    import keras
    from keras import layers

    image = keras.Input((8, 8, 1), dtype="uint8")
    preprocessing = keras.Model(image, layers.Rescaling(1 / 255)(image), name="preprocessing")
    maps = keras.Input((8, 8, 1))
    base = keras.Model(maps, layers.Conv2D(4, 3)(maps), name="base")
    features = keras.Input((6, 6, 4))
    hidden = layers.Dense(5, name="dense")(layers.Flatten()(features))
    head = keras.Model(
        features, layers.Dense(3, activation="softmax", name="predictions")(hidden), name="head"
    )
    inputs = keras.Input((8, 8, 1), dtype="uint8")
    model = keras.Model(inputs, head(base(preprocessing(inputs), training=False)))
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)

    embedding = serving.feature_model(model).predict_on_batch(images)

    dense = keras.Model(head.inputs, head.get_layer("dense").output)
    expected = dense.predict_on_batch(base.predict_on_batch(preprocessing.predict_on_batch(images)))
    np.testing.assert_allclose(embedding, expected, rtol=1e-5, atol=1e-6)
    flat = keras.Model(inputs, layers.Dense(2, name="predictions")(layers.Flatten()(inputs)))
    assert serving.feature_model(flat).output_shape == (None, 64)
    # A classifier built elsewhere: its last Dense layer is the output, whatever its name.
    other = keras.Model(inputs, layers.Dense(2, name="scores")(layers.Flatten()(inputs)))
    assert serving.feature_model(other).output_shape == (None, 64)
    with pytest.raises(ValueError, match="nor a Dense output layer"):
        serving.feature_model(keras.Model(inputs, layers.Flatten()(inputs)))
