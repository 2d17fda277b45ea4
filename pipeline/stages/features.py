"""Run VGG16's convolutional base over every split and cache the features.

The extractor (preprocessing + base) is saved beside the features, so `train_feature_extraction`
assembles its final model from exactly the weights that produced them, random ones included.
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.backbone import extract_features, resolve_weights
from pipeline.config import load_config
from pipeline.datasets.split import SPLITS, load_splits
from pipeline.models import build_feature_extractor, build_vgg16_base
from pipeline.stages._common import FEATURES_DIR, PARAMS_FILE, PREPARED_DIR, run_stage, write_json
from pipeline.training import set_global_seed

logger = logging.getLogger("pipeline.stages.features")


def main(argv: list[str]) -> None:
    config = load_config(PARAMS_FILE)
    splits = load_splits(PREPARED_DIR)
    weights = resolve_weights(config.backbone.weights)
    # Random weights must be the same on every run with the same seed.
    set_global_seed(config.data.seed)
    base = build_vgg16_base(config.backbone.image_size, weights.path)
    extractor = build_feature_extractor(splits["train"].x.shape[1:], base)
    FEATURES_DIR.mkdir(parents=True, exist_ok=True)
    for name in SPLITS:
        features = extract_features(extractor, splits[name].x, config.backbone.batch_size)
        np.save(FEATURES_DIR / f"{name}.npy", features)
        logger.info("%s: features %s", name, features.shape)
    extractor.save(FEATURES_DIR / "extractor.keras")
    write_json(
        FEATURES_DIR / "backbone.json",
        {
            "weights": weights.kind,
            "weights_file": weights.path,
            "image_size": config.backbone.image_size,
        },
    )
    logger.info("VGG16 weights: %s", weights.describe())


if __name__ == "__main__":
    run_stage(main)
