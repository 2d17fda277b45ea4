"""Training above frozen layers on their outputs, computed once.

Fine-tuning's layers below `backbone.unfreeze_from` never change (frozen, the base in inference
mode), and without augmentation nothing random happens in them: every epoch would run every
image through them again to get the same activations. `frozen_view` runs the images through
them once, writes the activations at the cut to a temporary .npy file, and trains the layers
above the cut on those (`heads.cut_below`). The layers above are the model's own, so training
them trains the model; the feed visits the rows in the same order (the same content keys),
dropout draws the same masks, so the training is the one the whole model would have had, up to
floating-point rounding. On VGG16 at 32 px it makes the five tuning epochs of the digits cost
one pass of blocks 1-4 instead of five.

The view falls back to the whole model, with one log line saying why, where the activations
would change (augmentation, a random layer below the cut), where the cut does not split the
model (a residual connection across it), across several processes, and where they would not
fit the temporary folder.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import keras
import numpy as np

from pipeline.errors import ModelError
from pipeline.models.features import write_features
from pipeline.models.heads import FrozenCut, cut_below
from pipeline.store import NpyRows
from pipeline.training.backup import random_states
from pipeline.training.feed import FeedSource
from pipeline.training.fit import FitOptions, compile_classifier
from pipeline.training.interface import TrainingContext, TrainingData

logger = logging.getLogger(__name__)

MAX_CACHE_BYTES = 16 << 30
"""The most bytes of activations written; beyond (or beyond half the free space of the
temporary folder) the model is trained whole."""
CACHE_BATCH = 64
"""Images per predict batch while computing the activations."""


@dataclass
class TrainingView:
    """What a strategy fits (`model`, `data`) and compiles (`compile`): the whole model on
    images, or the layers above a frozen cut on its activations."""

    whole: keras.Model
    model: keras.Model
    data: TrainingData
    cut: FrozenCut | None = None

    def compile(self, optimizer: str, learning_rate: float) -> None:
        """Compile the whole model (the one saved) and, above a cut, the trained part with the
        same optimizer object: its slots are then the whole model's trainable variables'."""
        compile_classifier(self.whole, optimizer, learning_rate)
        if self.model is not self.whole:
            self.model.compile(
                optimizer=self.whole.optimizer, loss=self.whole.loss, metrics=["accuracy"]
            )

    def fit(
        self, context: TrainingContext, options: FitOptions, **fit_options
    ) -> dict[str, list[float]]:
        """`context.fit` on the view; above a cut, only once every layer below it is frozen
        (training above it would leave a trainable layer below unchanged)."""
        if self.cut is not None and self.cut.below.trainable_weights:
            names = sorted({weight.path for weight in self.cut.below.trainable_weights})
            raise ModelError(
                f"layers below the cut at {self.cut.layer or 'the head'} are trainable "
                f"({', '.join(names[:3])}): freeze them or train the whole model"
            )
        return context.fit(self.model, self.data, options, **fit_options)

    @contextlib.contextmanager
    def at_head(self, batch_size: int = CACHE_BATCH) -> Iterator[TrainingView]:
        """This view moved up to the head, for a phase that trains the head alone: the base's
        outputs computed once from this view's activations (itself when it trains the whole
        model or the head already). Use it once every layer of the base is frozen."""
        if self.cut is None or self.cut.layer is None:
            yield self
            return
        # From stored activations through the base's last layers: quick, no progress lines.
        head_cut = self.cut.at_head()
        with _activations_view(self.whole, head_cut, self.data, batch_size, False) as view:
            yield view


@contextlib.contextmanager
def frozen_view(
    model: keras.Model,
    first_layer: str | None,
    data: TrainingData,
    context: TrainingContext,
    batch_size: int = CACHE_BATCH,
) -> Iterator[TrainingView]:
    """The view to train `model` through, given that every layer of its base before
    `first_layer` (all of them when None) stays frozen while the view is used; the temporary
    activations are deleted on leaving."""
    cut, why_not = _cut_or_reason(model, first_layer, data, context)
    if cut is None:
        logger.info("training %s whole: %s", model.name, why_not)
        yield TrainingView(model, model, data)
        return
    with _activations_view(model, cut, data, batch_size) as view:
        yield view


def _cut_or_reason(
    model: keras.Model, first_layer: str | None, data: TrainingData, context: TrainingContext
) -> tuple[FrozenCut | None, str | None]:
    """The cut to train above, or None and why the whole model trains."""
    why_not = _why_whole(model, data, context)
    if why_not is not None:
        return None, why_not
    cut = cut_below(model, first_layer)
    if cut is None:
        return None, f"the model does not split at {first_layer or 'its head'}"
    if random_states(cut.below):
        return None, "a random layer lies below the cut"
    why_not = _why_too_large(cut, data)
    return (None, why_not) if why_not is not None else (cut, None)


@contextlib.contextmanager
def _activations_view(
    whole: keras.Model, cut: FrozenCut, data: TrainingData, batch_size: int, progress: bool = True
) -> Iterator[TrainingView]:
    """`cut.above` on `cut.below`'s outputs over `data`, written to a temporary folder that is
    deleted on leaving; the rows keep their labels and content keys (so their epoch order).
    `progress`: report the pass over the images (the one that takes time)."""
    directory = Path(tempfile.mkdtemp(prefix="pipeline-frozen-"))
    sources: list[FeedSource] = []
    try:
        for name, source in (("train", data.train), ("val", data.val)):
            path = directory / f"{name}.npy"
            write_features(
                cut.below,
                source.inputs,
                path,
                batch_size,
                label=f"{whole.name} activations of {name}",
                show_progress=progress,
            )
            sources.append(
                FeedSource(
                    NpyRows(path), source.labels, _shape(cut), source.keys, source.shard_starts
                )
            )
        logger.info(
            "%s: activations below %s computed once (%s per image); training the layers above",
            whole.name,
            cut.layer or "the head",
            "x".join(str(dim) for dim in _shape(cut)),
        )
        view_data = replace(data, train=sources[0], val=sources[1], kind="features")
        yield TrainingView(whole, cut.above, view_data, cut)
    finally:
        for source in sources:
            source.inputs.close()
        shutil.rmtree(directory, ignore_errors=True)


def _why_whole(model: keras.Model, data: TrainingData, context: TrainingContext) -> str | None:
    if context.augmentation is not None:
        return "augmentation changes every epoch's images"
    if context.devices.process_count > 1:
        return f"{context.devices.process_count} processes each read their own share"
    if data.kind != "images":
        return "it trains on features already"
    return None


def _shape(cut: FrozenCut) -> tuple[int, ...]:
    return tuple(int(dim) for dim in cut.below.output_shape[1:])


def _why_too_large(cut: FrozenCut, data: TrainingData) -> str | None:
    rows = len(data.train) + len(data.val)
    needed = rows * int(np.prod(_shape(cut), dtype=np.int64)) * 4
    free = shutil.disk_usage(tempfile.gettempdir()).free
    if needed > min(MAX_CACHE_BYTES, free // 2):
        return (
            f"its activations at the cut would take {needed / 2**30:.1f} GiB "
            f"({free / 2**30:.1f} GiB free in {tempfile.gettempdir()})"
        )
    return None
