"""Splitting: content-keyed (an image's split depends on its pixels and the seed alone), seeded,
disjoint, every class everywhere, with each image's digest (the store: tests/code/test_store.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.config import DataConfig
from pipeline.datasets.fetch import fetch_dataset
from pipeline.datasets.folders import snapshot_image_folder
from pipeline.datasets.readers.arrays import read_digits
from pipeline.datasets.sources import DIGITS
from pipeline.datasets.split import (
    allocate,
    allowed_deviation,
    hash_positions,
    plan_split,
    split_indices,
    stratified_subset,
)
from pipeline.errors import DataError
from pipeline.stages.split import prepare_splits, split_summary
from pipeline.store import SPLITS, image_digests, members_digest, open_splits
from tests import fakes

FRACTIONS = {"val_fraction": 0.15, "test_fraction": 0.2}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    fetch_dataset(DIGITS, raw, cache_dir=raw / "cache")
    return read_digits(raw)


def make_images(count: int, num_classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A folder-like set: random 6x6 RGB uint8 images with labels cycling through the classes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(count, 6, 6, 3), dtype=np.uint8)
    return images, np.arange(count, dtype=np.int64) % num_classes


def split_of(images: np.ndarray, labels: np.ndarray, seed: int = 42, **fractions) -> dict:
    """Each image's digest mapped to its split (and the plan), as the split stage would plan."""
    digests = image_digests(images)
    plan = plan_split(labels, None, seed=seed, digests=digests, **(FRACTIONS | fractions))
    where = {digest: name for name in SPLITS for digest in digests[plan.indices[name]]}
    return where, plan


def test_digits_are_read_as_uint8_images(digits) -> None:
    images = digits.load_all()
    assert images.shape == (1797, 8, 8, 1)
    assert images.dtype == np.uint8
    assert digits.labels.dtype == np.int64
    assert images.max() == 255 and images.min() == 0
    assert sorted(set(digits.labels.tolist())) == list(range(10))


def test_digits_split_is_disjoint_complete_and_within_the_hash_bound(digits) -> None:
    images, labels = digits.load_all(), digits.labels
    plan = plan_split(labels, None, seed=42, digests=image_digests(images), **FRACTIONS)
    together = np.concatenate(list(plan.indices.values()))
    assert len(together) == len(set(together.tolist())) == len(labels)
    expected = {"train": 0.65, "val": 0.15, "test": 0.2}
    assert plan.fractions == expected
    for name, chosen in plan.indices.items():
        bound = allowed_deviation(len(labels), expected[name], plan.reassigned)
        assert abs(len(chosen) - expected[name] * len(labels)) <= bound, name
        # The same thresholds for every class: stratified in expectation, class by class.
        for label in range(10):
            of_class = int((labels == label).sum())
            count = int((labels[chosen] == label).sum())
            assert abs(count - expected[name] * of_class) <= allowed_deviation(
                of_class, expected[name]
            ), (name, label)


@pytest.mark.parametrize("seed", [0, 1, 2, 42])
def test_fractions_hold_within_the_allowed_deviation(seed: int) -> None:
    images, labels = make_images(600, seed=seed)
    _, plan = split_of(images, labels, seed=seed, val_fraction=0.25, test_fraction=0.1)
    for name, fraction in plan.fractions.items():
        bound = allowed_deviation(600, fraction, plan.reassigned)
        assert abs(len(plan.indices[name]) - fraction * 600) <= bound, (seed, name)


def test_allowed_deviation_is_four_binomial_deviations_plus_the_images_moved() -> None:
    assert allowed_deviation(1797, 0.15) == 61  # ceil(4 * sqrt(1797 * 0.15 * 0.85)) = ceil(60.6)
    assert allowed_deviation(1797, 0.15, reassigned=3) == 64
    assert allowed_deviation(100, 0.5) == 20
    assert allowed_deviation(0, 0.2) == 0


@pytest.mark.parametrize("change", ["add", "remove", "edit"])
def test_changing_some_images_never_moves_another(change: str) -> None:
    images, labels = make_images(320)
    before, plan = split_of(images, labels)
    assert plan.reassigned == 0
    changed = set()
    if change == "add":
        extra, extra_labels = make_images(120, seed=1)
        images = np.concatenate([images, extra])
        labels = np.concatenate([labels, extra_labels])
    elif change == "remove":
        keep = np.setdiff1d(np.arange(len(images)), np.arange(0, 320, 7))
        images, labels = images[keep], labels[keep]
    else:
        edited = np.arange(3, 320, 11)
        changed = set(image_digests(images[edited]).tolist())
        images = images.copy()
        images[edited, 0, 0, 0] ^= 0xFF  # one pixel changed: another image, another digest
    after, plan = split_of(images, labels)
    assert plan.reassigned == 0
    kept = [digest for digest in before if digest in after]
    assert len(kept) == len(before) - len(changed) - (46 if change == "remove" else 0)
    assert all(after[digest] == before[digest] for digest in kept)


def test_exact_duplicates_share_a_split() -> None:
    images, labels = make_images(300)
    copies = np.arange(0, 300, 5)
    images = np.concatenate([images, images[copies], images[copies[:10]]])
    labels = np.concatenate([labels, labels[copies], labels[copies[:10]]])
    _, plan = split_of(images, labels)
    digests = image_digests(images)
    split_digests = {name: set(digests[plan.indices[name]].tolist()) for name in SPLITS}
    assert not split_digests["train"] & split_digests["val"]
    assert not split_digests["train"] & split_digests["test"]
    assert not split_digests["val"] & split_digests["test"]


def test_a_tiny_class_reaches_every_split_and_only_its_images_move() -> None:
    images, labels = make_images(300, num_classes=3)
    without, plan = split_of(images, labels)
    # Class 3: three distinct images, one of them twice; hashing alone seldom spreads them out.
    tiny = make_images(3, seed=7)[0]
    tiny = np.concatenate([tiny, tiny[:1]])
    everything = np.concatenate([images, tiny])
    with_tiny, plan = split_of(everything, np.concatenate([labels, np.full(4, 3)]))
    assert plan.reassigned > 0  # with seed 42, hashing alone leaves a split without class 3
    reached = {with_tiny[digest] for digest in image_digests(tiny)}
    assert reached == {"train", "val", "test"}
    assert all(with_tiny[digest] == split for digest, split in without.items())
    for seed in range(12):
        where, plan = split_of(everything, np.concatenate([labels, np.full(4, 3)]), seed=seed)
        positions = {where[digest] for digest in image_digests(tiny)}
        assert positions == {"train", "val", "test"}, seed
        # The duplicate moved (or stayed) with its twin.
        assert where[image_digests(tiny[:1])[0]] == where[image_digests(tiny[3:])[0]]
        assert 0 <= plan.reassigned <= 4


def test_reassigned_counts_every_copy_moved() -> None:
    # One class of three distinct images in a seed where hashing puts them all in train.
    images, labels = make_images(200, num_classes=2)
    for seed in range(50):
        tiny = make_images(3, seed=100 + seed)[0]
        if (hash_positions(image_digests(tiny), seed) >= 0.35).all():  # all three in train
            break
    else:
        pytest.fail("no seed put three images into train")
    tiny = np.concatenate([tiny, tiny])  # each image twice: a move carries both copies
    _, plan = split_of(
        np.concatenate([images, tiny]), np.concatenate([labels, np.full(6, 2)]), seed=seed
    )
    assert plan.reassigned == 4  # two images moved, two copies each


def test_a_class_too_small_for_three_splits_names_the_fractions() -> None:
    images, labels = make_images(22)
    labels = np.array([0] * 20 + [1] * 2, dtype=np.int64)
    with pytest.raises(DataError, match="smallest class: 2 images.*data.val_fraction"):
        split_of(images, labels, val_fraction=0.2, test_fraction=0.2)
    # Two copies of one image are one image: still too few to give each split its own.
    images[19] = images[18] = images[17]
    labels = np.array([0] * 17 + [1] * 3 + [0] * 2, dtype=np.int64)
    with pytest.raises(
        DataError, match="class 1 would have no image in '[a-z]+': it has 1 distinct image"
    ):
        split_of(images, labels)
    with pytest.raises(DataError, match="class tiny would have no image in '[a-z]+'") as error:
        plan_split(
            labels,
            None,
            seed=42,
            digests=image_digests(images),
            class_names=["big", "tiny"],
            **FRACTIONS,
        )
    assert "class 1" not in str(error.value)


def test_same_seed_same_split_another_seed_another() -> None:
    images, labels = make_images(300)
    first, _ = split_of(images, labels, seed=3)
    again, _ = split_of(images.copy(), labels, seed=3)
    other, _ = split_of(images, labels, seed=4)
    assert first == again
    assert sum(first[digest] != other[digest] for digest in first) > 100


def test_the_order_of_the_images_does_not_matter() -> None:
    images, labels = make_images(300)
    first, _ = split_of(images, labels)
    order = np.random.default_rng(5).permutation(300)
    shuffled, _ = split_of(images[order], labels[order])
    assert first == shuffled


def test_split_indices_without_digests_hashes_the_index() -> None:
    labels = np.arange(400) % 4
    first = split_indices(labels, 0.15, 0.2, seed=1)
    assert sum(len(chosen) for chosen in first.values()) == 400
    assert all(np.array_equal(first[k], split_indices(labels, 0.15, 0.2, 1)[k]) for k in first)


def test_source_test_set_is_kept_and_val_carved_from_train_only() -> None:
    images, labels = make_images(400)
    pools = np.array(["train"] * 320 + ["test"] * 80)
    plan = plan_split(
        labels, pools, val_fraction=0.2, test_fraction=0.5, seed=0, digests=image_digests(images)
    )
    assert np.array_equal(plan.indices["test"], np.arange(320, 400))
    assert plan.indices["val"].max() < 320
    assert abs(len(plan.indices["val"]) - 80) <= allowed_deviation(320, 0.25, plan.reassigned)
    assert set(labels[plan.indices["val"]].tolist()) == {0, 1, 2, 3}
    total = {name: len(chosen) / 400 for name, chosen in plan.indices.items()}
    assert plan.fractions == pytest.approx(total) and plan.fractions["test"] == 0.2


def test_carved_val_stays_put_when_the_source_grows_in_proportion() -> None:
    images, labels = make_images(500)
    digests = image_digests(images)
    small = np.r_[0:200, 400:450]  # 200 train + 50 test
    grown = np.arange(500)  # 400 train + 100 test: the same share of train
    pools = np.array(["train"] * 400 + ["test"] * 100)
    plans = [
        plan_split(labels[rows], pools[rows], 0.15, 0.2, seed=9, digests=digests[rows])
        for rows in (small, grown)
    ]
    val = [
        set(digests[rows][plan.indices["val"]].tolist())
        for rows, plan in zip((small, grown), plans, strict=True)
    ]
    assert val[0] == val[1] & set(digests[small].tolist())


def test_source_val_set_is_used_as_it_is() -> None:
    images, labels = make_images(12, num_classes=2)
    pools = np.array(["train"] * 4 + ["val"] * 4 + ["test"] * 4)
    plan = plan_split(labels, pools, 0.15, 0.2, seed=0, digests=image_digests(images))
    assert plan.indices["val"].tolist() == [4, 5, 6, 7] and plan.reassigned == 0


def test_a_class_missing_from_the_source_test_set_is_an_error() -> None:
    images, labels = make_images(40, num_classes=2)
    labels[30:] = 0
    pools = np.array(["train"] * 30 + ["test"] * 10)
    with pytest.raises(DataError, match=r"class\(es\) 1 would have no image in 'test'"):
        plan_split(labels, pools, 0.15, 0.2, seed=0, digests=image_digests(images))
    # Given the class names, the message names the class, never its number.
    with pytest.raises(DataError, match=r"class\(es\) square would have no image in 'test'"):
        plan_split(
            labels,
            pools,
            0.15,
            0.2,
            seed=0,
            digests=image_digests(images),
            class_names=["circle", "square"],
        )


def test_val_fraction_larger_than_the_source_train_set_is_refused() -> None:
    images, labels = make_images(20, num_classes=2)
    pools = np.array(["train"] * 4 + ["test"] * 16)
    with pytest.raises(DataError, match=r"data.val_fraction=0.3 asks for 6 validation images"):
        plan_split(labels, pools, 0.3, 0.2, seed=0, digests=image_digests(images))


def test_digests_must_match_the_labels() -> None:
    with pytest.raises(DataError, match="2 digests for 3 labels"):
        plan_split(np.zeros(3, dtype=np.int64), None, 0.1, 0.1, 0, digests=np.array(["a", "b"]))


def test_prepare_splits_writes_digests_members_and_counts(digits, tmp_path: Path) -> None:
    config = DataConfig(dataset="digits", seed=42, **FRACTIONS)
    raw = tmp_path / "raw"
    fetch_dataset(DIGITS, raw, cache_dir=tmp_path / "cache")
    plan = prepare_splits(config, raw, tmp_path / "prepared", tmp_path / "skipped.csv")
    on_disk = json.loads((tmp_path / "prepared" / "split.json").read_text())
    assert on_disk == plan
    assert plan["assignment"] == "content_hash" and plan["seed"] == 42
    assert plan["scheme"] == "stratified" and plan["reassigned"] == 0
    assert plan["classes"] == [str(digit) for digit in range(10)]
    # The bundled digits hold no image under two labels: the default pipeline passes the gate.
    assert plan["label_conflicts"] == []
    assert "shards_kept" not in plan  # run-dependent: logged, never in split.json
    splits = open_splits(tmp_path / "prepared")
    assert sum(plan["counts"].values()) == plan["images"] == 1797
    for name, split in splits.items():
        assert plan["counts"][name] == len(split)
        images = split.read(np.arange(len(split)))
        assert np.array_equal(split.digests(), image_digests(images))
        assert plan["members"][name] == members_digest(split.digests())
    # The stage plans exactly what plan_split plans from the decoded images.
    images = digits.load_all()
    expected = plan_split(digits.labels, None, seed=42, digests=image_digests(images), **FRACTIONS)
    assert plan["counts"] == {name: len(chosen) for name, chosen in expected.indices.items()}
    # Again from the same raw data: the same members, so the same files.
    again = prepare_splits(config, raw, tmp_path / "again", tmp_path / "skipped.csv")
    assert again["members"] == plan["members"]
    # The stage's one result line says what it made of the data.
    counts = plan["counts"]
    assert split_summary(plan) == (
        f"1797 images -> train {counts['train']}, val {counts['val']}, test {counts['test']}"
    )


def test_the_result_line_names_skipped_images_and_label_conflicts() -> None:
    plan = {
        "images": 10,
        "skipped": 2,
        "counts": {"train": 6, "val": 2, "test": 2},
        "shards": {"train": 2, "val": 1, "test": 1},
        "label_conflicts": [{"digest": "d", "files": []}],
    }
    assert split_summary(plan) == (
        "10 images -> train 6, val 2, test 2; 2 skipped, 1 image(s) under two classes"
    )


def test_images_added_to_a_folder_leave_every_other_image_in_its_split(tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "images"
    fakes.write_image_folder(folder, {"apple": 20, "banana": 20, "cherry": 20})
    config = DataConfig(
        dataset="image_folder",
        image_folder=str(folder),
        image_size=12,
        val_fraction=0.25,
        test_fraction=0.25,
    )

    def split_folder(name: str) -> tuple[dict, dict]:
        raw = tmp_path / name / "raw"
        snapshot_image_folder(folder, raw)
        plan = prepare_splits(config, raw, tmp_path / name / "prepared", tmp_path / "skip.csv")
        splits = open_splits(tmp_path / name / "prepared")
        return plan, {str(h): n for n, split in splits.items() for h in split.digests()}

    before_plan, before = split_folder("before")
    rng = np.random.default_rng(11)
    for index in range(15):
        pixels = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(
            folder / ["apple", "banana", "cherry"][index % 3] / f"new{index}.png"
        )
    after_plan, after = split_folder("after")
    # Classes big enough to reach every split by hashing alone: no image was moved for them.
    assert before_plan["reassigned"] == after_plan["reassigned"] == 0
    assert after_plan["images"] == before_plan["images"] + 15 == len(after)
    assert all(after[digest] == split for digest, split in before.items())


def test_allocate_is_proportional_exact_and_bounded() -> None:
    assert allocate(np.array([50, 30, 20]), 10).tolist() == [5, 3, 2]
    shares = allocate(np.array([7, 7, 1]), 5)
    assert shares.sum() == 5 and (shares <= [7, 7, 1]).all()
    assert allocate(np.array([3, 0]), 10).tolist() == [3, 0]


def test_subset_is_stratified_per_class_and_per_source_split() -> None:
    labels = np.tile(np.arange(2), 100)
    pools = np.array(["train"] * 150 + ["test"] * 50)
    chosen = stratified_subset(labels, pools, 40, seed=1)
    assert len(chosen) == 40 and (np.diff(chosen) > 0).all()
    assert (pools[chosen] == "test").sum() == 10
    assert np.bincount(labels[chosen]).tolist() == [20, 20]
    assert len(stratified_subset(labels, None, 10_000, seed=1)) == 200
