"""The files `pipeline predict` classifies, decoded as the split stage decodes an image folder.

Any mode becomes RGB, the EXIF orientation is applied, and `stretch` or `pad` makes a square
(pipeline.datasets.images), at the size and channels the model takes, so a file gets the
answer it would get in the test split. A file that cannot be decoded is reported, not fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.datasets.images import DEFAULT_MAX_PIXELS, ResizeMode, decode_many
from pipeline.datasets.sources import IMAGE_EXTENSIONS
from pipeline.errors import ModelError, PipelineError

logger = logging.getLogger(__name__)


def find_images(paths: Sequence[Path]) -> list[Path]:
    """The files to classify, in a deterministic order: the paths in the order given, a file as
    it is (whatever its extension), a folder as its image files at any depth, sorted (the
    extensions the image-folder reader accepts; hidden files and folders left out, as the split
    leaves them out). A file listed twice counts once.

    Raises PipelineError naming every path that does not exist, and when no image is found.
    """
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise PipelineError(
            f"{', '.join(missing)}: no such file or folder; pass image files or folders of them"
        )
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            found.append(path)
            continue
        images = sorted(
            candidate
            for candidate in path.rglob("*")
            if candidate.is_file()
            and candidate.suffix.lower() in IMAGE_EXTENSIONS
            and not any(part.startswith(".") for part in candidate.relative_to(path).parts)
        )
        if not images:
            logger.warning("%s holds no image file (%s)", path, ", ".join(IMAGE_EXTENSIONS))
        found.extend(images)
    if not found:
        raise PipelineError(
            f"no image file ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, paths))}"
        )
    return list(dict.fromkeys(found))


def read_images(
    paths: Sequence[Path],
    image_shape: tuple[int, int, int],
    resize: ResizeMode = "stretch",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> tuple[np.ndarray, dict[int, str]]:
    """Decode `paths` to uint8 images of `image_shape`, as the split stage decodes an image
    folder; return them and {position: reason} for the files that could not be decoded (their
    rows are black), a file over the pixel or memory budget among them, refused unread.

    A one-channel model (digits, mnist, fashion_mnist) gets the files' luminance, Pillow's own
    RGB -> L conversion, which gives back exactly the gray values a grayscale PNG holds.
    """
    height, width, channels = image_shape
    if height != width or channels not in (1, 3):
        raise ModelError(
            f"the model takes images of shape {image_shape}; predict decodes files to square "
            "images of 1 (gray) or 3 (RGB) channels, as the split stage does"
        )
    images = np.empty((len(paths), height, width, channels), dtype=np.uint8)
    bad = decode_many(paths, images, height, resize, max_pixels=max_pixels)
    return images, bad
