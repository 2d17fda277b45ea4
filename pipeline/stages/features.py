"""Run the backbone's convolutional base over every split and cache the features.

The extractor (preprocessing + base) is saved beside the features, so `train_feature_extraction`
assembles its final model from exactly the weights that produced them, random ones included.
The folder is replaced whole once every file is written (DVC persists it), so a run that fails
leaves the previous features as they were.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import load_config
from pipeline.entry import run_entry
from pipeline.models.backbones import BACKBONES, resolve_weights
from pipeline.models.features import write_features
from pipeline.models.heads import build_feature_extractor
from pipeline.models.weight_kinds import describe_weights
from pipeline.store import (
    EXTRACTOR_FILE,
    FEATURES_INFO_FILE,
    atomic_directory,
    open_splits,
    write_json,
)
from pipeline.training.fit import set_global_seed

logger = logging.getLogger("pipeline.stages.features")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="features", description=__doc__)
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument("--out", type=Path, required=True, help="the features folder")
    args = parser.parse_args(argv)
    config = load_config()
    # Each split's images are read a chunk at a time (write_features): never whole.
    splits = open_splits(args.prepared)
    backbone = BACKBONES[config.backbone.name]
    # Logs which weights these are (`hed` and `random` in words): the features inherit them.
    weights = resolve_weights(config.backbone.weights, backbone)
    # Random weights must be the same on every run with the same seed.
    set_global_seed(config.train.seed, config.train.deterministic)
    base = backbone.build(config.backbone.image_size, weights.path)
    extractor = build_feature_extractor(splits["train"].image_shape, backbone, base)
    with atomic_directory(args.out) as staging:
        for name, split in splits.items():
            shape = write_features(
                extractor, split, staging / f"{name}.npy", config.backbone.batch_size
            )
            split.close()
            logger.info("%s: features %s", name, shape)
        extractor.save(staging / EXTRACTOR_FILE)
        write_json(
            staging / FEATURES_INFO_FILE,
            {
                "backbone": backbone.name,
                "weights": weights.kind,
                "weights_label": describe_weights(weights.kind),
                "weights_file": weights.path,
                "image_size": config.backbone.image_size,
            },
        )
    logger.info(
        "features of %s with weights %s written to %s", backbone.name, weights.kind, args.out
    )


if __name__ == "__main__":
    run_entry(main, "stage 'features'")
