"""What a model version's traffic is compared against: the PCA projection that turns its
penultimate-layer features into short embeddings, and the monitoring reference (embeddings,
predicted classes and confidences of its test split) saved at registration."""

from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import DataError
from pipeline.store.files import atomic_write

logger = logging.getLogger(__name__)

PROJECTION_KEYS: tuple[str, ...] = ("mean", "components")
"""The keys of a projection file; the served model reads exactly these with numpy."""
REFERENCE_KEYS: tuple[str, ...] = ("embeddings", "predicted", "confidences", "classes")
DEFAULT_DIMENSIONS = 32


@dataclass(frozen=True)
class Projection:
    """A PCA projection: embedding = (features - mean) @ components.T."""

    mean: np.ndarray
    """(d,) the training features' mean."""
    components: np.ndarray
    """(k, d) the principal directions, largest variance first, one per row."""


@dataclass(frozen=True)
class Reference:
    """A model version's behaviour on its test split, the baseline its traffic is tested
    against."""

    embeddings: np.ndarray
    """(n, k) float32, the projected penultimate features."""
    predicted: np.ndarray
    """(n,) int64, the predicted class index (into `classes`)."""
    confidences: np.ndarray
    """(n,) float64, the top probability."""
    classes: tuple[str, ...]
    """The class names in label order."""


def fit_projection(features: np.ndarray, dimensions: int = DEFAULT_DIMENSIONS) -> Projection:
    """PCA of `features` (n, d) by SVD of the centred matrix, keeping min(dimensions, d, n-1)
    components, each signed so its largest-magnitude entry is positive (SVD's sign is
    arbitrary; this makes the same features give the same embeddings everywhere)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be a 2-D array (n, d), got shape {features.shape}")
    count, width = features.shape
    if count < 2:
        raise ValueError(f"fitting a projection needs at least 2 feature rows, got {count}")
    if dimensions < 1:
        raise ValueError(f"dimensions must be at least 1, got {dimensions}")
    if not np.all(np.isfinite(features)):
        raise ValueError("features contain NaN or infinite values; cannot fit a projection")
    kept = min(dimensions, width, count - 1)
    mean = features.mean(axis=0)
    _, _, vt = np.linalg.svd(features - mean, full_matrices=False)
    components = vt[:kept]
    largest = np.argmax(np.abs(components), axis=1)
    signs = np.sign(components[np.arange(kept), largest])
    # An all-zero component (features of rank below `kept`) has no sign to fix: left as is.
    signs[signs == 0] = 1.0
    components = components * signs[:, None]
    return Projection(mean=mean, components=components)


def apply_projection(features: np.ndarray, projection: Projection) -> np.ndarray:
    """The embeddings (n, k) float32 of `features` (n, d)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[1] != projection.mean.shape[0]:
        raise ValueError(
            f"features of shape {features.shape} do not fit a projection of "
            f"{projection.mean.shape[0]} features"
        )
    return ((features - projection.mean) @ projection.components.T).astype(np.float32)


def save_projection(path: Path, projection: Projection) -> None:
    """Write `projection` as an .npz of `mean` and `components` (float64)."""
    _save_npz(
        path,
        mean=np.asarray(projection.mean, dtype=np.float64),
        components=np.asarray(projection.components, dtype=np.float64),
    )


def load_projection(path: Path) -> Projection:
    """Read a projection written by save_projection; DataError naming the file and the key
    when it is missing or incomplete."""
    arrays = _load_npz(path, PROJECTION_KEYS, "projection")
    mean, components = arrays["mean"], arrays["components"]
    if mean.ndim != 1 or components.ndim != 2 or components.shape[1] != mean.shape[0]:
        raise DataError(
            f"{path}: projection 'mean' {mean.shape} and 'components' {components.shape} do "
            "not fit ((d,) and (k, d)); register the model again to rebuild it"
        )
    return Projection(mean=mean, components=components)


def save_reference(path: Path, reference: Reference) -> None:
    """Write `reference` as an .npz of `embeddings`, `predicted`, `confidences`, `classes`."""
    _save_npz(
        path,
        embeddings=np.asarray(reference.embeddings, dtype=np.float32),
        predicted=np.asarray(reference.predicted, dtype=np.int64),
        confidences=np.asarray(reference.confidences, dtype=np.float64),
        # A unicode array, not objects, so the file loads without allow_pickle.
        classes=np.asarray(reference.classes, dtype=np.str_),
    )


def load_reference(path: Path) -> Reference:
    """Read a reference written by save_reference; DataError naming the file and the key
    when it is missing, incomplete or inconsistent."""
    arrays = _load_npz(path, REFERENCE_KEYS, "monitoring reference")
    embeddings = arrays["embeddings"].astype(np.float32)
    predicted = arrays["predicted"].astype(np.int64)
    confidences = arrays["confidences"].astype(np.float64)
    classes = tuple(str(name) for name in arrays["classes"].tolist())
    count = len(predicted)
    if embeddings.ndim != 2 or len(embeddings) != count or len(confidences) != count:
        raise DataError(
            f"{path}: 'embeddings' {embeddings.shape}, 'predicted' {predicted.shape} and "
            f"'confidences' {confidences.shape} do not have the same number of rows; "
            "register the model again to rebuild its reference"
        )
    if count and (predicted.min() < 0 or predicted.max() >= len(classes)):
        raise DataError(
            f"{path}: 'predicted' holds class indices outside 0..{len(classes) - 1} "
            f"({len(classes)} classes); register the model again to rebuild its reference"
        )
    return Reference(
        embeddings=embeddings, predicted=predicted, confidences=confidences, classes=classes
    )


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    # np.savez appends ".npz" to a name that lacks it; writing to an open stream keeps the
    # name the caller chose, and atomic_write keeps readers from seeing half a file.
    with atomic_write(Path(path), "wb") as stream:
        np.savez(stream, **arrays)


def _load_npz(path: Path, keys: tuple[str, ...], what: str) -> dict[str, np.ndarray]:
    """The arrays `keys` of an .npz file, read eagerly so the file is closed on return."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in keys if key not in archive.files]
            if missing:
                raise DataError(
                    f"{path}: the {what} lacks the key '{missing[0]}' (it has "
                    f"{sorted(archive.files)}); register the model again to rebuild it"
                )
            return {key: archive[key] for key in keys}
    except FileNotFoundError:
        raise DataError(
            f"{path}: the {what} file is not there; register the model again to write it"
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"{path}: the {what} file cannot be read ({exc}); register the model again"
        ) from None
