"""Hostile image files cost little memory: a file of under 1 MB that declares a huge image is
refused at its header, and files just within the budgets decode within the goal (no payload of
1 MB or less grows a worker by more than 300 MB), measured as peak RSS in a subprocess. A folder
of such files keeps the decoding threads' peak flat (the split stage's decode_many)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from pipeline.datasets.images import IN_FLIGHT_BYTES

pytestmark = pytest.mark.skipif(
    sys.platform != "linux", reason="ru_maxrss is in kilobytes on Linux only"
)

ROOT = Path(__file__).resolve().parents[2]
GOAL_MB = 300
"""Issue 33: no payload of 1 MB or less grows a serving worker by more than 300 MB."""

MEASURE = """
import json, resource, sys
from pathlib import Path
import numpy as np
from pipeline.datasets.images import BadImage, decode_image, decode_many

paths = [Path(path) for path in sys.argv[1:]]
data = paths[0].read_bytes() if len(paths) == 1 else None
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if data is not None:
    try:
        decode_image(data, 150)
        outcome = "decoded"
    except BadImage as reason:
        outcome = str(reason)
else:
    out = np.zeros((len(paths), 150, 150, 3), np.uint8)
    outcome = decode_many(paths, out, 150, "stretch", workers=4)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_mb": (after - before) / 1024, "outcome": outcome}))
"""


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _write_png(path: Path, width: int, height: int, bit_depth: int, colour_type: int) -> Path:
    """A real, decodable black PNG of any size, written without holding its pixels: rows are
    deflated a block at a time once, and the block's bytes repeated (a full flush makes them
    independent of what came before), as a compression bomb is made."""
    channels = {0: 1, 2: 3, 6: 4}[colour_type]
    row = b"\x00" + bytes((width * channels * bit_depth + 7) // 8)
    rows_per_block = max(1, (1 << 20) // len(row))
    block, tail = row * rows_per_block, row * (height % rows_per_block)
    count = height // rows_per_block
    compressor = zlib.compressobj(9)
    first = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(block) + compressor.flush(zlib.Z_FULL_FLUSH)
    last = compressor.compress(tail) + compressor.flush(zlib.Z_FULL_FLUSH)
    checksum = 1
    for _ in range(count):
        checksum = zlib.adler32(block, checksum)
    checksum = zlib.adler32(tail, checksum)
    # The stream ends with an empty final block and the checksum of all the rows.
    stream = first + again * (count - 1) + last + b"\x03\x00" + struct.pack(">I", checksum)
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    with path.open("wb") as out:
        out.write(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header))
        for start in range(0, len(stream), 1 << 16):
            out.write(_chunk(b"IDAT", stream[start : start + (1 << 16)]))
        out.write(_chunk(b"IEND", b""))
    return path


def _measure(*paths: Path) -> dict:
    """Peak RSS growth (MB) of decoding `paths` in a fresh Python, and the outcome."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", MEASURE, *map(str, paths)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=environment,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


BOMBS = {
    "16-bit gray": (13000, 13000, 16, 0),
    "8-bit RGB": (13000, 13000, 8, 2),
    "1-bit": (13000, 13000, 1, 0),
}


@pytest.mark.parametrize("shape", BOMBS.values(), ids=BOMBS.keys())
def test_a_small_file_declaring_a_huge_image_is_refused_for_next_to_nothing(
    tmp_path, shape
) -> None:
    path = _write_png(tmp_path / "bomb.png", *shape)
    assert path.stat().st_size <= 1 << 20  # it decodes to 21 MB .. 338 MB of pixels
    measured = _measure(path)
    assert measured["outcome"] == (
        "13000x13000 = 169 M pixels, over the budget of 40 M (data.max_pixels)"
    )
    assert measured["growth_mb"] < 30, measured


WITHIN = {
    # 36 M pixels of 16 bits: 72 MB decoded, 36 MB once 8-bit (the old float64 path: 960 MB).
    "16-bit gray 6000x6000": ((6000, 6000, 16, 0), 160),
    # 39.7 M pixels, just under data.max_pixels: 159 MB decoded, no copy.
    "RGB 6300x6300": ((6300, 6300, 8, 2), GOAL_MB),
    # 29 M pixels of RGBA, just under the decoded-bytes budget: the image and its RGB copy.
    "RGBA 5400x5400": ((5400, 5400, 8, 6), GOAL_MB),
}


@pytest.mark.parametrize(("shape", "bound_mb"), WITHIN.values(), ids=WITHIN.keys())
def test_a_file_within_the_budgets_decodes_within_the_memory_goal(
    tmp_path, shape, bound_mb
) -> None:
    path = _write_png(tmp_path / "large.png", *shape)
    assert path.stat().st_size <= 1 << 20
    measured = _measure(path)
    assert measured["outcome"] == "decoded"
    assert measured["growth_mb"] < bound_mb, measured


@pytest.mark.slow
def test_a_folder_of_large_files_keeps_the_decoding_peak_flat(tmp_path) -> None:
    paths = [
        _write_png(tmp_path / f"bomb{i}.png", *shape) for i, shape in enumerate(BOMBS.values())
    ]
    for copy in range(2):
        for i, (shape, _) in enumerate(WITHIN.values()):
            paths.append(_write_png(tmp_path / f"large{copy}{i}.png", *shape))
    measured = _measure(*paths)
    assert sorted(map(int, measured["outcome"])) == [0, 1, 2]
    # Four threads, six files of 130-250 MB each: the shared budget lets in 512 MB at once.
    assert measured["growth_mb"] < IN_FLIGHT_BYTES / 2**20 + 100, measured
