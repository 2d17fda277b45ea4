"""What a loaded model hands the prediction recorder after each answer: one callback per
version for the served classifier (it sees the decoded images and their embeddings), and the
same records from bare probabilities for models that are not it (`pipeline predict --log` on a
.keras file: no embeddings)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence

import numpy as np

from pipeline.serving.model import PREDICTED_CLASS, PROBABILITY, TOP_CLASSES, TOP_PROBABILITIES

TOP_K = 3


def observer_for(recorder, name: str, version: str, alias: str | None) -> Callable:
    """The callback the served classifier calls as observer(images, embeddings, answer rows)
    after each prediction of version `version` of `name`; the recorder never raises."""

    def observe(images, embeddings, rows) -> None:
        recorder.record(
            model_name=name,
            model_version=version,
            model_alias=alias,
            images=images,
            predicted_class=[str(label) for label in rows[PREDICTED_CLASS]],
            probability=[float(value) for value in rows[PROBABILITY]],
            top_classes=list(rows[TOP_CLASSES]),
            top_probabilities=list(rows[TOP_PROBABILITIES]),
            embeddings=embeddings,
            request_id=uuid.uuid4().hex,
        )

    return observe


def record_probabilities(
    recorder,
    name: str,
    version: str,
    images: np.ndarray,
    probabilities: np.ndarray,
    classes: Sequence[str],
) -> None:
    """Record one batch answered by a model that is not the served classifier."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :TOP_K]
    top = np.take_along_axis(probabilities, order, axis=1)
    names = np.asarray(list(classes), dtype=object)
    recorder.record(
        model_name=name,
        model_version=version,
        model_alias=None,
        images=images,
        predicted_class=[str(label) for label in names[order[:, 0]]],
        probability=[float(value) for value in top[:, 0]],
        top_classes=names[order].tolist(),
        top_probabilities=top.tolist(),
        embeddings=None,
        request_id=uuid.uuid4().hex,
    )
