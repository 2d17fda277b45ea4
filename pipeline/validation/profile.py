"""The per-image table the gate validates: one row per prepared image (split, index, label,
class name, shape, dtype, pixel stats, difference hash, content hash), and the class-balance,
near-duplicate and drift tables derived from it.

Images are read a batch of a few MiB at a time (`split.batches`), so the table of a split of
any size costs its rows (tens of bytes an image), never the split's pixels."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from pipeline.store import ImageSplit

TABLE_COLUMNS = [
    "split",
    "index",
    "label",
    "class_name",
    "height",
    "width",
    "channels",
    "dtype",
    "min",
    "max",
    "mean",
    "std",
    "dhash",
    "content_hash",
    "in_train",
]
HASH_SIZE = 8  # an 8x8 difference hash: 64 bits
BATCH_BYTES = 4 << 20
"""The image bytes (uint8) the profile reads from a split at once."""


def difference_hashes(images: np.ndarray) -> np.ndarray:
    """64-bit difference hashes (dHash) of a batch, vectorised: gray, area-resize to 8x9 by two
    matrix products, then one bit per horizontally adjacent pair (is the right one brighter)."""
    gray = images.astype(np.float32).mean(axis=3)
    rows = _area_resize_matrix(images.shape[1], HASH_SIZE)
    columns = _area_resize_matrix(images.shape[2], HASH_SIZE + 1).T
    small = rows @ gray @ columns
    bits = (small[:, :, 1:] > small[:, :, :-1]).reshape(len(images), HASH_SIZE * HASH_SIZE)
    return np.packbits(bits, axis=1).view(">u8").ravel().astype(np.uint64)


def _area_resize_matrix(size: int, output: int) -> np.ndarray:
    """(output, size) weights averaging the input pixels that fall in each output bin."""
    edges = np.linspace(0.0, size, output + 1)
    starts, ends = edges[:-1, None], edges[1:, None]
    pixels = np.arange(size)[None, :]
    overlap = np.clip(np.minimum(ends, pixels + 1) - np.maximum(starts, pixels), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def build_image_table(
    splits: Mapping[str, ImageSplit], batch_bytes: int = BATCH_BYTES
) -> pd.DataFrame:
    """One row per image of every split, its pixels read `batch_bytes` at a time; `in_train`
    marks val/test images identical to one in train."""
    frames = []
    for name, split in splits.items():
        shape = tuple(split.image_shape)
        # Gray images stored without a channel axis count as one channel, as they are read.
        height, width, channels = shape if len(shape) == 3 else (*shape, 1)
        count = len(split)
        labels = np.asarray(split.y)
        known = (labels >= 0) & (labels < len(split.classes))
        class_names = np.where(
            known, np.array(split.classes + [""])[np.where(known, labels, -1)], ""
        )
        stats, dtype = _split_stats(split, batch_bytes)
        frame = pd.DataFrame(
            {
                "split": name,
                "index": np.arange(count),
                "label": labels,
                "class_name": class_names,
                "height": height,
                "width": width,
                "channels": channels,
                "dtype": dtype,
                **{key: stats[key] for key in ("min", "max", "mean", "std")},
            }
        )
        frame["dhash"] = [format(int(value), "016x") for value in stats["dhash"]]
        # The store's own digests: the images' bytes are not hashed a second time.
        frame["content_hash"] = [str(digest) for digest in split.digests()]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    train_hashes = set(table.loc[table["split"] == "train", "content_hash"])
    table["in_train"] = (table["split"] != "train") & table["content_hash"].isin(train_hashes)
    return table[TABLE_COLUMNS]


def batch_size_of(split: ImageSplit, batch_bytes: int = BATCH_BYTES) -> int:
    """How many of the split's images make `batch_bytes` of uint8 pixels (at least one)."""
    return max(1, int(batch_bytes) // max(1, int(np.prod(split.image_shape))))


def _split_stats(split: ImageSplit, batch_bytes: int) -> tuple[dict[str, np.ndarray], str]:
    """`_pixel_stats` of every image of a split, a batch at a time, in row order, and the
    dtype the images were read as (uint8 from the store; anything else fails the gate)."""
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("min", "max", "mean", "std", "dhash")}
    dtype = "uint8"
    for position, (_, block) in enumerate(split.batches(batch_size_of(split, batch_bytes))):
        block = block if block.ndim == 4 else block.reshape(*block.shape, 1)
        if position == 0:
            dtype = str(block.dtype)
        for key, values in _pixel_stats(block).items():
            parts[key].append(values)
    empty = {"dhash": np.zeros(0, np.uint64)}
    stats = {
        key: np.concatenate(values) if values else empty.get(key, np.zeros(0))
        for key, values in parts.items()
    }
    return stats, dtype


def _pixel_stats(x: np.ndarray, chunk_bytes: int = 8 << 20) -> dict[str, np.ndarray]:
    """Per-image min/max/mean/std and dHash of a batch, a chunk of images at a time: its
    float64 copy (8 bytes a pixel) stays at about `chunk_bytes`."""
    count = len(x)
    pixels = max(1, int(np.prod(x.shape[1:])))
    step = max(1, chunk_bytes // (pixels * 8))
    parts: dict[str, list[np.ndarray]] = {key: [] for key in ("min", "max", "mean", "std", "dhash")}
    for start in range(0, count, step):
        block = x[start : start + step]
        numeric = block.reshape(len(block), -1).astype(np.float64)
        # NaN pixels propagate to min/max/mean/std on purpose: the gate must see them.
        parts["min"].append(numeric.min(axis=1))
        parts["max"].append(numeric.max(axis=1))
        parts["mean"].append(numeric.mean(axis=1))
        parts["std"].append(numeric.std(axis=1))
        parts["dhash"].append(difference_hashes(np.nan_to_num(block.astype(np.float32))))
    empty = {"dhash": np.zeros(0, np.uint64)}
    return {
        key: np.concatenate(values) if values else empty.get(key, np.zeros(0))
        for key, values in parts.items()
    }


def count_near_duplicates(table: pd.DataFrame, max_distance: int, chunk: int = 512) -> int:
    """Val/test images within `max_distance` bits (dHash Hamming distance) of a train image,
    exact duplicates excluded: brute force in chunks, popcount in NumPy."""
    train = _hash_values(table.loc[table["split"] == "train", "dhash"])
    held_out = table[(table["split"] != "train") & ~table["in_train"]]
    others = _hash_values(held_out["dhash"])
    if not len(train) or not len(others):
        return 0
    near = 0
    for start in range(0, len(others), chunk):
        distances = np.bitwise_count(others[start : start + chunk, None] ^ train[None, :])
        near += int((distances.min(axis=1) <= max_distance).sum())
    return near


def _hash_values(column: pd.Series) -> np.ndarray:
    return np.array([int(value, 16) for value in column], dtype=np.uint64)


def class_table(table: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """One row per (split, class): its image count and how much larger the split's largest
    class is."""
    rows = []
    for name, group in table.groupby("split", sort=False):
        labels = group["label"].to_numpy()
        valid = labels[(labels >= 0) & (labels < num_classes)]
        counts = np.bincount(valid, minlength=num_classes)
        largest = max(int(counts.max()), 1)
        for label, count in enumerate(counts):
            rows.append(
                {
                    "split": name,
                    "label": label,
                    "count": int(count),
                    "imbalance_ratio": largest / count if count else float("inf"),
                }
            )
    return pd.DataFrame(rows)


def drift_table(table: pd.DataFrame, reference: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """Per class, a two-sample Kolmogorov-Smirnov test of per-image mean and std pixel values,
    current data against the reference; the larger statistic is the class's drift."""
    from scipy.stats import ks_2samp

    rows = []
    for label in range(num_classes):
        current = table[table["label"] == label]
        before = reference[reference["label"] == label]
        if current.empty or before.empty:
            rows.append({"label": label, "ks_statistic": 1.0, "p_value": 0.0})
            continue
        tests = [ks_2samp(current[column], before[column]) for column in ("mean", "std")]
        worst = max(tests, key=lambda test: test.statistic)
        rows.append(
            {"label": label, "ks_statistic": float(worst.statistic), "p_value": float(worst.pvalue)}
        )
    return pd.DataFrame(rows)
