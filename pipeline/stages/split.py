"""Read the raw dataset and write stratified, seeded train/val/test splits as uint8 .npz."""

from __future__ import annotations

import logging

from pipeline.config import load_config
from pipeline.datasets.readers import read_dataset
from pipeline.datasets.split import SPLITS, Split, save_split, split_indices
from pipeline.stages._common import PARAMS_FILE, PREPARED_DIR, RAW_DIR, run_stage

logger = logging.getLogger("pipeline.stages.split")


def main(argv: list[str]) -> None:
    config = load_config(PARAMS_FILE).data
    dataset = read_dataset(config.dataset, RAW_DIR / config.dataset)
    indices = split_indices(dataset.labels, config.val_fraction, config.test_fraction, config.seed)
    for name in SPLITS:
        chosen = indices[name]
        split = Split(dataset.images[chosen], dataset.labels[chosen], dataset.class_names)
        save_split(PREPARED_DIR / f"{name}.npz", split)
        logger.info("%s: %d images of shape %s", name, len(chosen), split.x.shape[1:])


if __name__ == "__main__":
    run_stage(main)
