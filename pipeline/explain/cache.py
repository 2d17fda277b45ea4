"""A cache of explanations that depend only on a model's weights and the explanation's params
(filter patterns), so re-evaluating after a change that leaves a model as it was (another
strategy's training, an `evaluate.*` key the explanation does not read, code elsewhere) does not
run gradient ascent again.

An entry's key digests everything its value follows from: the (sub)model's layers (class, name,
config) and every weight's bytes, its input shape and dtype, the explanation's params, the
source of the modules that compute it, the cache's own version, and the Keras backend and
versions. A different model, param or algorithm is a different key: an entry is never stale,
only unused.

Entries live in `.pipeline/explanations/` of the project (gitignored, and no stage's DVC out:
DVC neither hashes nor removes it, so `dvc status` stays clean), or where the environment
variable PIPELINE_EXPLANATION_CACHE points (`off`: no cache). Beside the model would put them
inside train's outputs, and the report folder is deleted by DVC before every evaluation.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import keras
import numpy as np

from pipeline.store import atomic_write

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
"""Bump when what an entry holds changes in a way its key does not show."""
CACHE_ENV = "PIPELINE_EXPLANATION_CACHE"
CACHE_FOLDER = Path(".pipeline") / "explanations"
MAX_ENTRIES = 256
"""The least recently used entries beyond this many are deleted (a layer's 8 patterns at 64 px
are 100 KB: 25 MB at most)."""


def explanation_cache(root: Path) -> ExplanationCache:
    """The project's cache: `root`/.pipeline/explanations, or PIPELINE_EXPLANATION_CACHE's
    folder, or a disabled cache when that variable is `off`."""
    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() in ("off", "none", "0", "false"):
        return ExplanationCache(None)
    return ExplanationCache(Path(setting) if setting else root / CACHE_FOLDER)


def model_digest(model: keras.Model) -> str:
    """sha256 of what a model computes: its input's shape and dtype, each layer's class, name
    and config, and the bytes, shape and dtype of every weight (non-trainable included)."""
    digest = hashlib.sha256()
    for tensor in model.inputs:
        digest.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
    for layer in model.layers:
        config = json.dumps(layer.get_config(), sort_keys=True, default=repr)
        digest.update(f"{type(layer).__module__}.{type(layer).__name__}\0{config}\0".encode())
        for weight in layer.weights:
            values = np.ascontiguousarray(keras.ops.convert_to_numpy(weight))
            digest.update(f"{weight.path}{values.shape}{values.dtype}".encode())
            digest.update(values.tobytes())
    return digest.hexdigest()


def source_digest(modules: Iterable[ModuleType]) -> str:
    """sha256 of the modules' source files: editing the code that computes an entry changes
    its key."""
    digest = hashlib.sha256()
    for module in modules:
        digest.update(module.__name__.encode())
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()


def _environment() -> dict[str, str]:
    """The backend and library versions, whose numerics an entry may follow."""
    backend = keras.backend.backend()
    try:
        backend_version = importlib.metadata.version(backend)
    except importlib.metadata.PackageNotFoundError:
        backend_version = "unknown"
    return {"keras": keras.version(), "backend": backend, "backend_version": backend_version}


@dataclass
class ExplanationCache:
    """Explanation arrays by key, as .npy files in `folder` (None: nothing is cached, every
    request computes). `hits` and `misses` count this process's requests."""

    folder: Path | None
    hits: int = 0
    misses: int = 0

    def key(self, kind: str, model: keras.Model, params: dict, code: Iterable[ModuleType]) -> str:
        """The entry's key: `kind`, the model's digest, `params`, the code's source digest,
        CACHE_VERSION and the backend's versions."""
        parts = {
            "kind": kind,
            "version": CACHE_VERSION,
            "model": model_digest(model),
            "params": params,
            "code": source_digest(code),
            **_environment(),
        }
        text = json.dumps(parts, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()

    def fetch(
        self,
        kind: str,
        model: keras.Model,
        params: dict,
        code: Iterable[ModuleType],
        compute: Callable[[], np.ndarray],
    ) -> np.ndarray:
        """The array cached for (`kind`, `model`, `params`, `code`), else `compute()`'s, which
        is stored for next time. A cache that cannot be read or written is only a miss."""
        if self.folder is None:
            self.misses += 1
            return compute()
        path = self.folder / f"{kind}-{self.key(kind, model, params, code)}.npy"
        try:
            value = np.load(path, allow_pickle=False)
        except (OSError, ValueError):
            value = None
        if value is not None:
            self.hits += 1
            _touch(path)
            return value
        self.misses += 1
        value = compute()
        try:
            self._store(path, value)
        except OSError as exc:
            logger.warning("explanation cache %s not written: %s", self.folder, exc)
        return value

    def _store(self, path: Path, value: np.ndarray) -> None:
        """Write atomically (a reader never sees half a file), then drop the least recently
        used entries beyond MAX_ENTRIES."""
        with atomic_write(path, "wb") as stream:
            np.save(stream, np.asarray(value), allow_pickle=False)
        entries = sorted(path.parent.glob("*.npy"), key=_mtime, reverse=True)
        for old in entries[MAX_ENTRIES:]:
            old.unlink(missing_ok=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _touch(path: Path) -> None:
    """Mark an entry as used now (the pruning keeps the most recently used)."""
    with contextlib.suppress(OSError):
        os.utime(path)
