"""Decoding image files to RGB uint8 arrays of one size, whatever their mode or orientation.

Every file is untrusted: its header is read first, and an image whose decoding would take more
pixels or memory than the budgets allow is refused before any pixel is allocated.
"""

from __future__ import annotations

import ctypes
import io
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ResizeMode = Literal["stretch", "pad"]
RESIZE_MODES: tuple[str, ...] = ("stretch", "pad")

DEFAULT_MAX_PIXELS = 40_000_000
"""Pixels one file may declare (width x height): data.max_pixels, and the served model's own."""
DEFAULT_MAX_DECODED_BYTES = 256 << 20
"""Bytes the decoding of one file may hold at its peak (the decoded image, the decoder's own
buffers, a rotated copy, a conversion): what keeps a small file from costing gigabytes."""
IN_FLIGHT_BYTES = 2 * DEFAULT_MAX_DECODED_BYTES
"""Decoding memory of all the threads of one process at once (split's workers, concurrent
requests of a served model): a folder of large files keeps the peak flat."""
FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
"""Pillow's formats that are decoded (JPEG includes MPO, the multi-picture JPEG of phones).
The others (ICO, ICNS, PSD, ...) are refused: some hold images whose size their header does not
declare, which would get past the budgets."""
ORIENTATION = 0x0112
"""The EXIF orientation tag."""
STRIP_PIXELS = 1 << 20
"""Pixels per strip where a conversion goes strip by strip, to hold no full-size temporary."""
TRIM_BYTES = 64 << 20
"""A decoding planned to peak above this hands its freed memory back to the system after."""
_OVERHEAD = 16 << 20
"""A file's fixed decoding cost beyond its pixels (strips, the resize's buffers), in bytes."""


WAIT_SECONDS = 60.0
"""The longest a decoding waits for room in the process's decoding budget (MLflow's scoring
server answers a request with 504 after 60 s)."""


class BadImage(Exception):
    """An image file that cannot be decoded; the message is the reason, for skipped.csv."""


class DecodingMemory:
    """A budget of decoding bytes shared by the threads of a process: a decoding waits until
    its planned peak fits beside those in flight (one alone always runs, so none waits forever).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0
        self._condition = threading.Condition()

    @contextmanager
    def reserve(self, nbytes: int, timeout: float = WAIT_SECONDS) -> Iterator[None]:
        with self._condition:
            fits = self._condition.wait_for(
                lambda: self.in_flight == 0 or self.in_flight + nbytes <= self.limit, timeout
            )
            if not fits:
                # A served request times out after 60 s: waiting longer would only keep its
                # thread busy after the client has been answered.
                raise BadImage(
                    f"waited {timeout:g} s for {nbytes >> 20} MB of decoding memory while other "
                    "images were decoded: send fewer large images at once"
                )
            self.in_flight += nbytes
        try:
            yield
        finally:
            with self._condition:
                self.in_flight -= nbytes
                self._condition.notify_all()


PROCESS_MEMORY = DecodingMemory(IN_FLIGHT_BYTES)
"""The one decoding budget of this process, which every decode_image shares."""


def decode_image(
    source: Path | bytes,
    size: int,
    resize: ResizeMode = "stretch",
    channels: int = 3,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> np.ndarray:
    """Decode one image file (a path, or its bytes) to a (size, size, channels) uint8 array.

    The one decoding of the project: the split stage, `pipeline predict` and the served model
    all call it, so a file gets the same pixels everywhere. Grayscale, palette, RGBA, CMYK and
    16-bit images all become 8-bit RGB; the EXIF orientation tag is applied, so a photo taken
    sideways is stored upright. `stretch` resizes to a square ignoring the aspect ratio; `pad`
    keeps it and fills the rest with black. `channels=1` then takes Pillow's luminance of the
    RGB image, which gives back exactly the gray values a grayscale file holds.

    The header is read first: a file declaring more than `max_pixels`, or whose decoding would
    hold more than `max_decoded_bytes` at its peak, raises BadImage before any pixel is
    allocated. A JPEG larger than needed is decoded at 1/2, 1/4 or 1/8 scale (never below
    `size`), and only the first frame of an animation or a multi-page file is decoded.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (gray) or 3 (RGB), got {channels}")
    if isinstance(source, Path) and source.stat().st_size == 0:
        raise BadImage("empty file (0 bytes)")
    try:
        handle = Image.open(
            source if isinstance(source, Path) else io.BytesIO(source), formats=FORMATS
        )
        with handle:
            plan = _plan(handle, size, max_pixels, max_decoded_bytes)
            with PROCESS_MEMORY.reserve(plan.peak_bytes):
                try:
                    _load_upright(handle, plan, max_decoded_bytes)
                    pixels = _as_array(_resized(_to_rgb_or_gray(handle), size, resize), channels)
                finally:
                    # The decoded image is freed, and the heap trimmed, before the next decoding
                    # is let in.
                    handle.close()
                    if plan.peak_bytes >= TRIM_BYTES:
                        _give_back_freed_memory()
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(
            "not an image Pillow can identify (corrupt or another format; formats read: "
            f"{', '.join(FORMATS)})"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise BadImage(
            f"over the budget of {_millions(max_pixels)} M pixels (data.max_pixels), and even "
            f"over Pillow's own limit: {_short(exc)}"
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Truncated JPEGs raise OSError; some broken headers raise SyntaxError or ValueError.
        raise BadImage(f"cannot decode: {_short(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a hostile file reaches odd corners of a plugin
        # (struct.error, IndexError, EOFError, MemoryError...): it is a bad file, not a crash.
        raise BadImage(f"cannot decode: {type(exc).__name__}: {_short(exc)}") from None
    return pixels


def _as_array(image: Image.Image, channels: int) -> np.ndarray:
    """The resized L or RGB image as a (size, size, channels) uint8 array of its own."""
    if channels == 1:
        gray = image if image.mode == "L" else image.convert("L")
        return np.array(gray, dtype=np.uint8)[..., None]
    return np.array(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


class _Plan:
    """What the header says a decoding will cost: its peak in bytes, and whether that counts
    a rotated copy (an orientation only found after loading is checked then)."""

    def __init__(self, peak_bytes: int, counts_turn: bool) -> None:
        self.peak_bytes = peak_bytes
        self.counts_turn = counts_turn


def _plan(handle: Image.Image, size: int, max_pixels: int, max_decoded_bytes: int) -> _Plan:
    """Check the header against the budgets, set a JPEG's reduced decoding, and return the
    decoding's planned peak; BadImage with the reason when over a budget."""
    width, height = handle.size
    pixels = width * height
    if pixels > max_pixels:
        raise BadImage(
            f"{width}x{height} = {_millions(pixels)} M pixels, over the budget of "
            f"{_millions(max_pixels)} M (data.max_pixels)"
        )
    decoder = 0
    if handle.format in ("JPEG", "MPO"):
        # libjpeg holds every DCT coefficient of a progressive file at full size (2 bytes a
        # sample), whatever the reduced size it outputs; a baseline file streams row by row
        # (a 6000x6000 one decodes reduced in about 5 MB), so it is not charged for them.
        progressive = handle.info.get("progressive") or handle.info.get("progression")
        decoder = _coefficient_bytes(handle) if progressive else 0
        handle.draft(handle.mode, (size, size))
    loaded_pixels = handle.width * handle.height
    loaded = loaded_pixels * _pixel_bytes(handle.mode)
    if handle.format == "WEBP":
        # libwebp's animation decoder keeps two RGBA canvases and hands over the frame's bytes.
        decoder = 12 * loaded_pixels
    elif handle.format == "TIFF":
        # libtiff reads some layouts (JPEG-compressed YCbCr) through a full RGBA buffer.
        decoder = 4 * loaded_pixels
    turned = loaded if _header_orientation(handle) in range(2, 9) else 0
    converted = loaded_pixels * _converted_pixel_bytes(handle.mode)
    peak = _OVERHEAD + loaded + max(decoder, turned, converted)
    if peak > max_decoded_bytes:
        raise BadImage(
            f"{width}x{height} {handle.format} image of mode {handle.mode} needs about "
            f"{peak >> 20} MB to decode, over the budget of {max_decoded_bytes >> 20} MB"
        )
    return _Plan(peak, turned > 0)


def _load_upright(handle: Image.Image, plan: _Plan, max_decoded_bytes: int) -> None:
    """Decode the first frame and turn it upright in place, by its EXIF orientation."""
    handle.load()
    if handle.getexif().get(ORIENTATION, 1) not in range(2, 9):
        return
    copy = handle.width * handle.height * _pixel_bytes(handle.mode)
    if not plan.counts_turn and plan.peak_bytes + copy > max_decoded_bytes:
        raise BadImage(
            f"{handle.width}x{handle.height}: turning it upright needs about "
            f"{(plan.peak_bytes + copy) >> 20} MB, over the budget of {max_decoded_bytes >> 20} MB"
        )
    ImageOps.exif_transpose(handle, in_place=True)


def _header_orientation(handle: Image.Image) -> int:
    """The EXIF orientation the header declares, without decoding (Pillow's PNG reader loads
    the whole image to look for an eXIf chunk after the pixels: that one is checked later)."""
    if handle.format == "PNG" and "exif" not in handle.info:
        return 1
    return int(handle.getexif().get(ORIENTATION, 1))


def _coefficient_bytes(handle: Image.Image) -> int:
    """libjpeg's whole-image coefficient buffer: 2 bytes per sample of every component."""
    layers = getattr(handle, "layer", None) or [(0, 1, 1, 0)] * len(handle.getbands())
    most_h = max(layer[1] for layer in layers) or 1
    most_v = max(layer[2] for layer in layers) or 1
    samples = sum(layer[1] * layer[2] for layer in layers) / (most_h * most_v)
    return int(2 * samples * handle.width * handle.height)


def _pixel_bytes(mode: str) -> int:
    """Bytes per pixel of a Pillow image in memory (multi-band modes take 4)."""
    if mode in ("1", "L", "P"):
        return 1
    return 2 if mode.startswith("I;16") else 4


def _converted_pixel_bytes(mode: str) -> int:
    """Bytes per pixel of the full-size image _to_rgb_or_gray makes from a `mode` image."""
    if mode in ("RGB", "L"):
        return 0
    return 1 if mode in ("1", "I", "F") or mode.startswith("I;16") else 4


def _to_rgb_or_gray(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB, or to L where the image is gray (resized as L and made
    RGB at the end, which gives the same pixels for a quarter of the memory)."""
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode == "1":
        return image.convert("L")
    if mode in ("I", "F") or mode.startswith("I;16"):
        return _scaled_to_gray(image)
    if (mode == "P" and "transparency" in image.info) or mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        return _composited_on_white(image)
    return image.convert("RGB")


def _scaled_to_gray(image: Image.Image) -> Image.Image:
    """16- and 32-bit intensities to 8-bit L, scaled (0..65535 onto 0..255) instead of clipped,
    strip by strip in integers: rint(v / 257) is (v + 128) // 257, as 257 is odd."""
    scale = image.mode.startswith("I;16") or (
        image.mode == "I" and (image.getextrema()[1] or 0) > 255
    )
    gray = Image.new("L", image.size)
    for top, strip in _strips(image):
        values = np.asarray(strip)
        if scale:
            values = (values.astype(np.int64) + 128) // 257
        elif values.dtype.kind == "f":
            values = np.rint(values)
        gray.paste(Image.fromarray(np.clip(values, 0, 255).astype(np.uint8)), (0, top))
    return gray


def _composited_on_white(image: Image.Image) -> Image.Image:
    """Transparent pixels composited onto white, as a viewer shows them, rather than keeping
    whatever colour happens to sit under alpha 0; strip by strip, into one RGB image."""
    rgb = Image.new("RGB", image.size)
    for top, strip in _strips(image):
        rgba = strip.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        rgb.paste(Image.alpha_composite(background, rgba).convert("RGB"), (0, top))
    return rgb


def _strips(image: Image.Image) -> Iterator[tuple[int, Image.Image]]:
    """(top row, strip) of whole rows of `image`, about STRIP_PIXELS each."""
    rows = max(1, STRIP_PIXELS // max(1, image.width))
    for top in range(0, image.height, rows):
        yield top, image.crop((0, top, image.width, min(image.height, top + rows)))


def _resized(image: Image.Image, size: int, resize: ResizeMode) -> Image.Image:
    if resize == "pad":
        return ImageOps.pad(image, (size, size), method=Image.Resampling.BILINEAR, color=0)
    if image.size != (size, size):
        return image.resize((size, size), Image.Resampling.BILINEAR)
    return image


def _give_back_freed_memory() -> None:
    """Return freed heap memory to the system (glibc's malloc_trim; elsewhere nothing).

    glibc raises its mmap threshold after the first large free, so the next large images come
    from per-thread heaps that keep freed memory: with several decoding threads the process
    would keep several images' worth each, and grow with the number of large files.
    """
    global _malloc_trim
    if _malloc_trim is None:
        try:
            _malloc_trim = ctypes.CDLL(None).malloc_trim
        except (AttributeError, OSError):
            _malloc_trim = False
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None


def _millions(count: int) -> str:
    return f"{count / 1e6:.4g}"


def _short(problem: object, limit: int = 300) -> str:
    """An exception's text, cut to `limit` characters: reasons go into CSV cells and answers."""
    text = str(problem)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def decode_many(
    paths: Sequence[Path],
    out: np.ndarray,
    size: int,
    resize: ResizeMode,
    progress: Callable[[int], None] | None = None,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
) -> dict[int, str]:
    """Decode `paths[i]` into `out[i]` (N, size, size, 1 or 3); return {i: reason} for the files
    that could not be (those over the budgets among them).

    Pillow releases the GIL while decoding and resizing, so threads use every core without
    copying images between processes; PROCESS_MEMORY keeps their decoding memory bounded.
    """
    bad: dict[int, str] = {}
    channels = out.shape[-1]

    def work(position: int) -> None:
        try:
            out[position] = decode_image(
                paths[position], size, resize, channels, max_pixels, max_decoded_bytes
            )
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
