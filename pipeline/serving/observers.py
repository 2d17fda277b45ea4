"""What a loaded model hands the prediction recorder after each answer: one callback per
version for the served classifier (the decoded images and their probabilities, and the
version's `embed` for the recorder's writer thread), and the same records for models that are
not it (`pipeline predict --log` on a .keras file: no embeddings)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import numpy as np

TOP_K = 3


def observer_for(
    recorder,
    name: str,
    version: str,
    alias: str | None,
    classes: Sequence[str],
    embed: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> Callable:
    """The callback the served classifier calls as observer(images, probabilities) after each
    prediction of version `version` of `name`: it queues the answers with the recorder (which
    never raises), and `embed` for the recorder to compute the embeddings off the request
    path."""

    def observe(images: np.ndarray, probabilities: np.ndarray) -> None:
        record_probabilities(
            recorder, name, version, images, probabilities, classes, alias=alias, embed=embed
        )

    return observe


def record_probabilities(
    recorder,
    name: str,
    version: str,
    images: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
    *,
    alias: str | None = None,
    embed: Callable[[np.ndarray], np.ndarray | None] | None = None,
) -> None:
    """Queue one answered batch: the top TOP_K classes of each image from its probabilities."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
    top = np.take_along_axis(probabilities, order, axis=1)
    names = np.asarray(list(classes), dtype=object)
    recorder.record(
        model_name=name,
        model_version=version,
        model_alias=alias,
        images=images,
        predicted_class=[str(label) for label in names[order[:, 0]]],
        probability=[float(value) for value in top[:, 0]],
        top_classes=names[order].tolist(),
        top_probabilities=top.tolist(),
        embeddings=None,
        embed=embed,
        request_id=uuid.uuid4().hex,
    )
