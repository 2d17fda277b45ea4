"""Request limits for `pipeline serve`: an ASGI middleware in front of MLflow's scoring app.

MLflow's app reads any body whole and hands it to `json.loads`: a 176 MB body kills a worker,
JSON nested 100,000 deep answers 500, and its error answers echo the request and carry stack
traces with file paths. Here a body over `max_body_bytes` gets 413 before it is read (by its
Content-Length) or as soon as its streamed bytes pass the limit, JSON nested deeper than
`max_json_depth` gets 400 from a byte scan before any parser sees it, and every error answer
is rewritten to a short JSON object (`error_code`, `message`; at most 1 KB) with the data
echoes and stack traces taken out.
"""

from __future__ import annotations

import collections
import http
import json
import logging
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 64 << 20
"""64 MB: 256 base64 photos of 190 KB each, or a batch of 32 150x150 RGB pixel arrays as JSON
(about 10 MB), with room to spare."""
DEFAULT_MAX_JSON_DEPTH = 32
"""The deepest legitimate body is a batch of (height, width, channels) pixel arrays in
`dataframe_split` (object, object, rows, row, image, image row, pixel: 7 levels); 32 leaves
room for any client's wrapping and stays far below the recursion that breaks `json.loads`."""
MAX_ERROR_BYTES = 1024
"""The most an error answer may hold: the reason, never the request."""
_ERROR_CAPTURE_BYTES = 64 << 10
"""How much of the app's own error answer is kept to find its code and message: MLflow
echoes whole invalid bodies, so the rest is dropped unread."""
_SCAN_SLICE = 1 << 20
"""The depth scan works on slices of this many bytes, so its scratch arrays stay small
whatever size of chunk a server hands over."""

_STATUS_CODES = {
    400: "BAD_REQUEST",
    404: "ENDPOINT_NOT_FOUND",
    413: "REQUEST_LIMIT_EXCEEDED",
    415: "BAD_REQUEST",
    500: "INTERNAL_ERROR",
    503: "TEMPORARILY_UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
"""MLflow's error codes for the statuses an answer without one can have."""

# Byte classes of the depth scan: 1 opens a level, 2 closes one, 3 is a quote, 4 a backslash.
_BYTE_CLASS = np.zeros(256, dtype=np.uint8)
_BYTE_CLASS[[ord("["), ord("{")]] = 1
_BYTE_CLASS[[ord("]"), ord("}")]] = 2
_BYTE_CLASS[ord('"')] = 3
_BYTE_CLASS[ord("\\")] = 4


class JsonDepthScanner:
    """The nesting depth of a JSON text fed in chunks: `[` and `{` outside strings open a
    level, `]` and `}` close one; a quote after an odd run of backslashes does not end a
    string. Exact for every valid prefix, which is all a parser reads before it fails."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.depth = 0
        self.deepest = 0
        self.in_string = False
        self.backslashes = 0
        """The run of backslashes that ended the previous chunk (it may escape a quote)."""

    def feed(self, chunk: bytes) -> bool:
        """Scan the next chunk; False once the text has gone deeper than the limit."""
        view = memoryview(chunk)
        for start in range(0, len(view), _SCAN_SLICE):
            if not self._feed(np.frombuffer(view[start : start + _SCAN_SLICE], dtype=np.uint8)):
                return False
        return True

    def _feed(self, data: np.ndarray) -> bool:
        classes = _BYTE_CLASS[data]
        positions = np.flatnonzero(classes)
        kinds = classes[positions]
        quotes = positions[kinds == 3]
        carried, self.backslashes = self.backslashes, 0
        if carried or (kinds == 4).any():
            quotes = self._unescaped(data, quotes, carried)
        brackets = positions[(kinds == 1) | (kinds == 2)]
        if len(brackets):
            # A bracket is inside a string when an odd number of quotes (counting the string
            # state the chunk began in) come before it.
            inside = (np.searchsorted(quotes, brackets) + self.in_string) & 1
            steps = np.where(kinds[(kinds == 1) | (kinds == 2)] == 1, 1, -1)
            steps[inside == 1] = 0
            levels = self.depth + np.cumsum(steps)
            self.deepest = max(self.deepest, int(levels.max()))
            self.depth = int(levels[-1])
        self.in_string = bool((self.in_string + len(quotes)) & 1)
        return self.deepest <= self.limit

    def _unescaped(self, data: np.ndarray, quotes: np.ndarray, carried: int) -> np.ndarray:
        """The quotes not escaped by a backslash; sets the run of backslashes that ends
        `data`, for the next chunk."""
        index = np.arange(len(data))
        # For each byte, the last position at or before it that is not a backslash.
        last_other = np.maximum.accumulate(np.where(data == 0x5C, -1, index))
        before = quotes - 1
        previous = np.where(before >= 0, last_other[np.maximum(before, 0)], -1)
        runs = before - previous + np.where(previous == -1, carried, 0)
        if len(data) and data[-1] == 0x5C:
            self.backslashes = len(data) - 1 - int(last_other[-1])
            if last_other[-1] == -1:
                self.backslashes += carried
        return quotes[runs % 2 == 0]


class RequestLimits:
    """ASGI middleware: bounded request bodies, bounded JSON depth, short error answers.

    The body is read here, chunk by chunk, before the app runs: refused as soon as it passes a
    limit (the server then discards the rest as it arrives, holding none of it), else handed
    to the app as it came."""

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        max_json_depth: int = DEFAULT_MAX_JSON_DEPTH,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_json_depth = max_json_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = ShortErrors(send)
        headers = {name.lower(): value for name, value in scope.get("headers", [])}
        refusal = self._check_headers(scope, headers)
        if refusal is None:
            chunks, refusal = await self._read_body(receive, _is_json(headers))
            if chunks is None:
                return  # The client went away while it sent: there is no one to answer.
        if refusal is not None:
            status, message = refusal
            logger.info("refused %s %s: %s", scope.get("method"), scope.get("path"), message)
            await send_error(answer, status, message)
            return
        try:
            await self.app(scope, _replay(chunks, receive), answer)
        except Exception:  # noqa: BLE001 - a bug: its traceback in the log, a short 500 out
            logger.exception("answering %s %s", scope.get("method"), scope.get("path"))
            if not answer.started:
                await send_error(answer, 500, "internal error: the server's log has the reason")

    def _check_headers(self, scope: Scope, headers: dict[bytes, bytes]) -> tuple | None:
        """(status, reason) when the headers alone refuse the request, else None."""
        length = headers.get(b"content-length")
        if length is not None:
            try:
                size = int(length)
            except ValueError:
                return 400, "Content-Length is not a number"
            if size > self.max_body_bytes:
                return 413, self._too_large(f"{size:,} bytes")
        if scope.get("method") == "POST" and b"content-type" not in headers:
            return 415, "no Content-Type: send the request as application/json"
        return None

    async def _read_body(
        self, receive: Receive, is_json: bool
    ) -> tuple[collections.deque | None, tuple | None]:
        """(the body's chunks, None), or (None or the chunks so far, (status, reason)) as
        soon as a limit is passed; (None, None) if the client disconnects first."""
        chunks: collections.deque = collections.deque()
        scanner = JsonDepthScanner(self.max_json_depth) if is_json else None
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None, None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return chunks, (413, self._too_large(None))
            if scanner is not None and not scanner.feed(chunk):
                return chunks, (
                    400,
                    f"the JSON body is nested deeper than {self.max_json_depth} levels (the "
                    "server's --max-json-depth); a batch of pixel arrays needs 7",
                )
            if chunk:
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks, None

    def _too_large(self, size: str | None) -> str:
        """The reason of a 413; `size` is None for a streamed body, refused at the limit."""
        start = f"the request body is {size}, over" if size else "the request body passed"
        return (
            f"{start} the server's limit of {self.max_body_bytes:,} bytes "
            f"({self.max_body_bytes / 2**20:g} MB, --max-body-mb): send fewer images per request"
        )


def _is_json(headers: dict[bytes, bytes]) -> bool:
    mime = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
    return mime == b"application/json" or mime.endswith(b"+json")


def _replay(chunks: collections.deque, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then the server's own (which
    reports the client's disconnect). Each chunk is let go of once handed over."""
    done = False

    async def replay() -> Message:
        nonlocal done
        if not done:
            chunk = chunks.popleft() if chunks else b""
            done = not chunks
            return {"type": "http.request", "body": chunk, "more_body": not done}
        return await receive()

    return replay


class ShortErrors:
    """A `send` that passes answers below 400 through and rewrites each error answer to
    `{"error_code", "message"}` of at most MAX_ERROR_BYTES (see short_error)."""

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False
        self._start: Message | None = None
        self._parts: list[bytes] = []
        self._kept = 0
        self._complete = True

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            if message["status"] < 400:
                await self.send(message)
            else:
                self._start = message
            return
        if kind != "http.response.body" or self._start is None:
            await self.send(message)
            return
        body = message.get("body", b"")
        room = _ERROR_CAPTURE_BYTES - self._kept
        if len(body) > room:
            self._complete = False
        if room > 0:
            self._parts.append(body[:room])
            self._kept += min(room, len(body))
        if message.get("more_body", False):
            return
        start, self._start = self._start, None
        content = short_error(start["status"], b"".join(self._parts), self._complete)
        kept = [
            (name, value)
            for name, value in start.get("headers", [])
            if name.lower() not in (b"content-length", b"content-type")
        ]
        await self.send(
            {
                "type": "http.response.start",
                "status": start["status"],
                "headers": [
                    *kept,
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                ],
            }
        )
        await self.send({"type": "http.response.body", "body": content, "more_body": False})


async def send_error(send: Send, status: int, message: str) -> None:
    """Answer `status` with `message` (through ShortErrors, which shapes it)."""
    body = json.dumps({"error_code": _status_code(status), "message": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def short_error(status: int, body: bytes, complete: bool = True) -> bytes:
    """The error answer a client gets for the app's `body`: MLflow's error code (or the
    status's) and its message without the request's data, stack trace or boilerplate, cut to
    fit MAX_ERROR_BYTES. `complete` is False when `body` is only the answer's beginning."""
    code, message = _read_error(body, complete)
    if not isinstance(code, str) or not re.fullmatch(r"[A-Z_]{1,64}", code):
        code = _status_code(status)
    message = clean_message(message) if isinstance(message, str) else ""
    if not message:
        message = _phrase(status)
    return _encode(code, message)


def clean_message(message: str) -> str:
    """`message` without what MLflow's scoring server puts in it from the request: the data
    it failed on, the invalid body, the bytes that were not UTF-8; and without its two
    paragraphs on the 2.0 protocol change; on one line."""
    # "Failed to predict data '<the whole frame>'. \nError: <the model's message>": the
    # frame comes first, so the last "Error: " marks the model's own words.
    if message.startswith("Failed to predict data"):
        message = message.rpartition("\nError: ")[2]
    if "Ensure that input is a valid JSON formatted string" in message:
        # "... Error: '<the decode error's repr>'\nInput: \n<the body>": the repr of a
        # UnicodeDecodeError holds the body too, so only the parser's position is kept.
        found = re.search(r"JSONDecodeError\('([^'\n]{0,200})'\)", message)
        reason = found.group(1) if found else "it is not UTF-8 text"
        return f"the body is not valid JSON: {reason}"
    message = message.split("\nInput:", 1)[0]
    message = message.split(" IMPORTANT: The MLflow Model scoring protocol", 1)[0]
    # Schema and conversion errors quote the data between a prefix and " with": everything
    # up to the last " with" goes, so no part of the data can remain.
    message = re.sub(
        r"(schema of data |schema of |for data )([`']).*\2( with)",
        r"\1\2...\2\3",
        message,
        flags=re.S,
    )
    message = re.sub(r"got input data .*", "got input data (not shown)", message, flags=re.S)
    return " ".join(message.split())


def _read_error(body: bytes, complete: bool) -> tuple[Any, Any]:
    """(error_code, message) of an error answer: MLflow's JSON, FastAPI's `detail`, or
    plain text; from the beginning of the JSON when only that was kept."""
    text = body.decode("utf-8", errors="replace")
    if complete:
        try:
            parsed = json.loads(text)
        except (ValueError, RecursionError):
            parsed = None
        if isinstance(parsed, dict):
            return parsed.get("error_code"), parsed.get("message", parsed.get("detail"))
    if not text.lstrip().startswith("{"):
        return None, text
    code = re.search(r'"error_code"\s*:\s*"([A-Z_]{1,64})"', text)
    start = re.search(r'"message"\s*:\s*"', text)
    message = _partial_json_string(text[start.end() :]) if start else None
    return (code.group(1) if code else None), message


def _partial_json_string(text: str) -> str | None:
    """The JSON string that starts at `text` (after its opening quote), whole if it ends
    there, else as much of it as can be decoded."""
    try:
        return json.decoder.scanstring(text, 0)[0]
    except ValueError:
        pass
    # Cut off: drop up to an escape's length from the end until the rest decodes.
    for cut in range(0, 7):
        try:
            return json.decoder.scanstring(text[: len(text) - cut] + '"', 0)[0]
        except ValueError:
            continue
    return None


def _encode(code: str, message: str) -> bytes:
    """`{"error_code": code, "message": message}`, the message cut to fit MAX_ERROR_BYTES."""

    def encode(text: str) -> bytes:
        return json.dumps({"error_code": code, "message": text}).encode()

    content = encode(message)
    if len(content) <= MAX_ERROR_BYTES:
        return content
    # The longest beginning that fits: escapes make a character 1 to 12 bytes long.
    shortest, longest = 0, min(len(message), MAX_ERROR_BYTES)
    while shortest < longest:
        middle = (shortest + longest + 1) // 2
        if len(encode(message[:middle] + "...")) <= MAX_ERROR_BYTES:
            shortest = middle
        else:
            longest = middle - 1
    return encode(message[:shortest] + "...")


def _status_code(status: int) -> str:
    return _STATUS_CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "BAD_REQUEST")


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
