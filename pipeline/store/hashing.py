"""Image content digests: what names an image in the store, in manifests and in the split plan."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from pipeline.store.files import write_text


def image_digest(image: np.ndarray) -> str:
    """The content hash of one image: its shape and uint8 bytes (32 hex digits). Equal images
    have equal digests, whatever file or split they came from: splits, training manifests and
    the data gate's leak check all identify an image by it."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(tuple(int(d) for d in image.shape)).encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def image_digests(images: np.ndarray) -> np.ndarray:
    """`image_digest` of every image of a batch, as a fixed-width unicode array.

    The hash of the shape is computed once and copied per image, and each image is hashed
    from its bytes in place (no copy): the split stage verifies a kept shard with this."""
    images = np.ascontiguousarray(images, dtype=np.uint8)
    if not len(images):
        return np.zeros(0, dtype="<U32")
    prefix = hashlib.blake2b(digest_size=16)
    prefix.update(repr(tuple(int(d) for d in images.shape[1:])).encode())
    size = int(np.prod(images.shape[1:], dtype=np.int64))
    if not size:
        return np.array([image_digest(image) for image in images], dtype="<U32")
    data = memoryview(images).cast("B")
    digests = []
    for start in range(0, len(data), size):
        digest = prefix.copy()
        digest.update(data[start : start + size])
        digests.append(digest.hexdigest())
    return np.array(digests, dtype="<U32")


def keyed_position(digest: str, seed: int) -> float:
    """Where an image falls in [0, 1) for the seed: a keyed hash (BLAKE2b, key = the seed) of
    its content digest. The split stage buckets images by it, so an image's split depends on
    its content and `data.seed` alone, never on which other images exist."""
    keyed = hashlib.blake2b(digest.encode(), digest_size=8, key=str(int(seed)).encode())
    return int.from_bytes(keyed.digest(), "big") / 2.0**64


def members_digest(digests: Iterable[str]) -> str:
    """One hash of a set of images (their sorted digests): equal sets, equal hash."""
    digest = hashlib.sha256()
    for item in sorted(set(digests)):
        digest.update(item.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def write_manifest(path: Path, digests: Iterable[str]) -> None:
    """A training manifest: the sorted, distinct digests, one per line."""
    write_text(path, "".join(f"{digest}\n" for digest in sorted(set(map(str, digests)))))


def store_version(splits: dict[str, tuple[np.ndarray, np.ndarray]], classes, shape) -> str:
    """`StoreIndex.version` of splits given as (digests, labels) per split name."""
    digest = hashlib.sha256(json.dumps([list(classes), list(shape)]).encode())
    for name in sorted(splits):
        digests, labels = splits[name]
        pairs = sorted(zip(map(str, digests), map(int, labels), strict=True))
        digest.update(f"\n[{name}]\n".encode())
        for item, label in pairs:
            digest.update(f"{item} {label}\n".encode())
    return digest.hexdigest()[:12]
