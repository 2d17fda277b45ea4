"""Fixtures shared by every test folder: tiny data built in the test, a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pipeline.datasets.split import Split  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def make_split(
    num_classes: int = 3, per_class: int = 4, shape: tuple[int, int, int] = (8, 8, 1), seed: int = 0
) -> Split:
    """A small valid split: `per_class` random uint8 images of each class."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes, dtype=np.int64), per_class)
    x = rng.integers(0, 256, size=(len(y), *shape), dtype=np.uint8)
    return Split(x=x, y=y, classes=[f"class_{i}" for i in range(num_classes)])


@pytest.fixture
def http_server() -> Iterator:
    """Serve files from a directory on 127.0.0.1; call it with the directory, get the base URL.

    `truncate` names paths (e.g. "/mnist/mnist.npz") whose responses announce the whole file
    but stop halfway, as an interrupted download does; `truncate_once` does that only for the
    first request. The server binds to loopback only, on a free port, and stops when the test
    ends. `start.requests` counts the GET requests per path.
    """
    servers = []
    requests: dict[str, int] = {}

    def start(
        directory: Path, truncate: tuple[str, ...] = (), truncate_once: tuple[str, ...] = ()
    ) -> str:
        handler = functools.partial(
            _FaultyHandler,
            directory=str(directory),
            truncate=truncate,
            truncate_once=truncate_once,
            requests=requests,
        )
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    start.requests = requests
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


class _FaultyHandler(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *args, truncate, truncate_once, requests, **kwargs) -> None:
        self.truncate, self.truncate_once, self.requests = truncate, truncate_once, requests
        super().__init__(*args, **kwargs)

    def do_GET(self) -> None:
        self.requests[self.path] = self.requests.get(self.path, 0) + 1
        first = self.requests[self.path] == 1
        if self.path in self.truncate or (self.path in self.truncate_once and first):
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        pass


def write_legacy_vgg16_notop(path: Path, image_size: int = 32, seed: int = 7) -> list[np.ndarray]:
    """Write VGG16 notop weights in the legacy Keras .h5 layout that the real ImageNet file has
    (root `layer_names`, one group per layer with `weight_names`); return the weights written."""
    import h5py
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.applications.VGG16(
        include_top=False, weights=None, input_shape=(image_size, image_size, 3)
    )
    written = []
    with h5py.File(path, "w") as handle:
        names = []
        for layer in model.layers:
            weights = layer.get_weights()
            if not weights:
                continue
            names.append(layer.name.encode())
            group = handle.create_group(layer.name)
            weight_names = [f"{layer.name}/{kind}:0" for kind in ("kernel", "bias")]
            group.attrs["weight_names"] = [name.encode() for name in weight_names]
            for name, value in zip(weight_names, weights, strict=True):
                group.create_dataset(name, data=value)
                written.append(value)
        handle.attrs["layer_names"] = names
        handle.attrs["keras_version"] = b"2.2.4"
        handle.attrs["backend"] = b"tensorflow"
    return written
