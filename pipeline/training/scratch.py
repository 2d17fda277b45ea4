"""Strategy `scratch`: a CNN trained from scratch on the raw images, with augmentation.

The architecture is the strategy's own choice: `train.scratch.architecture`, `auto` resolved
per dataset (the course's network for it), logged as the run param `train.architecture`.
"""

from __future__ import annotations

from pipeline.config import ScratchConfig
from pipeline.explain.filters import first_conv_kernel
from pipeline.explain.graph import ExplainError
from pipeline.models.builders import Architecture, build_architecture, resolve_architecture
from pipeline.training.fit import FitOptions, TrainingResult, compile_classifier
from pipeline.training.interface import Strategy, TrainingContext, TrainingData


def train_scratch(
    data: TrainingData, config: ScratchConfig, context: TrainingContext
) -> TrainingResult:
    """The architecture's listing on the raw images, compiled and fitted."""
    if context.architecture is None:
        raise ValueError("scratch builds context.architecture: resolve it for the dataset first")
    model = build_architecture(
        context.architecture,
        data.input_shape,
        data.num_classes,
        context.augmentation,
        conv_filters=config.conv_filters,
        dense_units=config.dense_units,
        dropout_rate=config.dropout_rate,
    )
    compile_classifier(model, config.optimizer, config.learning_rate)
    # Before fit_model, which may restore a backup: a resumed run rebuilds the same initial
    # weights from the seed, so this is the kernel its first epoch started from.
    try:
        first_kernel = first_conv_kernel(model).copy()
    except ExplainError:
        first_kernel = None  # A network without convolutions has no filters to show.
    weights = data.class_weights(config.class_weight, "scratch")
    history = context.fit(model, data, FitOptions.of(config, class_weights=weights))
    return TrainingResult(model, history, first_kernel_before=first_kernel, class_weights=weights)


def resolve_scratch_architecture(config: ScratchConfig, dataset: str) -> Architecture:
    """`train.scratch.architecture`, with `auto` resolved for `dataset`."""
    return resolve_architecture(config.architecture, dataset)


SCRATCH = Strategy(
    "scratch",
    train_scratch,
    uses_backbone=False,
    architecture=resolve_scratch_architecture,
)
