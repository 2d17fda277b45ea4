"""Read the raw dataset and write train/val/test splits as uint8 .npz, in bounded memory.

Each image's split is a keyed hash of its content and `data.seed` (pipeline.datasets.split), so
adding images never moves another; the digests go into the splits and split.json.

Only the images kept (after `data.max_images`) are decoded, straight into one preallocated
array, and each split is written from it in chunks. Images that cannot be decoded are listed in
reports/data/skipped.csv and left out, unless `data.on_bad_image: fail`.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig, load_config
from pipeline.datasets.readers import ReadOptions, SourceIndex, open_dataset
from pipeline.datasets.sources import DATASETS
from pipeline.datasets.split import plan_split, stratified_subset
from pipeline.entry import run_entry
from pipeline.errors import DataError
from pipeline.store import (
    PLAN_FILE,
    SPLITS,
    image_digest,
    members_digest,
    split_paths,
    write_json,
    write_split,
    write_text,
)

logger = logging.getLogger("pipeline.stages.split")


def prepare_splits(
    config: DataConfig, raw_dir: Path, prepared_dir: Path, skipped_file: Path
) -> dict:
    """Decode, split and write the dataset; return the plan written beside the splits."""
    spec = DATASETS[config.dataset]
    index = open_dataset(config.dataset, raw_dir, ReadOptions(config.image_size, config.resize))
    chosen = stratified_subset(index.labels, index.pools, config.max_images, config.seed)
    images = np.empty((len(chosen), *index.image_shape), dtype=np.uint8)
    bad = index.load(chosen, images)
    skipped = [(index.describe(int(chosen[row])), reason) for row, reason in bad.items()]
    _write_skipped(skipped_file, skipped)
    if skipped:
        example, reason = skipped[0]
        if config.on_bad_image == "fail":
            raise DataError(
                f"{len(bad)} image(s) could not be decoded, e.g. {example}: "
                f"{reason}. All are listed in {skipped_file}. Remove or "
                "replace them, or set data.on_bad_image: skip to leave them out."
            )
        logger.warning(
            "%d unreadable image(s) skipped, e.g. %s (see %s)", len(bad), example, skipped_file
        )
    keep = np.setdiff1d(np.arange(len(chosen)), np.fromiter(bad, dtype=np.int64))
    labels = index.labels[chosen][keep]
    _check_no_empty_class(index, labels, bad, skipped_file)
    pools = index.pools[chosen][keep] if index.pools is not None else None
    # Each kept image is hashed once, from its decoded pixels: the digest decides its split and
    # is stored with it, for the data gate's leak check and the training manifests.
    digests = np.array([image_digest(images[row]) for row in keep], dtype="<U32")
    test_fraction = spec.test_fraction or config.test_fraction
    split = plan_split(
        labels, pools, config.val_fraction, test_fraction, config.seed, digests=digests
    )
    if split.reassigned:
        logger.info(
            "%d image(s) of small classes moved so that every class reaches every split",
            split.reassigned,
        )
    for name, path in split_paths(prepared_dir).items():
        in_split = split.indices[name]
        rows = keep[in_split]
        write_split(
            path,
            images,
            rows,
            labels[in_split],
            index.class_names,
            hashes=digests[in_split],
        )
        logger.info("%s: %d images of shape %s", name, len(rows), images.shape[1:])
    plan = {
        "dataset": config.dataset,
        # The source's own split, a test share fixed by the course, or the params' fractions.
        "scheme": "source"
        if index.pools is not None
        else "fixed_test"
        if spec.test_fraction
        else "stratified",
        "images": int(len(labels)),
        "skipped": len(bad),
        "counts": {name: int(len(split.indices[name])) for name in SPLITS},
        "expected_fractions": split.fractions,
        # An image's split is a keyed hash of its content and the seed (see plan_split); the
        # data gate bounds how far counts may stray from the fractions, reassigned included.
        "assignment": "content_hash",
        "seed": config.seed,
        "reassigned": split.reassigned,
        "classes": list(index.class_names),
        # One hash per split of its images' digests: equal members, equal hash.
        "members": {name: members_digest(digests[split.indices[name]]) for name in SPLITS},
    }
    write_json(prepared_dir / PLAN_FILE, plan)
    return plan


def _check_no_empty_class(
    index: SourceIndex, labels: np.ndarray, bad: dict[int, str], skipped_file: Path
) -> None:
    counts = np.bincount(labels, minlength=len(index.class_names))
    empty = [name for name, count in zip(index.class_names, counts, strict=True) if count == 0]
    if empty:
        why = f"; {len(bad)} unreadable image(s) are listed in {skipped_file}" if bad else ""
        raise DataError(
            f"class(es) {', '.join(empty)} have no readable image{why}. Add images to them or "
            "remove the class."
        )


def _write_skipped(path: Path, rows: list[tuple[str, str]]) -> None:
    """Always written (a header alone when nothing was skipped), atomically."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["path", "reason"])
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="split", description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="the dataset's raw folder")
    parser.add_argument("--out", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument("--skipped", type=Path, required=True, help="the unreadable-images CSV")
    args = parser.parse_args(argv)
    config = load_config().data
    plan = prepare_splits(config, args.raw, args.out, args.skipped)
    logger.info("%s: %d images split %s", plan["dataset"], plan["images"], plan["counts"])


if __name__ == "__main__":
    run_entry(main, "stage 'split'")
