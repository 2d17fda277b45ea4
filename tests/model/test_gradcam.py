"""Grad-CAM is right where the answer is known: a tiny CNN learns which white bar an image of
noise holds, and its heatmaps peak on the bar, on TensorFlow and on JAX; through a fine-tune
model's VGG16 base, heatmaps, activation maps and filter patterns have the layer's shape and are
finite on both."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import keras
import pytest

from tests import gradcam_worker
from tests.project import PROJECT_ROOT

pytestmark = pytest.mark.slow

BACKENDS = [
    "tensorflow",
    pytest.param(
        "jax",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("jax") is None,
            reason="jax is not installed (pip install -e '.[dev]' installs it)",
        ),
    ),
]


def _run_worker(backend: str) -> dict:
    """The worker's report: in this process for the backend Keras runs on, else a subprocess."""
    if keras.backend.backend() == backend:
        return {
            "backend": backend,
            "softmax": gradcam_worker.shape_localization(2),
            "sigmoid": gradcam_worker.shape_localization(1),
            "nested": gradcam_worker.nested_heatmaps(),
        }
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.gradcam_worker"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcam_points_at_the_evidence(backend: str) -> None:
    report = _run_worker(backend)
    assert report["backend"] == backend
    for output in ("softmax", "sigmoid"):
        result = report[output]
        assert result["accuracy"] > 0.95, (output, result)
        assert result["finite"], output
        assert 0.0 <= result["range"][0] <= result["range"][1] <= 1.0, output
        # The class's heatmap peaks on the bar; class 0's ("no bar", for a sigmoid unit its
        # -logit) never does.
        assert result["hit_rate"] >= 0.9, (output, result)
        assert result["against_rate"] <= 0.1, (output, result)
    # VGG16 at 32x32: block5_conv3 is 2x2; its patterns take the size they are given.
    assert report["nested"] == {
        "shape": [4, 2, 2],
        "finite": True,
        "last_activation": [2, 2, 2],
        "patterns": [2, 40, 40, 3],
    }
