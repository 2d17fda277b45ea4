"""Fetch the configured dataset's source files into the raw folder, verified.

Remote files go through the shared download cache ($PIPELINE_DATA_CACHE); archives are
extracted safely. For `image_folder`, the user's folder is snapshot-copied instead, so DVC
versions exactly the images a model was trained on (links that lead outside it only with
`data.follow_links`). Either way the raw folder is swapped in whole once complete (DVC persists
it), so a download that fails leaves the previous one as it was.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path

from pipeline.config import load_config
from pipeline.datasets.fetch import fetch_dataset, source_overrides
from pipeline.datasets.folders import snapshot_image_folder
from pipeline.datasets.sources import DATASETS
from pipeline.entry import log_result, log_start, run_entry

logger = logging.getLogger("pipeline.stages.download")


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="download", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the dataset's raw folder")
    args = parser.parse_args(argv)
    config = load_config().data
    log_start(f"{config.dataset} into {args.out}")
    if config.dataset == "image_folder":
        scan = snapshot_image_folder(
            Path(config.image_folder), args.out, follow_links=config.follow_links
        )
        counts = ", ".join(f"{name}: {len(files)}" for name, files in scan.files.items())
        if scan.ignored:
            logger.warning(
                "%d non-image file(s) in %s were left out", scan.ignored, config.image_folder
            )
        log_result(f"image folder {config.image_folder} copied ({counts})")
        return
    spec = DATASETS[config.dataset]
    overrides = source_overrides(config.sources)
    paths = fetch_dataset(spec, args.out, mirror=config.mirror, overrides=overrides)
    log_result(f"{spec.name}: {len(paths)} file(s) verified")


if __name__ == "__main__":
    run_entry(main, "stage 'download'")
