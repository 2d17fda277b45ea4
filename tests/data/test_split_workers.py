"""The split in several processes (`data.workers`): the same store, byte for byte, as one
process; the same messages naming a bad file; no process left behind, and the previous store
intact, when the split is interrupted or a worker dies."""

from __future__ import annotations

import multiprocessing.forkserver
import os
import signal
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import pipeline.stages.split as split_stage
from pipeline.config import DataConfig
from pipeline.datasets.fetch import fetch_dataset
from pipeline.datasets.folders import snapshot_image_folder
from pipeline.datasets.parallel import (
    SpoolJob,
    decode_files_to_spool,
    loaded_modules,
    resolve_workers,
    worker_pool,
)
from pipeline.datasets.readers import ReadOptions, open_dataset
from pipeline.datasets.sources import DIGITS
from pipeline.errors import DataError
from pipeline.stages.split import prepare_splits
from pipeline.store.writing import allocate_npy_rows

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads worker processes from /proc"
)
BROKEN_PNG = b"\x89PNG\r\n\x1a\n not really a png"


@pytest.fixture(scope="module")
def raw_folder(tmp_path_factory) -> Path:
    """A snapshot of 90 images of varied sizes, formats and modes (PNG, JPEG, palette, gray,
    RGBA, one turned by EXIF) in three classes, and one broken PNG: three workers' tasks."""
    rng = np.random.default_rng(5)
    root = tmp_path_factory.mktemp("images")
    for label, name in enumerate(("circle", "square", "triangle")):
        (root / name).mkdir()
        for index in range(30):
            height, width = (int(side) for side in rng.integers(12, 90, size=2))
            pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
            pixels[: height // 2] //= 1 + label
            image = Image.fromarray(pixels)
            kind = index % 5
            if kind == 0:
                image.save(root / name / f"{index:03d}.png")
            elif kind == 1:
                image.save(root / name / f"{index:03d}.jpg", quality=85)
            elif kind == 2:
                image.convert("P").save(root / name / f"{index:03d}.gif")
            elif kind == 3:
                image.convert("RGBA").save(root / name / f"{index:03d}.png")
            else:
                exif = Image.Exif()
                exif[0x0112] = 6  # turned: stored upright after decoding
                image.convert("L").save(root / name / f"{index:03d}.jpg", exif=exif)
    (root / "square" / "broken.png").write_bytes(BROKEN_PNG)
    raw = tmp_path_factory.mktemp("raw") / "image_folder"
    snapshot_image_folder(root, raw)
    return raw


def _config(**data) -> DataConfig:
    options = {
        "dataset": "image_folder",
        "image_size": 20,
        "val_fraction": 0.2,
        "test_fraction": 0.2,
    }
    return DataConfig(**(options | data))


def _split(raw: Path, out: Path, config: DataConfig) -> dict[str, bytes]:
    """Every file the split writes (the store, skipped.csv, the sources table), by path."""
    prepare_splits(
        config,
        raw,
        out / "prepared",
        out / "skipped.csv",
        sources_file=out / "sources.csv",
    )
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


@pytest.fixture
def spied(monkeypatch) -> list[int]:
    """The worker counts the split decoded image files with in processes."""
    calls: list[int] = []
    real = split_stage.decode_files_to_spool

    def spy(files, chosen, job, workers, progress=None):
        calls.append(workers)
        return real(files, chosen, job, workers, progress)

    monkeypatch.setattr(split_stage, "decode_files_to_spool", spy)
    return calls


def test_two_workers_write_the_store_of_one_byte_for_byte(raw_folder, tmp_path, spied) -> None:
    one = _split(raw_folder, tmp_path / "one", _config(workers=1))
    assert spied == []
    two = _split(raw_folder, tmp_path / "two", _config(workers=2))
    assert spied == [2]
    assert one.keys() == two.keys()
    assert [name for name in one if one[name] != two[name]] == []
    assert sum(name.endswith("images.npy") for name in one) == 3
    # The bad file is listed exactly as one process lists it, and only it.
    skipped = one["skipped.csv"].decode().splitlines()
    assert len(skipped) == 2 and skipped[1].startswith("square/broken.png,")


def test_pad_and_an_odd_task_size_give_the_same_store(raw_folder, tmp_path, spied) -> None:
    # 45 px RGB rows: 5 images of a task, the last task short.
    config = {"image_size": 45, "resize": "pad"}
    one = _split(raw_folder, tmp_path / "one", _config(workers=1, **config))
    three = _split(raw_folder, tmp_path / "three", _config(workers=3, **config))
    assert spied == [3]
    assert one == three


def test_digits_split_the_same_whatever_the_workers(tmp_path, spied) -> None:
    raw = tmp_path / "raw"
    fetch_dataset(DIGITS, raw, cache_dir=tmp_path / "cache")
    one = _split(raw, tmp_path / "one", DataConfig(dataset="digits", workers=1))
    two = _split(raw, tmp_path / "two", DataConfig(dataset="digits", workers=2))
    assert one == two
    # Arrays in a file have nothing to decode: read in the stage's process, no worker started.
    assert spied == []


@pytest.mark.parametrize(
    ("data", "example"),
    [
        ({}, r"1 image\(s\) .* e\.g\. square/broken\.png: not an image Pillow can identify"),
        ({"max_pixels": 5000}, r"e\.g\. circle/\d+\.\w+: \d+x\d+ = .* \(data\.max_pixels\)"),
    ],
)
def test_a_bad_file_in_a_worker_stops_the_split_naming_it(raw_folder, tmp_path, data, example):
    messages = []
    for workers in (1, 2):
        config = _config(workers=workers, on_bad_image="fail", **data)
        with pytest.raises(DataError, match=example) as caught:
            _split(raw_folder, tmp_path / str(workers), config)
        messages.append(str(caught.value))
        assert not (tmp_path / str(workers) / "prepared").exists()
    assert messages[0] == messages[1]


def test_workers_default_to_the_one_threaded_process() -> None:
    """auto is one process, whose decoding threads already use every core (processes measured
    0.76x on 2 cores); a count is taken as given."""
    assert resolve_workers("auto") == 1
    assert resolve_workers(3) == 3
    assert DataConfig().workers == "auto"


def _job(raw: Path, tmp_path: Path, count: int) -> tuple:
    index = open_dataset("image_folder", raw, ReadOptions(20))
    chosen = np.arange(count)
    spool = tmp_path / "spool.npy"
    offset = allocate_npy_rows(spool, (count, 20, 20, 3), np.uint8)
    return index, chosen, SpoolJob(str(spool), offset, (20, 20, 3), index.files.options)


def test_a_worker_loads_no_tensorflow_keras_or_mlflow(raw_folder, tmp_path) -> None:
    _, _, job = _job(raw_folder, tmp_path, 1)
    heavy = ["tensorflow", "keras", "mlflow", "jax", "torch"]
    with worker_pool(1, job) as pool:
        # What the forkserver preloads when the stage runs as `python -m pipeline.stages.split`.
        pool.submit(exec, "import pipeline.stages.split").result()
        assert pool.submit(loaded_modules, heavy + ["PIL"]).result() == ["PIL"]


def _workers() -> list[int]:
    """The processes the forkserver started that still run (workers live under it)."""
    server = multiprocessing.forkserver._forkserver._forkserver_pid
    if server is None:
        return []
    children = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if entry.name.isdigit() and int(fields[1]) == server and fields[0] != "Z":
            children.append(int(entry.name))
    return children


@linux_only
def test_an_interrupted_split_leaves_no_worker_and_the_previous_store(
    raw_folder, tmp_path, monkeypatch
) -> None:
    before = _split(raw_folder, tmp_path, _config(workers=2))

    class Interrupted(split_stage.Progress):
        def update(self, count: int) -> None:
            raise KeyboardInterrupt

    monkeypatch.setattr(split_stage, "Progress", Interrupted)
    with pytest.raises(KeyboardInterrupt):
        _split(raw_folder, tmp_path, _config(workers=2, seed=7))
    assert _workers() == []
    after = {
        str(p.relative_to(tmp_path)): p.read_bytes()
        for p in sorted(tmp_path.rglob("*"))
        if p.is_file()
    }
    assert after == before  # no spool left beside it either


@linux_only
def test_a_worker_killed_mid_split_is_named_and_stops_the_rest(raw_folder, tmp_path) -> None:
    index, chosen, job = _job(raw_folder, tmp_path, 90)
    killed: list[int] = []

    def kill_one(count: int) -> None:
        if not killed:
            killed.append(_workers()[0])
            os.kill(killed[0], signal.SIGKILL)

    with pytest.raises(DataError, match=r"stopped abruptly .* data.workers: 1") as caught:
        decode_files_to_spool(index.files, chosen, job, 2, kill_one)
    assert str(raw_folder) in str(caught.value)
    assert _workers() == []
