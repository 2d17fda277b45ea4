"""pipeline.serving.limits in process, as a plain ASGI app driven by a fake receive and send:
bodies over the limit refused before they are read, deep JSON refused before it is parsed, and
every error answer short, without the request's data or a stack trace, in front of a stand-in
app and in front of MLflow's own scoring app."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Iterator

import pytest

from pipeline.serving.limits import (
    MAX_ERROR_BYTES,
    JsonDepthScanner,
    RequestLimits,
    short_error,
)

LIMIT = 10_000


class Client:
    """One request into an ASGI app: the body's chunks, handed out one receive() at a time
    (counted), and what the app sent back."""

    def __init__(self, chunks: Iterable[bytes], forbid_reading: bool = False) -> None:
        self.chunks: Iterator[bytes] = iter(chunks)
        self.forbid_reading = forbid_reading
        self.received = 0
        self.bytes_read = 0
        self.sent: list[dict] = []

    async def receive(self) -> dict:
        assert not self.forbid_reading, "the body was read"
        chunk = next(self.chunks, None)
        if chunk is None:
            await asyncio.sleep(3600)  # The client waits for its answer.
        self.received += 1
        self.bytes_read += len(chunk)
        # One chunk ahead, as a server knows whether more body follows.
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(self, message: dict) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return self.sent[0]["status"]

    @property
    def body(self) -> bytes:
        return b"".join(message.get("body", b"") for message in self.sent[1:])


def finite(chunks: list[bytes]) -> Client:
    """A client whose last chunk says no more body follows."""
    client = Client([])
    remaining = list(chunks)

    async def receive() -> dict:
        client.received += 1
        chunk = remaining.pop(0) if remaining else b""
        client.bytes_read += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": bool(remaining)}

    client.receive = receive
    return client


def scope(
    length: int | None = None, content_type: bytes | None = b"application/json", method="POST"
) -> dict:
    headers = []
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if length is not None:
        headers.append((b"content-length", str(length).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": "/invocations",
        "raw_path": b"/invocations",
        "root_path": "",
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 5001),
    }


class RecordingApp:
    """Reads the whole body as Starlette does, then answers `status` with `answer`."""

    def __init__(self, status: int = 200, answer: bytes = b'{"predictions": []}') -> None:
        self.status, self.answer = status, answer
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        self.bodies.append(b"".join(chunks))
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": self.answer})


def run(app, request_scope: dict, client: Client) -> Client:
    asyncio.run(asyncio.wait_for(app(request_scope, client.receive, client.send), timeout=30))
    return client


def assert_short(client: Client, status: int) -> dict:
    assert client.status == status, client.body[:300]
    assert len(client.body) <= MAX_ERROR_BYTES, len(client.body)
    answer = json.loads(client.body)
    assert set(answer) == {"error_code", "message"}, answer
    headers = dict(client.sent[0]["headers"])
    assert headers[b"content-length"] == str(len(client.body)).encode()
    assert headers[b"content-type"] == b"application/json"
    return answer


# --- bodies over the limit --------------------------------------------------------------------


def test_a_body_whose_content_length_is_over_the_limit_is_refused_unread() -> None:
    app = RecordingApp()
    client = run(
        RequestLimits(app, max_body_bytes=LIMIT),
        scope(length=176 << 20),
        Client([], forbid_reading=True),
    )
    answer = assert_short(client, 413)
    assert "184,549,376 bytes" in answer["message"] and "10,000 bytes" in answer["message"]
    assert answer["error_code"] == "REQUEST_LIMIT_EXCEEDED"
    assert app.bodies == []


def test_a_streamed_body_is_refused_as_soon_as_its_bytes_pass_the_limit() -> None:
    """No Content-Length (chunked): counted as it arrives, and not read past the limit."""

    def endless() -> Iterator[bytes]:
        while True:
            yield b"1" * 1000

    app = RecordingApp()
    client = run(RequestLimits(app, max_body_bytes=LIMIT), scope(), Client(endless()))
    assert_short(client, 413)
    assert client.bytes_read == LIMIT + 1000, client.bytes_read
    assert app.bodies == []


def test_a_body_within_the_limit_reaches_the_app_whole_and_its_answer_unchanged() -> None:
    chunks = [b'{"dataframe_split": ', b'{"columns": ["image"], ', b'"data": [["aGk="]]}}']
    app = RecordingApp(answer=b'{"predictions": [{"predicted_class": "3"}]}')
    client = run(
        RequestLimits(app, max_body_bytes=LIMIT), scope(sum(map(len, chunks))), finite(chunks)
    )
    assert app.bodies == [b"".join(chunks)]
    assert client.status == 200 and client.body == app.answer


def test_an_empty_body_reaches_the_app() -> None:
    app = RecordingApp()
    client = run(RequestLimits(app), scope(0, method="GET"), finite([]))
    assert app.bodies == [b""] and client.status == 200


def test_a_post_without_a_content_type_is_refused_with_415_not_a_500() -> None:
    app = RecordingApp()
    client = run(RequestLimits(app), scope(2, content_type=None), finite([b"{}"]))
    assert "Content-Type" in assert_short(client, 415)["message"]
    assert app.bodies == []


# --- depth ------------------------------------------------------------------------------------


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_json_nested_deeper_than_the_limit_gets_400_before_any_parser(opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    body = opener * 100_000 + b"1" + closer * 100_000
    app = RecordingApp()
    client = run(
        RequestLimits(app, max_body_bytes=len(body), max_json_depth=32),
        scope(len(body)),
        finite([body[i : i + 4096] for i in range(0, len(body), 4096)]),
    )
    answer = assert_short(client, 400)
    assert "deeper than 32 levels" in answer["message"]
    assert app.bodies == []
    # Refused at the chunk that went too deep, not after reading the rest.
    assert client.bytes_read <= 4096 * 20


def test_a_legitimate_batch_of_pixel_arrays_is_within_the_default_depth() -> None:
    pixels = [[[[7, 7, 7]] * 4] * 4] * 2
    body = json.dumps({"dataframe_split": {"columns": ["pixels"], "data": [[p] for p in pixels]}})
    app = RecordingApp()
    client = run(RequestLimits(app), scope(len(body)), finite([body.encode()]))
    assert client.status == 200 and app.bodies == [body.encode()]


def test_only_json_is_scanned_for_depth() -> None:
    body = b"a\n" + b"[" * 100 + b"\n"
    app = RecordingApp()
    client = run(
        RequestLimits(app, max_json_depth=4), scope(len(body), b"text/csv"), finite([body])
    )
    assert client.status == 200 and app.bodies == [body]


def json_depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((json_depth(item) for item in value), default=0)
    if isinstance(value, dict):
        return 1 + max((json_depth(item) for item in value.values()), default=0)
    return 0


@pytest.mark.parametrize(
    "text",
    [
        '{"a": [1, [2, [3]]], "b": "[[[[{{{{"}',
        '["\\"[[[", [["\\\\"], "]]]"]]',
        '{"k\\\\\\"[": [[["\\\\\\\\"]]], "x": "\\u005b"}',
        '[[], {}, [[[]]], "}}}]]]", {"a": {"b": {"c": "\\\\\\\\\\"]"}}}]',
    ],
)
def test_the_depth_scan_agrees_with_the_parser_wherever_the_chunks_are_cut(text: str) -> None:
    """Strings holding brackets, escaped quotes and runs of backslashes, cut at every byte:
    a run of backslashes split between two chunks still escapes (or not) the quote after it."""
    data = text.encode()
    expected = json_depth(json.loads(text))
    for cut in range(len(data) + 1):
        for second in (cut, min(len(data), cut + 1), min(len(data), cut + 2)):
            scanner = JsonDepthScanner(limit=100)
            for chunk in (data[:cut], data[cut:second], data[second:]):
                scanner.feed(chunk)
            assert (scanner.deepest, scanner.depth, scanner.in_string) == (expected, 0, False), (
                cut,
                second,
            )


def test_the_depth_scan_says_when_the_limit_is_passed() -> None:
    scanner = JsonDepthScanner(limit=3)
    assert scanner.feed(b"[[[")
    assert not scanner.feed(b"[")


# --- error answers ----------------------------------------------------------------------------


def mlflow_error(message: str, **extra) -> bytes:
    return json.dumps({"error_code": "BAD_REQUEST", "message": message, **extra}).encode()


SECRET = "SECRETPIXELS" * 500


@pytest.mark.parametrize(
    ("body", "complete", "expected"),
    [
        # The scoring server's message for a model error: the data first, the model's last.
        (
            mlflow_error(f"Failed to predict data '{SECRET}'. \nError: image 3: not base64"),
            True,
            "image 3: not base64",
        ),
        # Its message for invalid JSON: the whole body after "Input:", cut off mid-string.
        (
            mlflow_error(
                "Invalid input. Ensure that input is a valid JSON formatted string. Error: "
                "'JSONDecodeError('Expecting value: line 1 column 1 (char 0)')'\nInput: \n"
                + SECRET
                * 100
            )[:5000],
            False,
            "the body is not valid JSON: Expecting value: line 1 column 1 (char 0)",
        ),
        # Its message for a body that is not UTF-8: the error's repr holds the body.
        (
            mlflow_error(
                "Invalid input. Ensure that input is a valid JSON formatted string. Error: "
                f"'UnicodeDecodeError('utf-8', b'{SECRET}', 3, 4, 'invalid start byte')'"
            ),
            True,
            "the body is not valid JSON: it is not UTF-8 text",
        ),
        # A schema error quotes the data between "of data `" and "` with".
        (
            mlflow_error(f"Failed to enforce schema of data `{SECRET}` with dtype `uint8`"),
            True,
            "Failed to enforce schema of data `...` with dtype `uint8`",
        ),
        (b"Internal Server Error", True, "Internal Server Error"),
        (b'{"detail": "Not Found"}', True, "Not Found"),
        (b"", True, "Bad Request"),
    ],
)
def test_error_answers_keep_the_reason_and_drop_the_data(
    body: bytes, complete: bool, expected: str
) -> None:
    content = short_error(400, body, complete)
    assert len(content) <= MAX_ERROR_BYTES
    answer = json.loads(content)
    assert answer["message"] == expected
    assert "SECRET" not in content.decode()


def test_an_error_answer_loses_its_stack_trace_and_keeps_its_code() -> None:
    body = mlflow_error(
        "Encountered an unexpected error while evaluating the model.",
        stack_trace='Traceback (most recent call last):\n  File "/srv/pipeline/model.py"',
        sqlstate="KAM00",
    )
    answer = json.loads(short_error(400, body))
    assert answer == {
        "error_code": "BAD_REQUEST",
        "message": "Encountered an unexpected error while evaluating the model.",
    }


def test_a_long_message_is_cut_to_fit_one_kilobyte_keeping_its_beginning() -> None:
    message = "image 12: " + "é\u2028" * 5000
    content = short_error(400, json.dumps({"error_code": "X_Y", "message": message}).encode())
    assert len(content) <= MAX_ERROR_BYTES
    answer = json.loads(content)
    assert answer["message"].startswith("image 12: ") and answer["message"].endswith("...")
    assert answer["error_code"] == "X_Y"


def test_a_huge_streamed_error_answer_is_cut_short() -> None:
    """An app that echoes 20 MB in pieces: the client gets 1 KB at most."""

    async def echoing_app(scope, receive, send) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 400, "headers": []})
        await send({"type": "http.response.body", "body": b'{"message": "', "more_body": True})
        for _ in range(20):
            await send({"type": "http.response.body", "body": b"x" * (1 << 20), "more_body": True})
        await send({"type": "http.response.body", "body": b'"}', "more_body": False})

    client = run(RequestLimits(echoing_app), scope(2), finite([b"{}"]))
    assert_short(client, 400)


def test_an_app_that_raises_gets_a_short_500_and_its_traceback_stays_in_the_log(caplog) -> None:
    async def failing_app(scope, receive, send) -> None:
        raise RuntimeError("/srv/secret/path.py exploded")

    with caplog.at_level("ERROR", logger="pipeline.serving.limits"):
        client = run(RequestLimits(failing_app), scope(2), finite([b"{}"]))
    answer = assert_short(client, 500)
    assert "secret" not in answer["message"]
    assert "exploded" in caplog.text


# --- in front of MLflow's own scoring app -----------------------------------------------------


class StubModel:
    """What MLflow's scoring app calls: metadata without a schema, and a predict that fails
    as a bug in a model would (or answers, for a column named `ok`)."""

    def __init__(self) -> None:
        from mlflow.models import Model

        self.metadata = Model()

    def predict(self, data, params=None):
        if "ok" in data.columns:
            return data
        raise ValueError("inhomogeneous shape after 1 dimensions")


@pytest.fixture(scope="module")
def scoring_app():
    from mlflow.pyfunc import scoring_server

    return RequestLimits(scoring_server.init(StubModel()), max_body_bytes=64 << 20)


def post(app, body: bytes) -> Client:
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    return run(app, scope(len(body)), finite(chunks))


def test_mlflow_answers_a_model_error_without_its_stack_trace(scoring_app) -> None:
    body = json.dumps({"dataframe_split": {"columns": ["pixels"], "data": [[[[1, 2], [3]]]]}})
    client = post(scoring_app, body.encode())
    answer = assert_short(client, 400)
    text = client.body.decode()
    assert "Traceback" not in text and "stack_trace" not in text and ".py" not in text, text
    assert "unexpected error" in answer["message"]


def test_mlflow_answers_a_20_mb_invalid_body_without_echoing_it(scoring_app) -> None:
    client = post(scoring_app, b"{" + b"x" * (20 << 20))
    answer = assert_short(client, 400)
    assert "xxxx" not in client.body.decode()
    assert answer["message"].startswith("the body is not valid JSON: Expecting property name")


def test_mlflow_answers_json_100000_deep_with_400_not_500(scoring_app) -> None:
    client = post(scoring_app, b"[" * 100_000 + b"]" * 100_000)
    assert "deeper than 32 levels" in assert_short(client, 400)["message"]


def test_mlflow_answers_a_good_request_through_the_limits(scoring_app) -> None:
    body = json.dumps({"dataframe_split": {"columns": ["ok"], "data": [[1], [2]]}}).encode()
    client = post(scoring_app, body)
    assert client.status == 200, client.body
    assert json.loads(client.body) == {"predictions": [{"ok": 1}, {"ok": 2}]}


def test_the_scoring_app_hands_base64_to_the_model_as_sent() -> None:
    """pipeline serve's metadata declares the binary `image` column as text, so MLflow does not
    decode it leniently (skipping junk) before the model's strict decoding sees it."""
    from mlflow.models import Model, ModelSignature
    from mlflow.pyfunc import scoring_server
    from mlflow.types import ColSpec, DataType, Schema

    from pipeline.serving.server import TextImages

    class Capturing:
        def __init__(self) -> None:
            schema = Schema([ColSpec(DataType.binary, "image", required=False)])
            self.metadata = TextImages(Model(signature=ModelSignature(inputs=schema)))
            self.seen: list = []

        def predict(self, data, params=None):
            self.seen.extend(data["image"])
            return data[[]].assign(ok=1)

    model = Capturing()
    app = RequestLimits(scoring_server.init(model))
    junk = "aGVs!*bG8="
    body = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[junk]]}}).encode()
    client = post(app, body)
    assert client.status == 200, client.body
    assert model.seen == [junk]
