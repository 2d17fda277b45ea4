"""Serve generated dataset files the way the real hosts do, and point a spec at them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.datasets.sources import DATASETS, DatasetSpec
from pipeline.store import sha256_of
from tests import fakes

# Kept small: the readers are exercised, not the models.
PET_NUMBERS = [*range(0, 12), *range(1000, 1006), *range(1500, 1506), 2000, 12000]


def generate_source_files(name: str, folder: Path) -> dict:
    """Write dataset `name`'s source files, under their real file names, into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    if name == "mnist":
        return fakes.write_mnist_npz(folder / "mnist.npz")
    if name == "fashion_mnist":
        return fakes.write_fashion_mnist(folder)
    if name == "cifar10":
        return fakes.write_cifar10_tar(folder / "cifar-10-binary.tar.gz")
    if name == "mini_cifar":
        return fakes.write_mini_cifar_h5(folder / "mini_cifar.h5")
    if name == "cats_vs_dogs":
        fakes.write_pet_images_zip(
            folder / "kagglecatsanddogs_5340.zip", PET_NUMBERS, corrupt=("Cat", 3)
        )
        return {}
    if name == "malaria":
        fakes.write_malaria_zip(folder / "cell_images.zip")
        return {}
    raise ValueError(name)


def local_spec(name: str, base_url: str, folder: Path) -> DatasetSpec:
    """The table's spec for `name`, with each file's URL on the local server and the SHA-256 of
    the generated file: everything else (extraction, members kept, bounds) is the real one."""
    spec = DATASETS[name]
    files = tuple(
        dataclasses.replace(
            source,
            url=f"{base_url}/{name}/{source.filename}",
            sha256=sha256_of(folder / source.filename),
        )
        for source in spec.files
    )
    return dataclasses.replace(spec, files=files)
