"""Strategy `feature_extraction`: a dense head on a frozen pretrained base.

Mode `cached` trains the head on the features stage's conv-base outputs (listing 5.18), fast
and without augmentation: features are computed once, which is the point of the mode
(Chollet's "fast feature extraction without data augmentation"). Mode `end_to_end` keeps the
frozen base inside the model and runs it on every batch, so augmentation applies (listings
5.20/5.21); much slower.
"""

from __future__ import annotations

from pipeline.config import FeatureExtractionConfig
from pipeline.models.heads import (
    assemble_feature_extraction_model,
    build_feature_head,
    set_trainable_from,
)
from pipeline.training.fine_tune import build_transfer_model
from pipeline.training.fit import FitOptions, TrainingResult, compile_classifier
from pipeline.training.frozen import frozen_view
from pipeline.training.interface import DataKind, Strategy, TrainingContext, TrainingData


def train_feature_extraction(
    data: TrainingData, config: FeatureExtractionConfig, context: TrainingContext
) -> TrainingResult:
    """A head on cached features, assembled with their extractor; or the frozen base and a
    head trained end to end on images."""
    if data.kind == "features":
        return _train_on_features(data, config, context)
    return _train_end_to_end(data, config, context)


def _train_on_features(
    data: TrainingData, config: FeatureExtractionConfig, context: TrainingContext
) -> TrainingResult:
    if data.extractor is None:
        raise ValueError("feature_extraction on features needs the extractor that computed them")
    head = build_feature_head(
        data.input_shape, data.num_classes, config.dense_units, config.dropout_rate
    )
    compile_classifier(head, config.optimizer, config.learning_rate)
    weights = data.class_weights(config.class_weight, "feature_extraction")
    history = context.fit(head, data, FitOptions.of(config, class_weights=weights))
    model = assemble_feature_extraction_model(data.extractor, head)
    return TrainingResult(model, history, class_weights=weights)


def _train_end_to_end(
    data: TrainingData, config: FeatureExtractionConfig, context: TrainingContext
) -> TrainingResult:
    model = build_transfer_model(data, config, context, name="feature_extraction")
    set_trainable_from(context.require_backbone("feature_extraction").base, None)
    weights = data.class_weights(config.class_weight, "feature_extraction")
    # Without augmentation, the head trains on the base's outputs computed once, as in mode
    # cached but inside this stage (`training.frozen`).
    with frozen_view(model, None, data, context) as view:
        view.compile(config.optimizer, config.learning_rate)
        history = view.fit(context, FitOptions.of(config, class_weights=weights))
    return TrainingResult(model, history, class_weights=weights)


def data_kind(config: FeatureExtractionConfig) -> DataKind:
    """Mode `cached` trains on features, mode `end_to_end` on images."""
    return "features" if config.mode == "cached" else "images"


FEATURE_EXTRACTION = Strategy(
    "feature_extraction",
    train_feature_extraction,
    uses_backbone=True,
    data_kind=data_kind,
)
