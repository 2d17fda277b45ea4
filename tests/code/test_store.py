"""The sharded split store (pipeline/store/) and the split stage that writes it: shards are
read in any order without holding a split, adding images writes new shards and leaves the
others byte-identical, and the split stage holds one chunk of decoded images at a time."""

from __future__ import annotations

import hashlib
import logging
import re
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig
from pipeline.datasets.folders import snapshot_image_folder
from pipeline.errors import DataError
from pipeline.stages.split import prepare_splits
from pipeline.store import (
    SHARDS_DIR,
    STORE_FILE,
    NpyRows,
    SplitRows,
    image_digests,
    open_split,
    open_splits,
    read_store_index,
    verify_images,
    write_store,
    write_store_from_arrays,
)

CLASSES = ["a", "b", "c"]
SIDE = 40


def _arrays(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(count, 5, 5, 3), dtype=np.uint8)
    return x, np.arange(count, dtype=np.int64) % 3


def _add_images(folder: Path, count: int, seed: int, prefix: str) -> None:
    rng = np.random.default_rng(seed)
    for index in range(count):
        pixels = rng.integers(0, 256, size=(SIDE, SIDE, 3), dtype=np.uint8)
        name = CLASSES[index % 3]
        (folder / name).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / name / f"{prefix}{index:04d}.png")


def _split_folder(folder: Path, project: Path, snapshot: bool = True, **options) -> dict:
    """What the split stage does in `project`: snapshot, then split into data/prepared."""
    config = DataConfig(
        dataset="image_folder",
        image_folder=str(folder),
        image_size=SIDE,
        val_fraction=0.2,
        test_fraction=0.2,
    )
    raw = project / "raw"
    if snapshot:
        snapshot_image_folder(folder, raw)
    return prepare_splits(config, raw, project / "prepared", project / "skipped.csv", **options)


def _kept(caplog) -> dict[str, int]:
    """Per split, the shards the last split run kept from the previous store (logged: the
    count depends on the run, so it is kept out of split.json)."""
    found = {}
    for record in caplog.records:
        match = re.match(r"(\w+): \d+ images .* (\d+) kept from the previous store", record.message)
        if match:
            found[match.group(1)] = int(match.group(2))
    return found


@pytest.fixture(autouse=True)
def _debug_logs(caplog):
    caplog.set_level(logging.DEBUG, logger="pipeline.stages.split")


def _shard_files(prepared: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted((prepared / SHARDS_DIR).iterdir())
    }


def test_a_store_reads_rows_in_any_order_across_shards(tmp_path):
    x, y = _arrays(40)
    index = write_store_from_arrays(
        tmp_path,
        {"train": (x, y), "val": (x[:4], y[:4]), "test": (x[4:8], y[4:8])},
        CLASSES,
        shard_bytes=7 * x[0].nbytes,
    )
    assert [shard.count for shard in index.splits["train"]] == [7, 7, 7, 7, 7, 5]
    split = open_split(tmp_path, "train")
    rows = np.array([39, 0, 8, 7, 7, 20, 13, 14])
    assert np.array_equal(split.read(rows), x[rows])
    assert np.array_equal(split.y, y) and split.classes == CLASSES
    assert np.array_equal(split.digests(), image_digests(x))
    batches = list(split.batches(16))
    assert [len(rows) for rows, _ in batches] == [16, 16, 8]
    assert np.array_equal(np.concatenate([images for _, images in batches]), x)
    # Every shard's images are a plain .npy that NumPy maps.
    first = index.splits["train"][0]
    mapped = np.load(first.path(tmp_path, "images"), mmap_mode="r")
    assert np.array_equal(mapped, x[:7])
    with pytest.raises(IndexError):
        split.read([40])


def test_adding_images_writes_new_shards_and_keeps_the_others_byte_identical(tmp_path, caplog):
    folder = tmp_path / "images"
    _add_images(folder, 120, seed=1, prefix="old")
    project = tmp_path / "project"
    shard_bytes = 10 * SIDE * SIDE * 3
    first = _split_folder(folder, project, shard_bytes=shard_bytes)
    before = _shard_files(project / "prepared")
    assert first["shards"]["train"] >= 6
    _add_images(folder, 25, seed=2, prefix="new")
    caplog.clear()
    second = _split_folder(folder, project, shard_bytes=shard_bytes)
    after = _shard_files(project / "prepared")
    # Every earlier shard file is still there, with the same bytes; only new files appeared.
    assert {name: after[name] for name in before} == before
    assert len(after) > len(before)
    assert _kept(caplog) == first["shards"]
    assert second["images"] == first["images"] + 25
    # The store holds each image once, the old ones where they were.
    splits = open_splits(project / "prepared")
    assert sum(len(split) for split in splits.values()) == second["images"]
    # The data version follows the images, not the layout: written afresh, the same version.
    fresh = _split_folder(folder, tmp_path / "fresh", shard_bytes=shard_bytes)
    assert _kept(caplog) == {"train": 0, "val": 0, "test": 0}
    assert fresh["data_version"] == second["data_version"] != first["data_version"]


def test_removing_an_image_rewrites_only_the_shard_that_held_it(tmp_path, caplog):
    folder = tmp_path / "images"
    _add_images(folder, 90, seed=3, prefix="img")
    project = tmp_path / "project"
    shard_bytes = 10 * SIDE * SIDE * 3
    first = _split_folder(folder, project, shard_bytes=shard_bytes)
    before = set(_shard_files(project / "prepared"))
    next(iter(sorted((folder / "a").iterdir()))).unlink()
    caplog.clear()
    second = _split_folder(folder, project, shard_bytes=shard_bytes)
    after = set(_shard_files(project / "prepared"))
    assert second["images"] == first["images"] - 1
    assert len(before - after) == 3  # one shard's three files went
    assert sum(_kept(caplog).values()) == sum(first["shards"].values()) - 1


def test_the_split_stage_holds_one_chunk_of_images_at_a_time(tmp_path):
    folder = tmp_path / "images"
    _add_images(folder, 300, seed=4, prefix="img")
    image_bytes = SIDE * SIDE * 3
    chunk_bytes = 20 * image_bytes
    total = 300 * image_bytes
    snapshot_image_folder(folder, tmp_path / "project" / "raw")
    # Once untraced, so what the first run imports is not counted.
    _split_folder(folder, tmp_path / "warm", chunk_bytes=chunk_bytes)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        plan = _split_folder(folder, tmp_path / "project", snapshot=False, chunk_bytes=chunk_bytes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert plan["images"] == 300
    # The images decoded at once are one chunk (96 KB): far below the whole split (1.4 MB),
    # with room for the per-image digests, labels and the index.
    assert peak < total / 2, (peak, total)
    split = open_split(tmp_path / "project" / "prepared", "train")
    assert split.read([0]).shape == (1, SIDE, SIDE, 3)


def _all_files(prepared: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(prepared)): path.read_bytes()
        for path in sorted(prepared.rglob("*"))
        if path.is_file()
    }


def _overwrite_middle(path: Path) -> None:
    """Same size, other bytes: what a size-and-mtime check cannot see."""
    data = bytearray(path.read_bytes())
    middle = len(data) - 40
    data[middle : middle + 8] = bytes(255 - value for value in data[middle : middle + 8])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    ("part", "damage"),
    [
        ("images", lambda path: path.write_bytes(path.read_bytes()[:-10])),
        ("images", _overwrite_middle),
        ("images", lambda path: path.write_bytes(path.read_bytes() + b"\0" * 12)),
        ("labels", _overwrite_middle),
        ("digests", _overwrite_middle),
        ("digests", lambda path: path.unlink()),
    ],
    ids=["truncated", "overwritten", "appended", "labels", "digests", "missing"],
)
def test_a_damaged_shard_is_written_again_byte_identical_and_split_json_too(
    tmp_path, caplog, part, damage
):
    folder = tmp_path / "images"
    _add_images(folder, 60, seed=5, prefix="img")
    project = tmp_path / "project"
    shard_bytes = 10 * SIDE * SIDE * 3
    first = _split_folder(folder, project, shard_bytes=shard_bytes)
    before = _all_files(project / "prepared")
    shard = read_store_index(project / "prepared").splits["train"][0]
    damage(shard.path(project / "prepared", part))
    caplog.clear()
    second = _split_folder(folder, project, shard_bytes=shard_bytes)
    # The damaged shard was not kept but named; every other shard was.
    assert _kept(caplog)["train"] == first["shards"]["train"] - 1
    assert any(
        shard.name in record.message and "damaged" in record.message for record in caplog.records
    )
    # The repair restored every byte, split.json included: no DVC dep of training changed.
    assert _all_files(project / "prepared") == before
    assert second == first


def test_a_shard_whose_source_is_gone_stops_the_run_naming_it(tmp_path):
    x, y = _arrays(30)
    root = tmp_path / "store"
    splits = {"train": (x, y), "val": (x[:6], y[:6]), "test": (x[6:12], y[6:12])}
    index = write_store_from_arrays(root, splits, CLASSES, shard_bytes=10 * x[0].nbytes)
    shard = index.splits["train"][1]
    _overwrite_middle(shard.path(root, "images"))
    rows = {
        name: SplitRows(np.arange(len(images)), labels, image_digests(images))
        for name, (images, labels) in splits.items()
    }
    # The source no longer gives the images the shard held (another file, or none at all).
    gone = [
        (lambda chosen: np.zeros((len(chosen), 5, 5, 3), np.uint8), "not those it holds"),
        (lambda chosen: np.asarray([])[chosen + 99], "its source is gone"),
    ]
    for case, (read_gone, message) in enumerate(gone):
        with pytest.raises(DataError, match=rf"shard {shard.name} \(damaged.*{message}"):
            write_store(
                tmp_path / f"target{case}",
                rows,
                # Rows 10-19 (the damaged shard's) are gone; the others are still there.
                lambda chosen, gone=read_gone: gone(chosen) if chosen.max() >= 10 else x[chosen],
                (5, 5, 3),
                CLASSES,
                previous=root,
                shard_bytes=10 * x[0].nbytes,
            )


def test_kept_shards_are_hashed_in_one_streamed_pass(tmp_path):
    """verify_images reads a shard a chunk at a time and finds the one changed image."""
    x, y = _arrays(50)
    root = tmp_path / "store"
    index = write_store_from_arrays(
        root, {n: (x, y) for n in ("train", "val", "test")}, CLASSES, shard_bytes=10**6
    )
    shard = index.splits["train"][0]
    path = shard.path(root, "images")
    digests = image_digests(x)
    assert verify_images(path, digests, (5, 5, 3), chunk_bytes=7 * 75) is None
    data = bytearray(path.read_bytes())
    data[len(data) - 75 * 20] ^= 1  # one byte of image 30
    path.write_bytes(bytes(data))
    assert "image 30 " in verify_images(path, digests, (5, 5, 3), chunk_bytes=7 * 75)


def test_a_store_of_duplicates_keeps_the_previous_files_untouched(tmp_path):
    x, y = _arrays(1)
    root = tmp_path / "store"
    write_store_from_arrays(
        root, {n: (x, y) for n in ("train", "val", "test")}, CLASSES, shard_bytes=x[0].nbytes
    )
    before = _shard_files(root)
    twice = (np.concatenate([x, x]), np.concatenate([y, y]))
    write_store_from_arrays(
        root, {n: twice for n in ("train", "val", "test")}, CLASSES, shard_bytes=x[0].nbytes
    )
    split = open_split(root, "train")
    assert len(split) == 2 and np.array_equal(split.read([0, 1]), twice[0])
    assert {name: _shard_files(root)[name] for name in before} == before


@pytest.mark.parametrize(
    "payload",
    [
        "[]",
        '"x"',
        '{"format": 1, "splits": []}',
        '{"format": 1, "splits": {"train": [], "test": []}}',
    ],
)
def test_a_store_index_of_the_wrong_shape_is_a_clear_error(tmp_path, payload):
    (tmp_path / STORE_FILE).write_text(payload)
    with pytest.raises(DataError, match="not a valid store index"):
        open_splits(tmp_path)


def test_a_missing_old_or_damaged_store_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="run the split stage"):
        open_splits(tmp_path / "absent")
    old = tmp_path / "old"
    old.mkdir()
    (old / "train.npz").write_bytes(b"")
    with pytest.raises(DataError, match="old .npz format.*dvc repro split"):
        read_store_index(old)
    x, y = _arrays(12)
    root = tmp_path / "store"
    index = write_store_from_arrays(root, {n: (x, y) for n in ("train", "val", "test")}, CLASSES)
    shard = index.splits["train"][0].path(root, "images")
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(DataError, match="truncated"):
        open_split(root, "train").read([0])
    (root / STORE_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not a valid store index"):
        open_splits(root)


def test_npy_rows_reads_any_rows_without_mapping_the_file(tmp_path):
    values = np.arange(60, dtype=np.float32).reshape(20, 3)
    np.save(tmp_path / "f.npy", values)
    rows = NpyRows(tmp_path / "f.npy")
    assert len(rows) == 20 and rows.shape == (20, 3)
    assert np.array_equal(rows.read([3, 4, 5, 19, 0]), values[[3, 4, 5, 19, 0]])
    rows.close()


def test_an_atomic_directory_gets_the_mode_a_plain_folder_gets(tmp_path) -> None:
    """mkdtemp's staging folder is private (0700); the output it becomes must not be, or a
    report folder stops being readable to the users who read it before."""
    import stat

    from pipeline.store import atomic_directory

    with atomic_directory(tmp_path / "out") as staging:
        (staging / "file").write_text("x")
    (tmp_path / "plain").mkdir()
    mode = stat.S_IMODE((tmp_path / "out").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "plain").stat().st_mode)
