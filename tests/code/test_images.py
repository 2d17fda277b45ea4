"""Image decoding: every mode to RGB uint8, EXIF orientation, stretch or pad, bad files named."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.datasets.images import BadImage, decode_image, decode_many


def _save(path: Path, image: Image.Image, fmt: str, **options) -> Path:
    image.save(path, format=fmt, **options)
    return path


def test_grayscale_becomes_three_equal_channels(tmp_path) -> None:
    path = _save(tmp_path / "g.png", Image.new("L", (10, 10), 77), "PNG")
    decoded = decode_image(path, 10)
    assert decoded.shape == (10, 10, 3) and decoded.dtype == np.uint8
    assert (decoded == 77).all()


def test_palette_image_keeps_its_colours(tmp_path) -> None:
    image = Image.new("RGB", (8, 8), (200, 10, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    decoded = decode_image(_save(tmp_path / "p.gif", image, "GIF"), 8)
    assert tuple(decoded[0, 0]) == (200, 10, 30)


def test_transparent_pixels_are_composited_onto_white(tmp_path) -> None:
    image = Image.new("RGBA", (6, 6), (255, 0, 0, 0))  # fully transparent red
    image.putpixel((0, 0), (0, 0, 255, 255))
    decoded = decode_image(_save(tmp_path / "a.png", image, "PNG"), 6)
    assert tuple(decoded[5, 5]) == (255, 255, 255)
    assert tuple(decoded[0, 0]) == (0, 0, 255)


def test_cmyk_jpeg_becomes_rgb(tmp_path) -> None:
    image = Image.new("CMYK", (12, 12), (0, 255, 255, 0))  # red in CMYK
    decoded = decode_image(_save(tmp_path / "c.jpg", image, "JPEG", quality=95), 12)
    assert decoded.shape == (12, 12, 3)
    red, green, blue = decoded[6, 6].astype(int)
    assert red > 200 and green < 60 and blue < 60


def test_sixteen_bit_intensities_are_scaled_not_clipped(tmp_path) -> None:
    values = np.array([[0, 32896, 65535, 65535]], dtype=np.uint16)
    path = _save(tmp_path / "d.png", Image.fromarray(values), "PNG")
    decoded = decode_image(path, 4, resize="pad")[..., 0]
    row = decoded[decoded.shape[0] // 2]
    assert row[0] == 0 and row[-1] == 255 and 120 <= row[1] <= 136


def test_exif_orientation_is_honoured(tmp_path) -> None:
    # Stored 40 wide x 20 high, tagged "rotate 90": it is shown (and must be stored) upright,
    # 20 wide x 40 high, so padding to a square adds black on the left and right.
    image = Image.new("RGB", (40, 20), (255, 255, 255))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path / "rotated.jpg", image, "JPEG", exif=exif.tobytes())
    decoded = decode_image(path, 40, resize="pad")
    assert decoded[:, :5].max() < 30 and decoded[:, 15:25].min() > 225
    assert decoded[:5, 15:25].min() > 225  # top rows are image, not padding


def test_pad_keeps_the_aspect_ratio_and_stretch_fills_the_square(tmp_path) -> None:
    path = _save(tmp_path / "wide.png", Image.new("RGB", (40, 10), (255, 255, 255)), "PNG")
    padded = decode_image(path, 20, resize="pad")
    stretched = decode_image(path, 20, resize="stretch")
    assert padded[0].max() == 0 and padded[10].min() == 255
    assert stretched.min() == 255


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not an image"),
    ],
)
def test_unreadable_files_raise_bad_image_with_a_reason(tmp_path, content, reason) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadImage, match=reason):
        decode_image(path, 8)


def test_truncated_jpeg_is_a_bad_image(tmp_path) -> None:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(
        buffer, format="JPEG"
    )
    path = tmp_path / "cut.jpg"
    path.write_bytes(buffer.getvalue()[:700])
    with pytest.raises(BadImage, match="cannot decode"):
        decode_image(path, 8)


def test_decode_many_reports_bad_files_by_position_and_zeroes_them(tmp_path) -> None:
    good = _save(tmp_path / "good.png", Image.new("RGB", (5, 5), (9, 9, 9)), "PNG")
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    out = np.full((3, 5, 5, 3), 7, dtype=np.uint8)
    bad = decode_many([good, empty, good], out, 5, "stretch", workers=2)
    assert list(bad) == [1] and "empty" in bad[1]
    assert (out[0] == 9).all() and (out[1] == 0).all() and (out[2] == 9).all()
