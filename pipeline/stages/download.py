"""Fetch the configured dataset's source files into data/raw/<dataset>/, verified.

Remote files go through the shared download cache ($PIPELINE_DATA_CACHE); archives are
extracted safely. For `image_folder`, the user's folder is snapshot-copied instead, so DVC
versions exactly the images a model was trained on.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pipeline.config import DataConfig, load_config
from pipeline.datasets.download import SourceOverride, fetch_dataset, snapshot_image_folder
from pipeline.datasets.sources import DATASETS
from pipeline.stages._common import PARAMS_FILE, RAW_DIR, run_stage

logger = logging.getLogger("pipeline.stages.download")


def source_overrides(config: DataConfig) -> dict[str, SourceOverride]:
    """The `data.sources` block as the download module's plain values."""
    return {
        name: SourceOverride(url=source.url, sha256=source.sha256)
        for name, source in config.sources.items()
    }


def main(argv: list[str]) -> None:
    config = load_config(PARAMS_FILE).data
    raw_dir = RAW_DIR / config.dataset
    if config.dataset == "image_folder":
        scan = snapshot_image_folder(Path(config.image_folder), raw_dir)
        counts = ", ".join(f"{name}: {len(files)}" for name, files in scan.files.items())
        logger.info("image folder %s copied to %s (%s)", config.image_folder, raw_dir, counts)
        if scan.ignored:
            logger.warning(
                "%d non-image file(s) in %s were left out", scan.ignored, config.image_folder
            )
        return
    spec = DATASETS[config.dataset]
    paths = fetch_dataset(spec, raw_dir, mirror=config.mirror, overrides=source_overrides(config))
    logger.info("%s: %d file(s) verified under %s", spec.name, len(paths), raw_dir)


if __name__ == "__main__":
    run_stage(main)
