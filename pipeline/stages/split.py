"""Read the raw dataset and write the train/val/test splits as a sharded store, in memory that
does not grow with the dataset.

Each image's split is a keyed hash of its content and `data.seed` (pipeline.datasets.split), so
adding images never moves another; the digests go into the shards and split.json.

Only the images kept (after `data.max_images`) are decoded, a chunk at a time, into a spool
file beside the output (each image is hashed as it is decoded), and the store is written from
the spool shard by shard (pipeline.store.write_store). Image files are decoded and hashed in
`data.workers` processes (pipeline.datasets.parallel), which write the same spool, and so the
same store, byte for byte, as this process alone. Shards of the previous store whose images all
stay in their split are kept byte-identical (dvc.yaml persists data/prepared for this) once
their bytes are verified against their names, so adding images writes new shards only and a
damaged shard is written again. Images that cannot be decoded, files the image
folder's snapshot left out (links outside it, non-images) and, with
`validate.label_conflicts: drop`, identical images under two classes are listed in
reports/data/skipped.csv and left out; unreadable ones stop the run under
`data.on_bad_image: fail`. A failed run writes nothing: data/prepared and skipped.csv stay as
they were.

Beside the store, a table names each stored image's source (`--sources`: digest, split and the
file, relative to the image folder, as skipped.csv names files), so the label-issues stage can
say which file to fix. It is a file of its own, not part of data/prepared: renaming an image
changes it, and must not re-run the stages that read the pixels and labels.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.config import DataConfig, load_config
from pipeline.datasets.folders import LINK_OUTSIDE, SKIPPED_HEADER, read_snapshot_skipped
from pipeline.datasets.parallel import (
    SpoolJob,
    decode_files_to_spool,
    resolve_workers,
    task_rows,
)
from pipeline.datasets.readers import ReadOptions, SourceIndex, open_dataset
from pipeline.datasets.sources import DATASETS
from pipeline.datasets.split import plan_split, stratified_subset
from pipeline.entry import Progress, log_result, log_start, run_entry
from pipeline.errors import DataError
from pipeline.store import (
    DROPPED_CONFLICTS_KEY,
    PLAN_FILE,
    SHARD_BYTES,
    SOURCES_COLUMNS,
    SPLITS,
    NpyRows,
    SplitRows,
    StoreReport,
    atomic_directory,
    image_digest,
    members_digest,
    write_csv,
    write_json,
    write_npy_rows,
    write_store,
)
from pipeline.store.writing import allocate_npy_rows

logger = logging.getLogger("pipeline.stages.split")

LabelConflicts = Literal["fail", "drop"]

DECODE_CHUNK_BYTES = 64 << 20
"""The most decoded image bytes the split stage holds at once."""


def prepare_splits(
    config: DataConfig,
    raw_dir: Path,
    prepared_dir: Path,
    skipped_file: Path,
    *,
    label_conflicts: LabelConflicts = "fail",
    chunk_bytes: int = DECODE_CHUNK_BYTES,
    shard_bytes: int = SHARD_BYTES,
    sources_file: Path | None = None,
) -> dict:
    """Decode, split and write the dataset; return the plan written beside the splits.

    At most `chunk_bytes` of decoded images are held at once; `shard_bytes` caps a shard.
    Identical images under two classes are kept and listed in the plan's `label_conflicts`
    (the data gate fails on them), or, with `label_conflicts="drop"`, left out and listed in
    `skipped_file`. `sources_file`, when given, gets every stored image's digest, split and
    source (SOURCES_COLUMNS), sorted. Nothing is written unless the whole split succeeds: a
    failure leaves `prepared_dir`, `skipped_file` and `sources_file` as they were."""
    prepared_dir = Path(prepared_dir)
    prepared_dir.parent.mkdir(parents=True, exist_ok=True)
    # A run killed outright (out of memory, SIGKILL) leaves its spool behind: a whole copy.
    for stale in prepared_dir.parent.glob(f".{prepared_dir.name}.spool-*"):
        shutil.rmtree(stale, ignore_errors=True)
    with tempfile.TemporaryDirectory(
        dir=prepared_dir.parent, prefix=f".{prepared_dir.name}.spool-"
    ) as spool_dir:
        spool_file = Path(spool_dir) / "images.npy"
        plan, skipped, sources = _prepare_from_spool(
            config,
            raw_dir,
            prepared_dir,
            spool_file,
            label_conflicts,
            chunk_bytes,
            shard_bytes,
        )
    # Only now, once data/prepared is in place: a failed split leaves its outs as they were.
    write_csv(skipped_file, SKIPPED_HEADER, skipped)
    if sources_file is not None:
        write_csv(sources_file, SOURCES_COLUMNS, sources)
    return plan


def _prepare_from_spool(
    config: DataConfig,
    raw_dir: Path,
    prepared_dir: Path,
    spool_file: Path,
    label_conflicts: LabelConflicts,
    chunk_bytes: int,
    shard_bytes: int,
) -> tuple[dict, list[tuple[str, str]], list[tuple[str, str, str]]]:
    spec = DATASETS[config.dataset]
    index = open_dataset(
        config.dataset, raw_dir, ReadOptions(config.image_size, config.resize, config.max_pixels)
    )
    # What the image folder's snapshot left out (outside links, non-images) is listed too; a
    # link outside the folder is left out by rule, the rest count as unreadable images.
    left_out = read_snapshot_skipped(raw_dir) if config.dataset == "image_folder" else []
    chosen = stratified_subset(index.labels, index.pools, config.max_images, config.seed)
    workers = resolve_workers(config.workers)
    bad, all_digests = decode_to_spool(index, chosen, spool_file, chunk_bytes, workers)
    unreadable = [(index.describe(int(chosen[row])), reason) for row, reason in bad.items()]
    unreadable += [(path, reason) for path, reason in left_out if reason != LINK_OUTSIDE]
    unreadable.sort()
    if unreadable:
        example, reason = unreadable[0]
        if config.on_bad_image == "fail":
            _log_rows("unreadable", unreadable)
            raise DataError(
                f"{len(unreadable)} image(s) could not be decoded, e.g. {example}: {reason}"
                f"{_more(unreadable)}. Remove or replace them, or set data.on_bad_image: skip "
                "to leave them out."
            )
        logger.warning(
            "%d unreadable image(s) skipped, e.g. %s: %s", len(unreadable), example, reason
        )
    keep = np.setdiff1d(np.arange(len(chosen)), np.fromiter(bad, dtype=np.int64))
    conflicts = find_label_conflicts(all_digests[keep], index.labels[chosen][keep])
    dropped: list[tuple[str, str]] = []
    dropped_record: list[dict] = []
    if conflicts and label_conflicts == "drop":
        dropped = _conflict_rows(conflicts, index, chosen[keep])
        # Kept in split.json (not in the gate's `label_conflicts`): label_issues lists them,
        # so the files to fix are named beside the suspects.
        dropped_record = _conflict_record(conflicts, index, chosen[keep])
        drop = np.concatenate([members for _, members in conflicts])
        keep = np.delete(keep, drop)
        logger.warning(
            "%d image(s) under two or more classes left out (validate.label_conflicts: drop), "
            "e.g. %s: %s",
            len(dropped),
            *dropped[0],
        )
        conflicts = []
    links = [(path, reason) for path, reason in left_out if reason == LINK_OUTSIDE]
    skipped = sorted(unreadable + links + dropped)
    labels = index.labels[chosen][keep]
    _check_no_empty_class(index, labels, skipped)
    pools = index.pools[chosen][keep] if index.pools is not None else None
    # Each kept image was hashed once, from its decoded pixels: the digest decides its split and
    # is stored with it, for the data gate's leak check and the training manifests.
    digests = all_digests[keep]
    test_fraction = spec.test_fraction or config.test_fraction
    split = plan_split(
        labels,
        pools,
        config.val_fraction,
        test_fraction,
        config.seed,
        digests=digests,
        class_names=list(index.class_names),
    )
    if split.reassigned:
        logger.info(
            "%d image(s) of small classes moved so that every class reaches every split",
            split.reassigned,
        )
    conflict_record = _conflict_record(conflicts, index, chosen[keep])
    sources = _source_rows(index, chosen[keep], digests, split.indices)
    spool = NpyRows(spool_file)
    try:
        with atomic_directory(prepared_dir) as staging:
            store, report = write_store(
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
            plan = _plan(config, spec, index, labels, skipped, split, digests, store)
            plan["label_conflicts"] = conflict_record
            if dropped_record:
                plan[DROPPED_CONFLICTS_KEY] = dropped_record
            write_json(staging / PLAN_FILE, plan)
    finally:
        spool.close()
    _log_store(store, report, split, index)
    if conflict_record:
        logger.warning(
            "%d image(s) are under two or more classes, e.g. %s; listed in %s under "
            "label_conflicts (the data gate fails on them; validate.label_conflicts: drop "
            "leaves them out)",
            len(conflict_record),
            " and ".join(
                f"{item['path']} ({item['class']})" for item in conflict_record[0]["files"][:2]
            ),
            PLAN_FILE,
        )
    return plan, skipped, sources


def _source_rows(
    index: SourceIndex, rows: np.ndarray, digests: np.ndarray, indices: dict[str, np.ndarray]
) -> list[tuple[str, str, str]]:
    """(digest, split, source) of every stored image, by split, then source and digest: a
    function of the data alone, like the store, so a re-run or a repair writes it again
    byte-identical. `rows[i]` is image i's row in `index`."""
    return [
        (str(digest), name, source)
        for name in SPLITS
        for source, digest in sorted(
            (index.describe(int(rows[position])), str(digests[position]))
            for position in indices[name]
        )
    ]


def find_label_conflicts(digests: np.ndarray, labels: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """Images whose content digest occurs under two or more labels: (digest, positions of
    every copy), sorted by digest."""
    digests = np.asarray(digests)
    labels = np.asarray(labels)
    if not len(digests):
        return []
    order = np.argsort(digests, kind="stable")
    ordered = digests[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    lowest = np.minimum.reduceat(labels[order], starts)
    highest = np.maximum.reduceat(labels[order], starts)
    ends = np.r_[starts[1:], len(order)]
    return [
        (str(ordered[start]), np.sort(order[start:end]))
        for start, end in zip(starts[lowest != highest], ends[lowest != highest], strict=True)
    ]


def _conflict_record(
    conflicts: list[tuple[str, np.ndarray]], index: SourceIndex, rows: np.ndarray
) -> list[dict]:
    """split.json's `label_conflicts`: per digest, every file and its class name, sorted."""
    return [
        {
            "digest": digest,
            "files": sorted(
                (
                    {
                        "path": index.describe(int(rows[member])),
                        "class": index.class_names[int(index.labels[rows[member]])],
                    }
                    for member in members
                ),
                key=lambda item: (item["path"], item["class"]),
            ),
        }
        for digest, members in conflicts
    ]


def _conflict_rows(
    conflicts: list[tuple[str, np.ndarray]], index: SourceIndex, rows: np.ndarray
) -> list[tuple[str, str]]:
    """skipped.csv's rows for images dropped as label conflicts: each names the others."""
    dropped = []
    for item in _conflict_record(conflicts, index, rows):
        files = item["files"]
        for position, entry in enumerate(files):
            others = [
                f"{o['path']} (class {o['class']})"
                for o in files[:position] + files[position + 1 :]
            ]
            shown = ", ".join(others[:5]) + (
                f" and {len(others) - 5} more" if len(others) > 5 else ""
            )
            dropped.append(
                (
                    entry["path"],
                    f"label conflict: class {entry['class']}, and the same image is also {shown}",
                )
            )
    return sorted(dropped)


def _log_rows(what: str, rows: list[tuple[str, str]], limit: int = 50) -> None:
    for path, reason in rows[:limit]:
        logger.error("%s: %s: %s", what, path, reason)
    if len(rows) > limit:
        logger.error("%s: and %d more", what, len(rows) - limit)


def _more(rows: list) -> str:
    return f" ({len(rows) - 1} more logged above)" if len(rows) > 1 else ""


def _log_store(store, report: StoreReport, split, index: SourceIndex) -> None:
    """What was kept from the previous store: run-dependent, so logged, never in split.json
    (a repaired store is byte-identical to the one it repairs, and so is split.json)."""
    for name in SPLITS:
        logger.debug(
            "%s: %d images of shape %s in %d shard(s), %d kept from the previous store",
            name,
            len(split.indices[name]),
            tuple(index.image_shape),
            len(store.splits[name]),
            report.kept[name],
        )
    kept = sum(report.kept.values())
    total = sum(len(shards) for shards in store.splits.values())
    if kept or report.damaged:
        logger.info(
            "%d of %d shard(s) kept from the previous store (verified)%s",
            kept,
            total,
            f"; {len(report.damaged)} damaged, written again: {', '.join(report.damaged)}"
            if report.damaged
            else "",
        )


def decode_to_spool(
    index: SourceIndex,
    chosen: np.ndarray,
    spool_file: Path,
    chunk_bytes: int,
    workers: int = 1,
) -> tuple[dict[int, str], np.ndarray]:
    """Decode the images at `chosen` into the .npy `spool_file` (row i: image chosen[i]; an
    undecodable one stays black); return {row: reason} of those that failed and every row's
    digest (empty for failed rows).

    In this process a chunk of at most `chunk_bytes` at a time; image files, when `workers` > 1
    and there is more than one task's worth, in that many processes
    (pipeline.datasets.parallel), which give the same spool, digests and failures."""
    shape = tuple(index.image_shape)
    if workers > 1 and index.files is not None and len(chosen) > task_rows(shape):
        logger.debug("decoding %d image files in %d processes", len(chosen), workers)
        offset = allocate_npy_rows(spool_file, (len(chosen), *shape), np.uint8)
        job = SpoolJob(str(spool_file), offset, shape, index.files.options)
        with Progress(len(chosen), "decoding") as progress:
            return decode_files_to_spool(index.files, chosen, job, workers, progress.update)
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


def _plan(config, spec, index, labels, skipped, split, digests, store) -> dict:
    """split.json: how the images were split. Only what the data decides: nothing that
    depends on the previous store (shards kept or repaired), so equal data, equal file."""
    return {
        "dataset": config.dataset,
        # The source's own split, a test share fixed by the course, or the params' fractions.
        "scheme": "source"
        if index.pools is not None
        else "fixed_test"
        if spec.test_fraction
        else "stratified",
        "images": int(len(labels)),
        "skipped": len(skipped),
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
    }


def _check_no_empty_class(
    index: SourceIndex, labels: np.ndarray, skipped: list[tuple[str, str]]
) -> None:
    counts = np.bincount(labels, minlength=len(index.class_names))
    empty = [name for name, count in zip(index.class_names, counts, strict=True) if count == 0]
    if empty:
        why = ""
        if skipped:
            ours = [row for row in skipped if row[0].split("/")[0] in empty] or skipped
            why = f"; {len(skipped)} image(s) were left out, e.g. {ours[0][0]}: {ours[0][1]}"
            _log_rows("left out", skipped)
        raise DataError(
            f"class(es) {', '.join(empty)} have no readable image{why}. Add images to them or "
            "remove the class."
        )


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="split", description=__doc__)
    parser.add_argument("--raw", type=Path, required=True, help="the dataset's raw folder")
    parser.add_argument("--out", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument("--skipped", type=Path, required=True, help="the unreadable-images CSV")
    parser.add_argument(
        "--sources",
        type=Path,
        help="the CSV naming each stored image's source file (digest, split, path)",
    )
    args = parser.parse_args(argv)
    config = load_config()
    log_start(f"{config.data.dataset} from {args.raw}")
    plan = prepare_splits(
        config.data,
        args.raw,
        args.out,
        args.skipped,
        label_conflicts=config.validation.label_conflicts,
        sources_file=args.sources,
    )
    log_result(split_summary(plan))


def split_summary(plan: dict) -> str:
    """The stage's result line: "1797 images -> train 1166, val 264, test 367", and what
    was skipped or found under two classes."""
    counts = ", ".join(f"{name} {count}" for name, count in plan["counts"].items())
    notes = []
    if plan["skipped"]:
        notes.append(f"{plan['skipped']} skipped")
    if plan.get("label_conflicts"):
        notes.append(f"{len(plan['label_conflicts'])} image(s) under two classes")
    return f"{plan['images']} images -> {counts}" + (f"; {', '.join(notes)}" if notes else "")


if __name__ == "__main__":
    run_entry(main, "stage 'split'")
