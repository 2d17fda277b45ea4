"""The per-image table the gate validates: one row per prepared image (split, index, label,
class name, shape, dtype, pixel stats, difference hash, content hash), and the class-balance,
near-duplicate and drift tables derived from it."""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.store import Split, image_digests

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


def content_hashes(images: np.ndarray) -> list[str]:
    """A digest of each image's bytes: equal digests are exact duplicates (the one content
    hash of the pipeline, `pipeline.store.image_digest`)."""
    return [str(digest) for digest in image_digests(images)]


def build_image_table(splits: dict[str, Split]) -> pd.DataFrame:
    """One row per image of every split; `in_train` marks val/test images identical to one in
    train."""
    frames = []
    for name, split in splits.items():
        x = split.x if split.x.ndim == 4 else split.x.reshape(*split.x.shape, 1)
        count = len(x)
        labels = np.asarray(split.y)
        known = (labels >= 0) & (labels < len(split.classes))
        class_names = np.where(
            known, np.array(split.classes + [""])[np.where(known, labels, -1)], ""
        )
        stats = _pixel_stats(x)
        frame = pd.DataFrame(
            {
                "split": name,
                "index": np.arange(count),
                "label": labels,
                "class_name": class_names,
                "height": x.shape[1],
                "width": x.shape[2],
                "channels": x.shape[3],
                "dtype": str(x.dtype),
                **{key: stats[key] for key in ("min", "max", "mean", "std")},
            }
        )
        frame["dhash"] = [format(int(value), "016x") for value in stats["dhash"]]
        frame["content_hash"] = [str(digest) for digest in split.digests()]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    train_hashes = set(table.loc[table["split"] == "train", "content_hash"])
    table["in_train"] = (table["split"] != "train") & table["content_hash"].isin(train_hashes)
    return table[TABLE_COLUMNS]


def _pixel_stats(x: np.ndarray, chunk_bytes: int = 64 << 20) -> dict[str, np.ndarray]:
    """Per-image min/max/mean/std and dHash, a chunk of images at a time: float64 copies of a
    whole split (cats-vs-dogs at 150x150 is 1 GB of them) never exist at once."""
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
