"""Decoding image files to RGB uint8 arrays of one size, whatever their mode or orientation."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ResizeMode = Literal["stretch", "pad"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "pad")


class BadImage(Exception):
    """An image file that cannot be decoded; the message is the reason, for skipped.csv."""


def decode_image(
    source: Path | bytes, size: int, resize: ResizeMode = "stretch", channels: int = 3
) -> np.ndarray:
    """Decode one image file (a path, or its bytes) to a (size, size, channels) uint8 array.

    The one decoding of the project: the split stage, `pipeline predict` and the served model
    all call it, so a file gets the same pixels everywhere. Grayscale, palette, RGBA, CMYK and
    16-bit images all become 8-bit RGB; the EXIF orientation tag is applied, so a photo taken
    sideways is stored upright. `stretch` resizes to a square ignoring the aspect ratio; `pad`
    keeps it and fills the rest with black. `channels=1` then takes Pillow's luminance of the
    RGB image, which gives back exactly the gray values a grayscale file holds.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    if isinstance(source, Path) and source.stat().st_size == 0:
        raise BadImage("empty file (0 bytes)")
    try:
        handle = Image.open(source if isinstance(source, Path) else io.BytesIO(source))
        with handle:
            handle.load()
            image = _to_rgb(ImageOps.exif_transpose(handle))
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image Pillow can identify (corrupt or another format)") from None
    except Image.DecompressionBombError as exc:
        raise BadImage(f"too large to decode safely ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated JPEGs raise OSError; some broken headers raise SyntaxError or ValueError.
        raise BadImage(f"cannot decode: {exc}") from None
    if resize == "pad":
        image = ImageOps.pad(image, (size, size), method=Image.Resampling.BILINEAR, color=0)
    elif image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    if channels == 1:
        return np.asarray(image.convert("L"), dtype=np.uint8)[..., None]
    return np.asarray(image, dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, scaling 16- and 32-bit intensities instead of clipping."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image)
        if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
            values = values.astype(np.float64) / 257.0  # 0..65535 onto 0..255
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        # Transparent pixels are composited onto white, as a viewer shows them, rather than
        # keeping whatever colour happens to sit under alpha 0.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def decode_many(
    paths: Sequence[Path],
    out: np.ndarray,
    size: int,
    resize: ResizeMode,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
) -> dict[int, str]:
    """Decode `paths[i]` into `out[i]` (N, size, size, 1 or 3); return {i: reason} for the files
    that could not be.

    Pillow releases the GIL while decoding and resizing, so threads use every core without
    copying images between processes.
    """
    bad: dict[int, str] = {}
    channels = out.shape[-1]

    def work(position: int) -> None:
        try:
            out[position] = decode_image(paths[position], size, resize, channels)
        except BadImage as reason:
            out[position] = 0
            bad[position] = str(reason)
        if progress is not None:
            progress(1)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        # list() re-raises any unexpected exception from a worker here.
        list(pool.map(work, range(len(paths))))
    return dict(sorted(bad.items()))


def as_uint8_images(
    values, name: str = "images", batch: bool = True, channels: int | None = None
) -> np.ndarray:
    """`values` as uint8 images with a channel axis: (N, H, W, C) when `batch`, else (H, W, C).

    The one place that accepts the shapes images arrive in ((H, W), (H, W, 1), (H, W, 3) and
    their batches) and says clearly what it refused. `channels=3` repeats a gray channel (for
    colour overlays); `channels=1` converts RGB to gray exactly as Pillow's `convert("L")` does.
    """
    array = np.asarray(values)
    rank = 4 if batch else 3
    if batch and array.size == 0:
        return np.zeros((0, 1, 1, channels or 1), dtype=np.uint8)
    if array.dtype != np.uint8:
        raise ValueError(
            f"{name} must be uint8 images (raw pixels, as the split stores them), "
            f"got dtype {array.dtype}"
        )
    if array.ndim == rank - 1:
        array = array[..., None]
    if array.ndim != rank or array.shape[-1] not in (1, 3):
        expected = (
            "(N, H, W), (N, H, W, 1) or (N, H, W, 3)" if batch else "(H, W), (H, W, 1) or (H, W, 3)"
        )
        raise ValueError(f"{name} must have shape {expected}, got {np.shape(values)}")
    if channels == 3 and array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 1 and array.shape[-1] == 3:
        # Pillow's own fixed-point ITU-R 601 luma, so a gray image is what `convert("L")` gives.
        rgb = array.astype(np.uint32)
        luma = (rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16
        array = luma[..., None].astype(np.uint8)
    elif channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels}")
    return array
