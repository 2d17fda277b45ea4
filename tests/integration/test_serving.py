"""The champion served over HTTP (`mlflow models serve`, as a service runs it): image files of
another size, with an EXIF rotation, or gray for an RGB model, answered as `pipeline predict`
answers them; every malformed payload refused with a 400 naming the image and the problem while
the server goes on serving; and the README's `curl` command and Python client, run as written."""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from pipeline.datasets.images import decode_image
from tests.servers import model_server
from tests.serving_models import register_champion

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROJECT_ROOT = Path(__file__).resolve().parents[2]
README = PROJECT_ROOT / "README.md"
NAME = "served-classifier"
CLASSES = ["bird", "cat", "dog"]
SHAPE = (24, 24, 3)
README_URL = "http://127.0.0.1:5001"


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _pattern(width: int, height: int) -> Image.Image:
    """A picture that looks different turned, so a missed EXIF rotation changes the answer."""
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack([x + 0 * y, (255 - y) + 0 * x, (x * y) / 255], axis=-1)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The champion of a fresh SQLite store, served on a free port; the test files."""
    root = tmp_path_factory.mktemp("serving")
    store = register_champion(root / "store", NAME, "image_folder", SHAPE, CLASSES, epochs=2)
    files = root / "files"
    files.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # Rotated: viewers turn it 90 degrees clockwise.
    (files / "wide.png").write_bytes(_encoded(_pattern(61, 23), "PNG"))
    (files / "rotated.jpg").write_bytes(
        _encoded(_pattern(40, 20), "JPEG", quality=95, exif=exif.tobytes())
    )
    (files / "gray.png").write_bytes(_encoded(_pattern(30, 30).convert("L"), "PNG"))
    env = {"MLFLOW_TRACKING_URI": store}
    with model_server(f"models:/{NAME}@champion", env, root) as url:
        yield {"url": url, "env": env, "files": files, "root": root}


def _post(url: str, payload: dict) -> requests.Response:
    return requests.post(f"{url}/invocations", json=payload, timeout=120)


def _images(*files: bytes, **params) -> dict:
    data = [[base64.b64encode(file).decode("ascii")] for file in files]
    payload: dict = {"dataframe_split": {"columns": ["image"], "data": data}}
    if params:
        payload["params"] = params
    return payload


def _pipeline_predict(served, *paths: Path) -> dict[str, dict[str, str]]:
    """`pipeline predict` with the champion, as a user runs it: {file name: CSV row}."""
    out = served["root"] / "predictions.csv"
    command = [
        str(Path(sys.executable).parent / "pipeline"),
        "predict",
        *map(str, paths),
        "--model",
        f"models:/{NAME}@champion",
        "--root",
        str(served["root"]),
        "--out",
        str(out),
    ]
    env = {**os.environ, **served["env"]}
    subprocess.run(command, check=True, env=env, timeout=300, capture_output=True)
    with open(out) as stream:
        return {Path(row["path"]).name: row for row in csv.DictReader(stream)}


def test_files_are_answered_as_pipeline_predict_answers_them(served) -> None:
    paths = sorted(served["files"].iterdir())
    response = _post(served["url"], _images(*(path.read_bytes() for path in paths)))
    assert response.status_code == 200, response.text
    answers = response.json()["predictions"]
    expected = _pipeline_predict(served, *paths)
    for path, answer in zip(paths, answers, strict=True):
        row = expected[path.name]
        assert answer["predicted_class"] == row["predicted_class"], path.name
        assert answer["probability"] == pytest.approx(float(row["probability"]), abs=2e-6)
        assert sum(answer[name] for name in CLASSES) == pytest.approx(1.0, abs=1e-5)
        assert answer["model_name"] == NAME and answer["model_version"] == "1"
        # The alias is resolved: the CSV names the version that answered.
        assert row["model"] == f"models:/{NAME}/1"
        assert "champion" in answer["model_alias"].split(",")
        assert answer["error"] is None
    # The same pixels as raw arrays (decoded here as the split decodes them) get the same
    # answer: the rotation was applied and the gray file became RGB before the model saw them.
    pixels = [decode_image(path.read_bytes(), SHAPE[0]).tolist() for path in paths]
    by_pixels = _post(served["url"], {"inputs": {"pixels": pixels}})
    assert by_pixels.status_code == 200, by_pixels.text
    for answer, other in zip(answers, by_pixels.json()["predictions"], strict=True):
        assert [answer[name] for name in CLASSES] == pytest.approx(
            [other[name] for name in CLASSES], abs=1e-6
        )
    rotated = served["files"] / "rotated.jpg"
    unrotated = np.asarray(Image.open(rotated).convert("RGB").resize(SHAPE[:2]))
    assert not np.array_equal(unrotated, decode_image(rotated, SHAPE[0]))


def _bad_payloads(good: bytes) -> list[tuple[str, dict, str]]:
    """(case, payload, what the message must say)."""
    junk = b"definitely not an image"
    return [
        ("undecodable", _images(junk), "image 0: not an image Pillow can identify"),
        ("one bad of three", _images(good, good, junk), "image 2: not an image Pillow"),
        (
            "wrong shape",
            {"inputs": {"pixels": np.zeros((1, 5, 5, 3), int).tolist()}},
            "image 0: pixels of shape (5, 5, 3); the model takes (24, 24, 3)",
        ),
        (
            "wrong dtype",
            {"inputs": {"pixels": np.full((1, *SHAPE), 0.5).tolist()}},
            "image 0: pixels must be integers 0..255 (uint8), got dtype float64",
        ),
        ("empty batch", {"dataframe_split": {"columns": ["image"], "data": []}}, "empty batch"),
        (
            "over the limit",
            _images(*[good] * 257),
            "batch of 257 images is over the limit of 256",
        ),
        ("no image column", {"dataframe_records": [{"photo": "x"}]}, "exactly one of the columns"),
    ]


def test_malformed_payloads_get_400_naming_the_image_and_the_server_goes_on(served) -> None:
    good = (served["files"] / "wide.png").read_bytes()
    for case, payload, message in _bad_payloads(good):
        response = _post(served["url"], payload)
        assert response.status_code == 400, (case, response.status_code, response.text[:500])
        body = response.json()
        assert body["error_code"] == "INVALID_PARAMETER_VALUE", case
        assert message in body["message"], (case, body["message"][:500])
        # The model's own message: not the request's data echoed back.
        assert len(body["message"]) < 400, (case, len(body["message"]))
    # Bad base64 is refused by MLflow itself before the model sees it, still with a 400.
    broken = {"dataframe_split": {"columns": ["image"], "data": [["abcde"]]}}
    assert _post(served["url"], broken).status_code == 400
    # One bad image fails only its row when the client asks for it.
    response = _post(served["url"], _images(good, b"junk", good, row_errors=True))
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert [row["error"] for row in rows][::2] == [None, None]
    assert rows[1]["error"].startswith("image 1: not an image Pillow can identify")
    assert rows[1]["predicted_class"] is None and rows[0]["predicted_class"] in CLASSES
    # And the server still answers a good request.
    response = _post(served["url"], _images(good))
    assert response.status_code == 200 and response.json()["predictions"][0]["error"] is None


def _readme_block(language: str, marker: str) -> str:
    """The README's ```language block holding `marker`."""
    blocks = re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.DOTALL)
    found = [block for block in blocks if marker in block]
    assert len(found) == 1, f"README.md has {len(found)} {language} blocks with {marker!r}"
    return found[0]


def test_the_readme_curl_command_and_python_client_run_as_written(served) -> None:
    workdir = served["root"] / "readme"
    workdir.mkdir()
    photo = served["files"] / "rotated.jpg"
    (workdir / "photo.jpg").write_bytes(photo.read_bytes())
    expected = _pipeline_predict(served, photo)["rotated.jpg"]
    curl = _readme_block("bash", "curl")
    assert README_URL in curl
    # As written, but for the port: the test's server listens on a free one.
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", curl.replace(README_URL, served["url"])],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer = json.loads(result.stdout)["predictions"][0]
    assert answer["predicted_class"] == expected["predicted_class"]
    assert answer["model_version"] == "1"

    client = _readme_block("python", "requests.post")
    assert len(client.strip().splitlines()) <= 6  # five lines of code and a blank one
    result = subprocess.run(
        [sys.executable, "-c", client.replace(README_URL, served["url"])],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    predicted, probability, version = result.stdout.split()
    assert predicted == expected["predicted_class"] and version == "1"
    assert float(probability) == pytest.approx(float(expected["probability"]), abs=2e-6)
