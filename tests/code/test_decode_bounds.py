"""Decoding is bounded: a header declaring too many pixels, or a decoding that would take too
much memory, is refused before any pixel is allocated; large JPEGs are decoded reduced, the same
way for every caller; only the first frame is read; the decoders share one memory budget."""

from __future__ import annotations

import io
import struct
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from pipeline.datasets import images
from pipeline.datasets.images import BadImage, DecodingMemory, decode_image, decode_many
from pipeline.datasets.readers.base import ReadOptions
from pipeline.datasets.readers.files import read_image_folder


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG that declares its size and holds no pixels: what a decoder must refuse unread."""
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b"")


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


@pytest.fixture
def no_pixels(monkeypatch):
    """Fail the test if any image's pixels are decoded (allocated) at all."""

    def refuse(self):
        raise AssertionError("pixels were decoded: the budget was not checked at the header")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_a_huge_header_is_refused_before_any_pixel_with_the_reason(no_pixels) -> None:
    with pytest.raises(BadImage) as refused:
        decode_image(_png_header(13000, 13000), 150)
    assert str(refused.value) == (
        "13000x13000 = 169 M pixels, over the budget of 40 M (data.max_pixels)"
    )


def test_the_pixel_budget_is_a_parameter(tmp_path) -> None:
    path = tmp_path / "square.png"
    Image.new("RGB", (100, 100), (1, 2, 3)).save(path)
    with pytest.raises(BadImage, match=r"100x100 = 0.01 M pixels, over the budget of 0.005 M"):
        decode_image(path, 10, max_pixels=5000)
    assert (decode_image(path, 10, max_pixels=10_000) == (1, 2, 3)).all()


def test_a_header_beyond_pillows_own_limit_names_our_budget(no_pixels) -> None:
    with pytest.raises(BadImage, match=r"over the budget of 40 M pixels \(data.max_pixels\)"):
        decode_image(_png_header(20000, 20000), 150)


@pytest.mark.parametrize(
    ("colour_type", "bit_depth", "planned_mb"),
    [(6, 8, 46), (2, 8, 31), (0, 16, 27), (0, 8, 19)],  # RGBA, RGB, 16-bit gray, gray
    ids=["RGBA", "RGB", "I;16", "L"],
)
def test_the_decoded_bytes_budget_counts_the_mode_and_its_conversions(
    no_pixels, colour_type, bit_depth, planned_mb
) -> None:
    # 2000x2000 is 4 M pixels: RGBA holds 16 MB, and its RGB copy 16 MB more; 16-bit gray
    # holds 8 MB and its 8-bit copy 4 MB; 8-bit gray is kept as it is.
    header = _png_header(2000, 2000, bit_depth, colour_type)
    with pytest.raises(BadImage) as refused:
        decode_image(header, 150, max_decoded_bytes=planned_mb - 1 << 20)
    assert f"needs about {planned_mb} MB to decode, over the budget of {planned_mb - 1} MB" in (
        str(refused.value)
    )


def test_within_the_budgets_a_truncated_file_is_a_decoding_error_not_a_budget_one() -> None:
    with pytest.raises(BadImage, match="cannot decode"):
        decode_image(_png_header(200, 200, 16, 0), 10)


def test_formats_whose_header_does_not_bound_the_image_are_refused() -> None:
    icon = _encoded(Image.new("RGB", (32, 32), (5, 5, 5)), "ICO")
    with pytest.raises(BadImage, match="not an image Pillow can identify"):
        decode_image(icon, 8)


def test_only_the_first_frame_of_an_animation_is_decoded() -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in ((250, 0, 0), (0, 0, 250))]
    gif = _encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    assert Image.open(io.BytesIO(gif)).n_frames == 2
    decoded = decode_image(gif, 8)
    assert decoded[..., 0].min() > 200 and decoded[..., 2].max() < 50


def test_sixteen_bit_values_scale_exactly_as_rint_of_v_over_257(tmp_path) -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    path = tmp_path / "all.png"
    Image.fromarray(values).save(path)
    expected = np.rint(values / 257.0).astype(np.uint8)
    np.testing.assert_array_equal(decode_image(path, 256, channels=1)[..., 0], expected)
    # The same, converted strip by strip through strips that cut rows unevenly.
    images.STRIP_PIXELS, saved = 1000, images.STRIP_PIXELS
    try:
        np.testing.assert_array_equal(decode_image(path, 256, channels=1)[..., 0], expected)
    finally:
        images.STRIP_PIXELS = saved


def test_transparency_strips_give_the_pixels_of_one_whole_composite(monkeypatch) -> None:
    rgba = np.random.default_rng(0).integers(0, 256, (64, 48, 4), dtype=np.uint8)
    file = _encoded(Image.fromarray(rgba), "PNG")
    whole = decode_image(file, 48)
    monkeypatch.setattr(images, "STRIP_PIXELS", 100)
    np.testing.assert_array_equal(decode_image(file, 48), whole)
    expected = Image.alpha_composite(
        Image.new("RGBA", (48, 64), (255, 255, 255, 255)), Image.fromarray(rgba)
    ).convert("RGB")
    np.testing.assert_array_equal(decode_image(file, 64, "pad")[:, 8:56], np.asarray(expected))


def _photo(width: int, height: int) -> Image.Image:
    x = np.linspace(0, 255, width)[None, :]
    y = np.linspace(0, 255, height)[:, None]
    rgb = np.stack([x + 0 * y, y + 0 * x, (x * y) / 255], axis=-1).astype(np.uint8)
    return Image.fromarray(rgb)


def test_a_large_jpeg_is_decoded_reduced_by_pillows_draft(tmp_path) -> None:
    file = _encoded(_photo(640, 480), "JPEG", quality=95)
    path = tmp_path / "photo.jpg"
    path.write_bytes(file)
    with Image.open(io.BytesIO(file)) as reduced:
        # 640x480 for 150: libjpeg decodes at 1/2 (320x240), never below the size asked for.
        reduced.draft("RGB", (150, 150))
        assert reduced.size == (320, 240)
        expected = np.asarray(reduced.convert("RGB").resize((150, 150), Image.Resampling.BILINEAR))
    full = np.asarray(
        Image.open(io.BytesIO(file)).convert("RGB").resize((150, 150), Image.Resampling.BILINEAR)
    )
    from_bytes = decode_image(file, 150)
    np.testing.assert_array_equal(from_bytes, expected)
    assert not np.array_equal(from_bytes, full)
    # Every caller gets the same pixels: a path (split, predict) and bytes (the served model).
    np.testing.assert_array_equal(decode_image(path, 150), from_bytes)
    out = np.zeros((1, 150, 150, 3), np.uint8)
    assert decode_many([path], out, 150, "stretch") == {}
    np.testing.assert_array_equal(out[0], from_bytes)


def test_a_reduced_rotated_jpeg_is_padded_upright(tmp_path) -> None:
    # Stored 600 wide x 300 high, tagged "rotate 90": upright it is 300 wide x 600 high. It is
    # reduced at 1/2 before turning, and padding to a square then adds black left and right.
    exif = Image.Exif()
    exif[0x0112] = 6
    white = Image.new("RGB", (600, 300), (255, 255, 255))
    file = _encoded(white, "JPEG", quality=95, exif=exif.tobytes())
    padded = decode_image(file, 100, resize="pad")
    assert padded[:, :20].max() < 30 and padded[:, 30:70].min() > 225
    assert padded[:5, 30:70].min() > 225 and padded[-5:, 30:70].min() > 225


def test_decode_many_and_the_folder_reader_pass_the_budget_on(tmp_path) -> None:
    for name, side in (("small", 20), ("big", 80)):
        folder = tmp_path / "folder" / name
        folder.mkdir(parents=True)
        Image.new("L", (side, side), 99).save(folder / f"{name}.png")
    paths = [tmp_path / "folder" / "small" / "small.png", tmp_path / "folder" / "big" / "big.png"]
    out = np.zeros((2, 8, 8, 3), np.uint8)
    bad = decode_many(paths, out, 8, "stretch", max_pixels=1000)
    assert list(bad) == [1] and "80x80 = 0.0064 M pixels, over the budget of 0.001 M" in bad[1]
    index = read_image_folder(tmp_path / "folder", ReadOptions(image_size=8, max_pixels=1000))
    rows = np.zeros((2, 8, 8, 3), np.uint8)
    reasons = index.load(np.arange(2), rows)
    assert [index.describe(row) for row in reasons] == [str(Path("big") / "big.png")]
    assert "over the budget of 0.001 M (data.max_pixels)" in next(iter(reasons.values()))


def test_the_decoding_memory_waits_for_room_but_never_forever() -> None:
    memory = DecodingMemory(limit=10)
    entered = threading.Event()
    with memory.reserve(8):

        def second() -> None:
            with memory.reserve(8):
                entered.set()

        worker = threading.Thread(target=second)
        worker.start()
        assert not entered.wait(0.2)  # 8 + 8 is over the limit of 10: it waits
    worker.join(5)
    assert entered.is_set()
    with memory.reserve(50):  # alone, even over the limit, it runs
        assert memory.in_flight == 50
    assert memory.in_flight == 0


def test_a_progressive_jpeg_counts_libjpegs_full_size_coefficients(no_pixels) -> None:
    # 2000x2000 with 4:2:0 sampling: 1.5 samples a pixel of 2 bytes each, 11 MB, however
    # small the reduced image it is decoded to (250x250 for 150).
    file = _encoded(_photo(2000, 2000), "JPEG", progressive=True, quality=80)
    with pytest.raises(BadImage, match=r"2000x2000 JPEG image of mode RGB needs about 27 MB"):
        decode_image(file, 150, max_decoded_bytes=20 << 20)


def test_a_decoding_that_cannot_get_memory_in_time_is_refused_not_left_waiting() -> None:
    from pipeline.datasets.images import DecodingMemory

    memory = DecodingMemory(limit=100)
    with memory.reserve(80):
        with pytest.raises(BadImage, match="waited 0.05 s for"), memory.reserve(50, timeout=0.05):
            pass
        with memory.reserve(20, timeout=0.05):
            assert memory.in_flight == 100
    assert memory.in_flight == 0


def test_a_baseline_jpeg_is_not_charged_for_the_coefficients_a_progressive_one_holds():
    """libjpeg streams a baseline file (decoded reduced in a few MB); only a progressive one
    keeps every coefficient at full size."""
    image = Image.new("RGB", (3000, 3000), (120, 30, 200))
    files = {}
    for progressive in (False, True):
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", progressive=progressive, subsampling=0)
        files[progressive] = buffer.getvalue()
    budget = 40 << 20  # the coefficients of 3000x3000x3 take 54 MB
    assert decode_image(files[False], 32, max_decoded_bytes=budget).shape == (32, 32, 3)
    with pytest.raises(BadImage, match="over the budget of 40 MB"):
        decode_image(files[True], 32, max_decoded_bytes=budget)
