"""Read the raw dataset and write the train/val/test splits as a sharded store, in memory that
does not grow with the dataset.

Each image's split is a keyed hash of its content and `data.seed` (pipeline.datasets.split), so
adding images never moves another; the digests go into the shards and split.json.

Only the images kept (after `data.max_images`) are decoded, a chunk at a time, into a spool
file beside the output (each image is hashed as it is decoded), and the store is written from
the spool shard by shard (pipeline.store.write_store). Shards of the previous store whose
images all stay in their split are kept byte-identical (dvc.yaml persists data/prepared for
this), so adding images writes new shards only. Images that cannot be decoded are listed in
reports/data/skipped.csv and left out, unless `data.on_bad_image: fail`.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.config import DataConfig, load_config
from pipeline.datasets.readers import ReadOptions, SourceIndex, open_dataset
from pipeline.datasets.sources import DATASETS
from pipeline.datasets.split import plan_split, stratified_subset
from pipeline.entry import Progress, log_result, log_start, run_entry
from pipeline.errors import DataError
from pipeline.store import (
    PLAN_FILE,
    SHARD_BYTES,
    SPLITS,
    NpyRows,
    SplitRows,
    atomic_directory,
    image_digest,
    members_digest,
    write_json,
    write_npy_rows,
    write_store,
    write_text,
)

logger = logging.getLogger("pipeline.stages.split")

DECODE_CHUNK_BYTES = 64 << 20
"""The most decoded image bytes the split stage holds at once."""


def prepare_splits(
    config: DataConfig,
    raw_dir: Path,
    prepared_dir: Path,
    skipped_file: Path,
    *,
    chunk_bytes: int = DECODE_CHUNK_BYTES,
    shard_bytes: int = SHARD_BYTES,
) -> dict:
    """Decode, split and write the dataset; return the plan written beside the splits.

    At most `chunk_bytes` of decoded images are held at once; `shard_bytes` caps a shard."""
    prepared_dir = Path(prepared_dir)
    prepared_dir.parent.mkdir(parents=True, exist_ok=True)
    # A run killed outright (out of memory, SIGKILL) leaves its spool behind: a whole copy.
    for stale in prepared_dir.parent.glob(f".{prepared_dir.name}.spool-*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(
        dir=prepared_dir.parent, prefix=f".{prepared_dir.name}.spool-"
    ) as spool_dir:
        spool_file = Path(spool_dir) / "images.npy"
        return _prepare_from_spool(
            config, raw_dir, prepared_dir, skipped_file, spool_file, chunk_bytes, shard_bytes
        )


def _prepare_from_spool(
    config: DataConfig,
    raw_dir: Path,
    prepared_dir: Path,
    skipped_file: Path,
    spool_file: Path,
    chunk_bytes: int,
    shard_bytes: int,
) -> dict:
    spec = DATASETS[config.dataset]
    index = open_dataset(
        config.dataset, raw_dir, ReadOptions(config.image_size, config.resize, config.max_pixels)
    )
    chosen = stratified_subset(index.labels, index.pools, config.max_images, config.seed)
    bad, all_digests = decode_to_spool(index, chosen, spool_file, chunk_bytes)
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
    # Each kept image was hashed once, from its decoded pixels: the digest decides its split and
    # is stored with it, for the data gate's leak check and the training manifests.
    digests = all_digests[keep]
    test_fraction = spec.test_fraction or config.test_fraction
    split = plan_split(
        labels, pools, config.val_fraction, test_fraction, config.seed, digests=digests
    )
    if split.reassigned:
        logger.info(
            "%d image(s) of small classes moved so that every class reaches every split",
            split.reassigned,
        )
    spool = NpyRows(spool_file)
    try:
        with atomic_directory(prepared_dir) as staging:
            store, kept = write_store(
                staging,
                {
                    name: SplitRows(
                        keep[split.indices[name]],
                        labels[split.indices[name]],
                        digests[split.indices[name]],
                    )
                    for name in SPLITS
                },
                spool.read,
                tuple(index.image_shape),
                list(index.class_names),
                previous=prepared_dir if prepared_dir.is_dir() else None,
                shard_bytes=shard_bytes,
                chunk_bytes=chunk_bytes,
            )
            plan = _plan(config, spec, index, labels, bad, split, digests, store, kept)
            write_json(staging / PLAN_FILE, plan)
    finally:
        spool.close()
    for name in SPLITS:
        logger.debug(
            "%s: %d images of shape %s in %d shard(s), %d kept from the previous store",
            name,
            len(split.indices[name]),
            tuple(index.image_shape),
            len(store.splits[name]),
            kept[name],
        )
    return plan


def decode_to_spool(
    index: SourceIndex, chosen: np.ndarray, spool_file: Path, chunk_bytes: int
) -> tuple[dict[int, str], np.ndarray]:
    """Decode the images at `chosen` a chunk of at most `chunk_bytes` at a time into the .npy
    `spool_file` (row i: image chosen[i]; an undecodable one stays black); return {row: reason}
    of those that failed and every row's digest (empty for failed rows)."""
    shape = tuple(index.image_shape)
    step = max(1, chunk_bytes // max(1, int(np.prod(shape))))
    bad: dict[int, str] = {}
    digests = np.zeros(len(chosen), dtype="<U32")

    def chunks():
        # A bar on a terminal; in DVC's or CI's log, a line at every 10%.
        with Progress(len(chosen), "decoding") as progress:
            for start in range(0, len(chosen), step):
                yield decode_chunk(start)
                progress.update(min(step, len(chosen) - start))

    def decode_chunk(start: int) -> np.ndarray:
        rows = chosen[start : start + step]
        buffer = np.zeros((len(rows), *shape), dtype=np.uint8)
        failed = index.load(rows, buffer)
        for row, reason in failed.items():
            bad[start + int(row)] = reason
            buffer[int(row)] = 0
        for offset in range(len(rows)):
            if offset not in failed:
                digests[start + offset] = image_digest(buffer[offset])
        return buffer

    write_npy_rows(spool_file, (len(chosen), *shape), np.uint8, chunks())
    return dict(sorted(bad.items())), digests


def _plan(config, spec, index, labels, bad, split, digests, store, kept) -> dict:
    """split.json: how the images were split, and into which shards."""
    return {
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
        "data_version": store.version,
        "shards": {name: len(store.splits[name]) for name in SPLITS},
        "shards_kept": kept,
    }


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
    log_start(f"{config.dataset} from {args.raw}")
    plan = prepare_splits(config, args.raw, args.out, args.skipped)
    log_result(split_summary(plan))


def split_summary(plan: dict) -> str:
    """The stage's result line: "1797 images -> train 1166, val 264, test 367", and what
    was skipped or kept from the previous store."""
    counts = ", ".join(f"{name} {count}" for name, count in plan["counts"].items())
    notes = []
    if plan["skipped"]:
        notes.append(f"{plan['skipped']} unreadable skipped")
    kept = sum(plan.get("shards_kept", {}).values())
    if kept:
        notes.append(f"{kept} of {sum(plan['shards'].values())} shard(s) kept")
    return f"{plan['images']} images -> {counts}" + (f"; {', '.join(notes)}" if notes else "")


if __name__ == "__main__":
    run_entry(main, "stage 'split'")
