"""Images embedded in the page: figure files and example images as PNG `data:` URIs, so the
report opens the same from disk, from a CI artifact or from MLflow, without a network."""

from __future__ import annotations

import base64
import io
import logging
import math
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.datasets.images import as_uint8_images
from pipeline.reporting.content import Figure

logger = logging.getLogger(__name__)

# Example images smaller than this (pixels, longer side) are enlarged by a whole factor without
# blurring, so that 8 x 8 digits stay readable; larger ones are shrunk to at most the maximum,
# which keeps a page of many classes small.
MIN_EXAMPLE_PIXELS = 64
MAX_EXAMPLE_PIXELS = 128

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def embed_figure(figure: Figure) -> dict | None:
    """A figure file as a PNG data URI with its size, or None (and a warning) when it is
    missing or not an image."""
    path = Path(figure.path)
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if not data.startswith(_PNG_SIGNATURE):
                data = _png_bytes(image)
    except FileNotFoundError:
        logger.info("report: %s is not there; left out", path)
        return None
    except (OSError, ValueError) as exc:
        logger.warning("report: %s is not a readable image (%s); left out", path, exc)
        return None
    return {"caption": figure.caption, "src": _data_uri(data), "width": width, "height": height}


def embed_examples(images: np.ndarray, class_name: str) -> list[dict]:
    """One class's example images ((n, H, W) or (n, H, W, C), uint8, as the split stores
    them) as data URIs; a ValueError naming the class for anything else."""
    batch = as_uint8_images(images, f"examples[{class_name!r}]")
    return [_embed_image(image) for image in batch]


def embed_image(image: np.ndarray, name: str = "image") -> dict:
    """One uint8 image ((H, W) or (H, W, C), as the split stores it) as a data URI, sized as
    the examples are; a ValueError naming `name` for anything else."""
    return _embed_image(as_uint8_images(image, name, batch=False))


def _embed_image(image: np.ndarray) -> dict:
    """One (H, W, C) uint8 image as a PNG data URI: small images enlarged by a whole factor
    (nearest neighbour), large ones shrunk."""
    # Pillow takes gray images without a channel axis.
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    longest = max(picture.size)
    if longest < MIN_EXAMPLE_PIXELS:
        factor = math.ceil(MIN_EXAMPLE_PIXELS / longest)
        picture = picture.resize(
            (picture.width * factor, picture.height * factor), Image.Resampling.NEAREST
        )
    elif longest > MAX_EXAMPLE_PIXELS:
        scale = MAX_EXAMPLE_PIXELS / longest
        picture = picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale))),
            Image.Resampling.LANCZOS,
        )
    return {
        "src": _data_uri(_png_bytes(picture)),
        "width": picture.width,
        "height": picture.height,
        # Shown at a fixed thumbnail size: enlarged without blurring only where it is small.
        "pixelated": longest < MIN_EXAMPLE_PIXELS,
    }


def _png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")
