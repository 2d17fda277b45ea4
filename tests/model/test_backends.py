"""The same training code runs under TensorFlow and JAX: the scratch and fine-tune paths train,
save and reload, and fine-tuning leaves the frozen layers alone, on each backend."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.parametrize("backend", BACKENDS)
def test_scratch_and_fine_tune_train_on_the_backend(backend: str, tmp_path: Path) -> None:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "tests.backend_worker", str(tmp_path)],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend
    assert report["scratch_epochs"] == 3
    assert report["scratch_accuracy"] > 0.5  # chance is 0.1
    assert report["reloaded_same"]
    assert report["fine_tune_epochs"] == 2
    assert report["fine_tune_frozen_unchanged"]
    assert report["fine_tune_output"] == [None, 10]
