"""The feature cache: a conv base's outputs over a split, written chunk by chunk to disk.

Used by the features stage and the benchmarks alike, so both time and test the one writer.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np

from pipeline.entry import Progress
from pipeline.store import write_npy_rows

CHUNK_IMAGES = 1024
"""Images run through the base per chunk: the features of one chunk are all that is held in
memory (VGG16 features of CIFAR-10 at 224x224 are 6 GB of float32)."""
CHUNK_BYTES = 64 << 20
"""The most bytes of uint8 images one chunk reads, whatever CHUNK_IMAGES says (the model's
float copy of a chunk is four times that, and more once resized to the backbone's input)."""


def write_features(
    extractor,
    images,
    path: Path,
    batch_size: int,
    chunk_images: int = CHUNK_IMAGES,
    label: str | None = None,
    show_progress: bool = True,
) -> tuple[int, ...]:
    """Run `extractor` over `images` (a store split, or any rows with `len` and `read(rows)`)
    chunk by chunk, reading each chunk's rows and appending its float32 outputs to the .npy
    file `path` with plain writes (no memory map, whose dirty pages would count in this
    process's memory); return the outputs' shape. Progress is reported as `label` (the file's
    stem by default), unless `show_progress` is False."""
    feature_shape = tuple(int(dim) for dim in extractor.output_shape[1:])
    shape = (len(images), *feature_shape)
    input_shape = extractor.input_shape[1:]
    image_bytes = max(1, int(np.prod(input_shape, dtype=np.int64)))
    # CHUNK_BYTES may shorten a chunk of large images, but not below one predict batch; a
    # chunk is whole batches, so only a split's last batch has another shape (each new shape
    # is one more traced function kept in memory).
    batch_size = max(1, int(batch_size))
    wanted = max(batch_size, min(int(chunk_images), CHUNK_BYTES // image_bytes))
    step = wanted // batch_size * batch_size
    chunks = -(-len(images) // step)

    def features():
        # A bar on a terminal, a line per 10% in DVC's log; none for a split of one chunk.
        progress = (
            Progress(len(images), label or path.stem) if chunks > 1 and show_progress else None
        )
        for first in range(0, len(images), step):
            chunk = images.read(np.arange(first, min(first + step, len(images))))
            if progress is not None:
                progress.update(len(chunk))
            # predict_on_batch, batch by batch: `predict` builds a data pipeline at every call,
            # whose memory TensorFlow keeps, so the stage's peak grew with the number of chunks.
            yield np.concatenate(
                [
                    keras.ops.convert_to_numpy(
                        extractor.predict_on_batch(chunk[start : start + batch_size])
                    )
                    for start in range(0, len(chunk), batch_size)
                ]
            )
        if progress is not None:
            progress.close()

    write_npy_rows(path, shape, np.float32, features())
    return shape
