"""The one table of dataset sources: where each dataset's files come from and how to check them.

Every checksum below is a SHA-256 of the whole file, copied from a public record of the same URL
(named beside each entry). None could be re-computed here: this project is built without network
access. A mirror must serve byte-identical files; the checksum applies whatever the URL.

Import-light on purpose: `pipeline.config` reads DATASET_NAMES from here.
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1 << 20


@dataclass(frozen=True)
class SourceFile:
    """One file of a dataset: its name in the cache, where to get it, its SHA-256.

    An archive (`extract=True`) is unpacked into data/raw/<dataset>/, keeping only the members
    whose path matches `keep` (all regular files when None), and refusing to expand past
    `max_bytes`. Any other file is copied there as it is.
    """

    filename: str
    url: str | None
    sha256: str | None
    extract: bool = False
    keep: str | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class DatasetSpec:
    """What the pipeline needs to know about a dataset before reading a byte of it."""

    name: str
    description: str
    files: tuple[SourceFile, ...]
    # (height, width, channels) when every image has it; None when images vary and are
    # decoded to RGB and resized once, at split, to `data.image_size`.
    native_shape: tuple[int, int, int] | None
    # A stratified test share fixed by the course (mini_cifar's 25%), overriding
    # data.test_fraction. Sources with their own test set say so through their reader instead.
    test_fraction: float | None = None
    # Whether `augmentation.enabled: auto` augments: not for digits, where a flip or a large
    # rotation turns one class into another.
    augment_by_default: bool = True

    def image_shape(self, image_size: int) -> tuple[int, int, int]:
        """The shape of every prepared image: native, or RGB at `data.image_size` squared."""
        return self.native_shape or (image_size, image_size, 3)


# scikit-learn ships the UCI optical digits as a gzipped CSV (64 pixel columns in 0..16, then
# the label). Its "URL" is a package-resource address, resolved by the download stage.
DIGITS = DatasetSpec(
    name="digits",
    description="scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes)",
    files=(
        SourceFile(
            filename="digits.csv.gz",
            url="package://sklearn/datasets/data/digits.csv.gz",
            sha256="09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22",
        ),
    ),
    native_shape=(8, 8, 1),
    augment_by_default=False,
)

# Keras' own copy; the SHA-256 is the one keras.datasets.mnist.load_data checks.
MNIST = DatasetSpec(
    name="mnist",
    description="MNIST handwritten digits, Keras' mnist.npz (60,000 train / 10,000 test, 28x28)",
    files=(
        SourceFile(
            filename="mnist.npz",
            url="https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz",
            sha256="731c5ac602752760c8e48fbffcf8c3b850d9dc2a2aedcf2cc48468fc17b673d1",
        ),
    ),
    native_shape=(28, 28, 1),
    augment_by_default=False,
)

# Zalando's bucket; SHA-256s as recorded by TensorFlow Datasets (url_checksums/fashion_mnist).
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST = DatasetSpec(
    name="fashion_mnist",
    description="Fashion-MNIST, the four IDX .gz files (60,000 train / 10,000 test, 28x28)",
    files=(
        SourceFile(
            "train-images-idx3-ubyte.gz",
            _FASHION + "train-images-idx3-ubyte.gz",
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        ),
        SourceFile(
            "train-labels-idx1-ubyte.gz",
            _FASHION + "train-labels-idx1-ubyte.gz",
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        ),
        SourceFile(
            "t10k-images-idx3-ubyte.gz",
            _FASHION + "t10k-images-idx3-ubyte.gz",
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        ),
        SourceFile(
            "t10k-labels-idx1-ubyte.gz",
            _FASHION + "t10k-labels-idx1-ubyte.gz",
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
        ),
    ),
    native_shape=(28, 28, 1),
)

# The binary version (raw bytes): the Python version is pickles, which are never loaded here.
# SHA-256 as recorded by TensorFlow Datasets (url_checksums/cifar10.txt, 170,052,171 bytes).
CIFAR10 = DatasetSpec(
    name="cifar10",
    description="CIFAR-10, binary version (50,000 train / 10,000 test, 32x32 RGB, 10 classes)",
    files=(
        SourceFile(
            filename="cifar-10-binary.tar.gz",
            url="https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            sha256="c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
            extract=True,
            keep=r"cifar-10-batches-bin/(data_batch_[1-5]|test_batch)\.bin|"
            r"cifar-10-batches-bin/batches\.meta\.txt",
            max_bytes=200 * MiB,  # six 30,730,000-byte batches and a small text file
        ),
    ),
    native_shape=(32, 32, 3),
)

# The course's 3-class CIFAR subset. Its public address and checksum are not recorded anywhere
# this project could check, so none is guessed: set data.sources.mini_cifar.url and .sha256.
MINI_CIFAR = DatasetSpec(
    name="mini_cifar",
    description="3-class CIFAR subset, mini_cifar.h5 (x float in [0,1], y; 3,004 images)",
    files=(SourceFile(filename="mini_cifar.h5", url=None, sha256=None),),
    native_shape=(32, 32, 3),
    test_fraction=0.25,
)

# Microsoft's archive, the one TensorFlow Datasets uses. SHA-256 and size (824,887,076 bytes)
# as recorded by Hugging Face datasets (datasets/cats_vs_dogs/dataset_infos.json). Only the
# course's 2,000 images per class (PetImages/<Cat|Dog>/0.jpg to 1999.jpg) are unpacked.
CATS_VS_DOGS = DatasetSpec(
    name="cats_vs_dogs",
    description="Cats vs dogs (Microsoft's PetImages zip of JPEGs), the course's 4,000 images",
    files=(
        SourceFile(
            filename="kagglecatsanddogs_5340.zip",
            url="https://download.microsoft.com/download/3/E/1/"
            "3E1C3F21-ECDB-4869-8368-6DEBA77B919F/kagglecatsanddogs_5340.zip",
            sha256="b7974bd00a84a99921f36ee4403f089853777b5ae8d151c76a86e64900334af9",
            extract=True,
            keep=r"PetImages/(Cat|Dog)/(1[0-9]{3}|[0-9]{1,3})\.jpg",
            max_bytes=512 * MiB,  # about 140 MB for the 4,000 kept JPEGs
        ),
    ),
    native_shape=None,
)

# The NIH cell images, as TensorFlow Datasets records them (datasets/malaria/checksums.tsv,
# 353,452,851 bytes).
MALARIA = DatasetSpec(
    name="malaria",
    description="NIH malaria cell images (Parasitized / Uninfected PNGs, 27,558 images)",
    files=(
        SourceFile(
            filename="cell_images.zip",
            url="https://data.lhncbc.nlm.nih.gov/public/Malaria/cell_images.zip",
            sha256="0a949556b2414159b5100192609805376654c4266d8d187be9b1922fad43c668",
            extract=True,
            keep=r"cell_images/(Parasitized|Uninfected)/[^/]+\.png",
            max_bytes=1024 * MiB,
        ),
    ),
    native_shape=None,
)

# The user's own folder of class subfolders: "downloading" it is a verified snapshot copy.
IMAGE_FOLDER = DatasetSpec(
    name="image_folder",
    description="your own images: data.image_folder holds one subfolder per class",
    files=(),
    native_shape=None,
)

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DIGITS,
        MNIST,
        FASHION_MNIST,
        CIFAR10,
        MINI_CIFAR,
        CATS_VS_DOGS,
        MALARIA,
        IMAGE_FOLDER,
    )
}
DATASET_NAMES: tuple[str, ...] = tuple(DATASETS)

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
"""File types read from an image folder (case-insensitive)."""

IMAGE_SIGNATURES: tuple[bytes, ...] = (
    b"\x89PNG\r\n\x1a\n",  # PNG
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",  # GIF
    b"GIF89a",
    b"BM",  # BMP
)
"""The first bytes of each type in IMAGE_EXTENSIONS (WebP: "RIFF", 4 bytes of size, "WEBP",
checked by `pipeline.datasets.folders.is_image_signature`). A file is copied out of an image
folder only when it begins with one: a text file named .png never reaches data/raw."""
