"""Every dataset, through the path a user takes: download from a server, extract, read, split.

The server is a local one on 127.0.0.1 serving files generated in each dataset's true format;
only the URL and checksum of the table row differ from what a user runs.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.datasets.fetch import fetch_dataset
from pipeline.datasets.readers import open_dataset
from pipeline.datasets.readers.arrays import CIFAR10_CLASSES
from pipeline.datasets.split import allowed_deviation
from pipeline.errors import DataError
from pipeline.stages.split import prepare_splits
from pipeline.store import SplitReader, open_splits
from tests import fakes
from tests.datasets_local import PET_NUMBERS, generate_source_files, local_spec


def _download_and_split(name, tmp_path, http_server, **data):
    served = tmp_path / "served"
    generated = generate_source_files(name, served / name)
    base = http_server(served)
    raw = tmp_path / "raw" / name
    fetch_dataset(local_spec(name, base, served / name), raw, cache_dir=tmp_path / "cache")
    config = DataConfig(dataset=name, **data)
    plan = prepare_splits(config, raw, tmp_path / "prepared", tmp_path / "skipped.csv")
    return generated, raw, plan, open_splits(tmp_path / "prepared")


def _images(split: SplitReader) -> np.ndarray:
    """Every image of a split, read from its shards (tiny test data only)."""
    return split.read(np.arange(len(split)))


def _skipped(tmp_path: Path) -> list[dict]:
    with open(tmp_path / "skipped.csv") as stream:
        return list(csv.DictReader(stream))


@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
def test_mnist_formats_keep_the_source_test_set_and_carve_val_from_train(
    name, tmp_path, http_server
) -> None:
    generated, _, plan, splits = _download_and_split(name, tmp_path, http_server, val_fraction=0.2)
    x_test = generated["x_test"] if name == "mnist" else generated["t10k-images-idx3-ubyte.gz"]
    y_test = generated["y_test"] if name == "mnist" else generated["t10k-labels-idx1-ubyte.gz"]
    # The source's test set, untouched and in order; val (20% of 60 images, so each train image
    # with a keyed position under 0.2 * 60 / 40) from train only, within the hash's bound.
    assert np.array_equal(_images(splits["test"])[..., 0], x_test)
    assert np.array_equal(splits["test"].y, y_test)
    counts = plan["counts"]
    assert counts["test"] == 20 and counts["train"] + counts["val"] == 40
    assert abs(counts["val"] - 12) <= allowed_deviation(40, 0.3, plan["reassigned"])
    assert splits["train"].image_shape == (28, 28, 1)
    assert _images(splits["train"]).shape[1:] == (28, 28, 1)
    x_train = generated["x_train"] if name == "mnist" else generated["train-images-idx3-ubyte.gz"]
    together = np.concatenate([_images(splits["train"]), _images(splits["val"])])[..., 0]
    assert sorted(map(bytes, together)) == sorted(map(bytes, x_train))
    assert plan["expected_fractions"]["test"] == pytest.approx(20 / 60)
    if name == "fashion_mnist":
        assert splits["train"].classes[0] == "T-shirt/top"


def test_cifar10_binary_records_become_hwc_images(tmp_path, http_server) -> None:
    batches, raw, plan, splits = _download_and_split("cifar10", tmp_path, http_server)
    test_images, test_labels = batches["test_batch"]
    assert np.array_equal(_images(splits["test"]), test_images)  # planar CHW bytes read back as HWC
    assert np.array_equal(splits["test"].y, test_labels)
    assert splits["train"].classes == CIFAR10_CLASSES
    assert plan["counts"]["train"] + plan["counts"]["val"] == 50
    # Only the kept members were extracted: no readme.html.
    assert sorted(p.name for p in (raw / "cifar-10-batches-bin").iterdir()) == sorted(
        [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin", "batches.meta.txt"]
    )


def test_mini_cifar_h5_floats_become_uint8_with_a_hashed_quarter_for_test(
    tmp_path, http_server
) -> None:
    generated, _, plan, splits = _download_and_split("mini_cifar", tmp_path, http_server)
    # 25% of 60, whatever data.test_fraction says, within the hash's bound; every class in it.
    assert plan["scheme"] == "fixed_test" and plan["expected_fractions"]["test"] == 0.25
    bound = allowed_deviation(60, 0.25, plan["reassigned"])
    assert abs(plan["counts"]["test"] - 15) <= bound
    assert sorted(set(splits["test"].y.tolist())) == [0, 1, 2]
    every = np.concatenate([_images(s) for s in splits.values()])
    assert sorted(map(bytes, every)) == sorted(map(bytes, generated["x"]))


def test_cats_vs_dogs_uses_the_course_ranges_and_skips_the_corrupt_jpeg(
    tmp_path, http_server
) -> None:
    _, raw, plan, splits = _download_and_split("cats_vs_dogs", tmp_path, http_server, image_size=40)
    # Images 2000 and 12000, Thumbs.db and the licence are not part of the course's set.
    kept = sorted(p.name for p in (raw / "PetImages" / "Cat").iterdir())
    assert "2000.jpg" not in kept and "Thumbs.db" not in kept and len(kept) == len(PET_NUMBERS) - 2
    assert not (raw / "CDLA-Permissive-2.0.pdf").exists()
    # Cat 3 is truncated: skipped and listed, so train has 11 cats and 12 dogs.
    assert plan["counts"] == {"train": 23, "val": 12, "test": 12}
    assert splits["train"].classes == ["cat", "dog"]
    assert np.bincount(splits["train"].y).tolist() == [11, 12]
    assert _images(splits["val"]).shape == (12, 40, 40, 3)
    assert [row["path"] for row in _skipped(tmp_path)] == ["PetImages/Cat/3.jpg"]


def test_malaria_subset_is_stratified_and_resized(tmp_path, http_server) -> None:
    _, _, plan, splits = _download_and_split(
        "malaria", tmp_path, http_server, max_images=16, image_size=32, resize="pad"
    )
    assert plan["images"] == 16
    everything = np.concatenate([s.y for s in splits.values()])
    assert np.bincount(everything).tolist() == [8, 8]
    assert splits["train"].classes == ["Parasitized", "Uninfected"]
    assert _images(splits["train"]).shape[1:] == (32, 32, 3)


def test_the_split_plan_is_written_beside_the_splits(tmp_path, http_server) -> None:
    _download_and_split("mnist", tmp_path, http_server, val_fraction=0.2)
    plan = json.loads((tmp_path / "prepared" / "split.json").read_text())
    assert plan["scheme"] == "source" and set(plan["expected_fractions"]) == {
        "train",
        "val",
        "test",
    }


# --- files that disagree with themselves ----------------------------------------------------


def test_mnist_labels_that_disagree_with_the_images_are_named(tmp_path) -> None:
    raw = tmp_path / "mnist"
    raw.mkdir()
    arrays = fakes.write_mnist_npz(raw / "mnist.npz")
    arrays["y_train"] = arrays["y_train"][:-3]
    np.savez(raw / "mnist.npz", **arrays)
    with pytest.raises(DataError, match=r"x_train holds 40 images but y_train holds 37 labels"):
        open_dataset("mnist", raw)


def test_idx_labels_that_disagree_with_the_images_are_named(tmp_path) -> None:
    raw = tmp_path / "fashion_mnist"
    raw.mkdir()
    arrays = fakes.write_fashion_mnist(raw)
    fakes.write_idx(raw / "t10k-labels-idx1-ubyte.gz", arrays["t10k-labels-idx1-ubyte.gz"][:5])
    with pytest.raises(DataError, match=r"t10k-images.*20 images.*t10k-labels.*5 labels"):
        open_dataset("fashion_mnist", raw)


def test_h5_labels_that_disagree_with_the_images_are_named(tmp_path) -> None:
    import h5py

    raw = tmp_path / "mini_cifar"
    raw.mkdir()
    fakes.write_mini_cifar_h5(raw / "mini_cifar.h5")
    with h5py.File(raw / "mini_cifar.h5", "a") as handle:
        del handle["y"]
        handle["y"] = np.zeros(7, dtype=np.int64)
    with pytest.raises(DataError, match=r"'x' holds 60 images but 'y' holds 7 labels"):
        open_dataset("mini_cifar", raw)


def test_mini_cifar_one_hot_labels_are_read_and_out_of_range_pixels_refused(tmp_path) -> None:
    import h5py

    raw = tmp_path / "mini_cifar"
    raw.mkdir()
    generated = fakes.write_mini_cifar_h5(raw / "mini_cifar.h5", one_hot=True)
    index = open_dataset("mini_cifar", raw)
    assert np.array_equal(index.labels, generated["y"])
    with h5py.File(raw / "mini_cifar.h5", "a") as handle:
        handle["x"][0] = handle["x"][0] * 255.0
    with pytest.raises(DataError, match=r"floats in \[0, 1\]"):
        open_dataset("mini_cifar", raw).load_all()


def test_a_truncated_cifar_batch_is_refused_by_name(tmp_path) -> None:
    folder = tmp_path / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        data = fakes.cifar_records(images, np.arange(4) % 10)
        (folder / f"{name}.bin").write_bytes(data[:-100] if name == "data_batch_3" else data)
    with pytest.raises(DataError, match=r"data_batch_3.bin: 12192 bytes .* truncated"):
        open_dataset("cifar10", tmp_path / "cifar10")


def test_a_truncated_idx_file_is_refused_when_read(tmp_path) -> None:
    raw = tmp_path / "fashion_mnist"
    raw.mkdir()
    arrays = fakes.write_fashion_mnist(raw)
    path = raw / "train-images-idx3-ubyte.gz"
    import gzip

    whole = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(whole[: len(whole) // 2]))
    index = open_dataset("fashion_mnist", raw)
    assert len(index) == len(arrays["train-labels-idx1-ubyte.gz"]) + 20
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: ends after 19 of 40"):
        index.load_all()
