"""The feature cache: a conv base's outputs over a split, written chunk by chunk to disk.

Used by the features stage and the benchmarks alike, so both time and test the one writer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

CHUNK_IMAGES = 1024
"""Images run through the base per chunk: the features of one chunk are all that is held in
memory (VGG16 features of CIFAR-10 at 224x224 are 6 GB of float32)."""


def write_features(
    extractor, images: np.ndarray, path: Path, batch_size: int, chunk_images: int = CHUNK_IMAGES
) -> tuple[int, ...]:
    """Run the conv base over `images` chunk by chunk, writing each chunk's features straight
    into a memory-mapped .npy file; return the features' shape."""
    feature_shape = tuple(extractor.output_shape[1:])
    features = np.lib.format.open_memmap(
        path, mode="w+", dtype=np.float32, shape=(len(images), *feature_shape)
    )
    chunks = range(0, len(images), chunk_images)
    for start in tqdm(chunks, desc=path.stem, unit="chunk", disable=len(chunks) < 2):
        stop = min(start + chunk_images, len(images))
        features[start:stop] = extractor.predict(
            images[start:stop], batch_size=batch_size, verbose=0
        )
    features.flush()
    del features
    return (len(images), *feature_shape)
