"""Files, written once and right: atomic writes, the .npz split store, hashing.

The pipeline's own files (reports, splits, downloads, extracted datasets) are written through
`atomic_write` or `atomic_directory`, so a failure never leaves a truncated report, a
half-written split or a half-extracted dataset behind. Files that libraries write themselves
(Keras models, figures, CSVs) go into a stage's out folder, which DVC discards on failure.

The names of the files inside the folders that `dvc.yaml` passes between stages are also
defined here, once: the stage that writes a folder and the stages that read it
share them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from pipeline.errors import DataError, PipelineError

SPLITS: tuple[str, ...] = ("train", "val", "test")
PLAN_FILE = "split.json"
"""Written beside the splits: counts and the fractions the split aimed at."""
MODEL_FILE = "model.keras"
HISTORY_FILE = "history.csv"
RUN_FILE = "run.json"
"""A strategy's MLflow run id, experiment, model URI and backbone weights, for `evaluate`."""
MANIFEST_FILE = "training_manifest.txt"
"""The content digests (`image_digest`) of the images a model trained on, one per line, sorted:
the promotion gate proves with it that no test image was trained on."""
FIRST_KERNEL_FILE = "first_kernel_before.npy"
"""The scratch model's first conv kernel before training, for the filters figure."""
CLASSES_FILE = "classes.json"
"""Beside a model: its class names, a JSON list in label order (what `predict` answers in)."""
FEATURES_INFO_FILE = "backbone.json"
EXTRACTOR_FILE = "extractor.keras"

_CHUNK_BYTES = 8 << 20


# --- atomic writes ----------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside `path` for writing; it replaces `path` only if the block
    ends without an exception, so readers see the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        # Opened by name, so `stream.name` is the temporary file's path (to hash it, say).
        with open(temporary, mode, **({} if "b" in mode else {"newline": ""})) as stream:
            yield stream
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


@contextlib.contextmanager
def atomic_directory(target: Path, durable: bool = False) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; it replaces `target` as a whole when the
    block succeeds, and is deleted, leaving `target` as it was, when it fails.

    `durable`: the staged files and the folders are fsynced before and after the rename, so a
    power cut leaves either the old folder or the whole new one (a training backup needs this;
    an extracted dataset of 25,000 files, which can be extracted again, does not pay for it).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        yield staging
        if durable:
            for path in sorted(staging.rglob("*"), reverse=True):
                fsync_path(path)
            fsync_path(staging)
        previous = None
        if target.exists():
            previous = target.with_name(f".{target.name}.previous")
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(target, previous)
        os.replace(staging, target)
        if durable:
            fsync_path(target.parent)
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fsync_path(path: Path) -> None:
    """Flush a file's or a folder's entries to disk (a folder: where a rename is recorded).
    Folders cannot be opened on Windows: skipped there."""
    with contextlib.suppress(OSError):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def write_text(path: Path, text: str) -> None:
    with atomic_write(path) as stream:
        stream.write(text)


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=False) + "\n")


def write_classes(model_dir: Path, classes: Iterable[str]) -> None:
    """Write CLASSES_FILE beside a model, so it can be used without the split it came from."""
    write_json(Path(model_dir) / CLASSES_FILE, [str(name) for name in classes])


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise PipelineError(f"{path} not found: run the stage that writes it (dvc repro)") from None
    except json.JSONDecodeError as exc:
        raise PipelineError(
            f"{path} is not valid JSON ({exc}); rerun the stage that writes it"
        ) from None


def copy_file(origin: Path, target: Path) -> Path:
    """Copy `origin` to `target` atomically, creating folders as needed."""
    with open(origin, "rb") as source, atomic_write(target, "wb") as sink:
        shutil.copyfileobj(source, sink, _CHUNK_BYTES)
    return Path(target)


# --- hashing ----------------------------------------------------------------------------------


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file, read in chunks so large archives stay out of memory."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def image_digest(image: np.ndarray) -> str:
    """The content hash of one image: its shape and uint8 bytes (32 hex digits). Equal images
    have equal digests, whatever file or split they came from: splits, training manifests and
    the data gate's leak check all identify an image by it."""
    image = np.ascontiguousarray(image, dtype=np.uint8)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr(tuple(int(d) for d in image.shape)).encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def image_digests(images: np.ndarray) -> np.ndarray:
    """`image_digest` of every image of a batch, as a fixed-width unicode array."""
    return np.array([image_digest(image) for image in images], dtype="<U32")


def keyed_position(digest: str, seed: int) -> float:
    """Where an image falls in [0, 1) for the seed: a keyed hash (BLAKE2b, key = the seed) of
    its content digest. The split stage buckets images by it, so an image's split depends on
    its content and `data.seed` alone, never on which other images exist."""
    keyed = hashlib.blake2b(digest.encode(), digest_size=8, key=str(int(seed)).encode())
    return int.from_bytes(keyed.digest(), "big") / 2.0**64


def members_digest(digests: Iterable[str]) -> str:
    """One hash of a set of images (their sorted digests): equal sets, equal hash."""
    digest = hashlib.sha256()
    for item in sorted(set(digests)):
        digest.update(item.encode())
        digest.update(b"\n")
    return digest.hexdigest()


def write_manifest(path: Path, digests: Iterable[str]) -> None:
    """A training manifest: the sorted, distinct digests, one per line."""
    write_text(path, "".join(f"{digest}\n" for digest in sorted(set(map(str, digests)))))


def content_version(paths: Iterable[Path], length: int = 12) -> str:
    """A short hash of several files' contents, in path order: equal data, equal version.

    It is the SHA-256 of the files' bytes one after another (each file feeds the same digest),
    so the version of data/prepared stays what earlier runs recorded.
    """
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as handle:
            hashlib.file_digest(handle, lambda: digest)
    return digest.hexdigest()[:length]


# --- the split store --------------------------------------------------------------------------


@dataclass
class Split:
    """One split as stored on disk: `x` uint8 (N, H, W, C), `y` int64 (N,), class names and,
    when the split stage wrote them, each image's content digest (`image_digest`)."""

    x: np.ndarray
    y: np.ndarray
    classes: list[str]
    hashes: np.ndarray | None = None

    def digests(self) -> np.ndarray:
        """Each image's content digest: stored by the split stage, else computed."""
        return self.hashes if self.hashes is not None else image_digests(self.x)


def save_split(path: Path, split: Split) -> None:
    """Write a split atomically: a reader never sees a half-written .npz."""
    write_split(path, split.x, np.arange(len(split.x)), split.y, split.classes, split.hashes)


def write_split(
    path: Path,
    images: np.ndarray,
    rows: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    hashes: np.ndarray | None = None,
) -> None:
    """Write `images[rows]` with `labels` as a split .npz, atomically, a few MiB at a time.

    The file is the one np.savez writes (x, y, classes, and h: each image's content digest,
    computed here when not given; loadable without pickle), but the images are gathered chunk
    by chunk, so no second copy of the split is ever in memory.
    """
    computed: list[np.ndarray] = []
    shape = (len(rows), *images.shape[1:])
    row_bytes = max(1, int(np.prod(images.shape[1:])))
    step = max(1, _CHUNK_BYTES // row_bytes)
    with (
        atomic_write(path, "wb") as sink,
        zipfile.ZipFile(sink, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as out,
    ):
        with out.open("x.npy", "w", force_zip64=True) as stream:
            header = {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                "fortran_order": False,
                "shape": shape,
            }
            np.lib.format.write_array_header_2_0(stream, header)
            for start in range(0, len(rows), step):
                chunk = images[rows[start : start + step]]
                if hashes is None:
                    computed.append(image_digests(chunk))
                stream.write(np.ascontiguousarray(chunk, dtype=np.uint8).tobytes())
        if hashes is None:
            hashes = np.concatenate(computed) if computed else np.zeros(0, dtype="<U32")
        for name, value in (
            ("y", np.asarray(labels, dtype=np.int64)),
            ("h", np.asarray(hashes, dtype="<U32")),
            # Class names as a fixed-width unicode array, so loading never needs pickle.
            ("classes", np.array(classes, dtype=str)),
        ):
            with out.open(f"{name}.npy", "w") as stream:
                np.lib.format.write_array(stream, value, allow_pickle=False)


def load_split(path: Path) -> Split:
    """Read a split written by `write_split`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return Split(
                x=data["x"],
                y=data["y"],
                classes=[str(c) for c in data["classes"]],
                hashes=data["h"] if "h" in data.files else None,
            )
    except FileNotFoundError:
        raise DataError(f"{path} not found: run the split stage first (dvc repro)") from None
    except (KeyError, ValueError, OSError) as exc:
        raise DataError(
            f"{path} is not a valid split file ({exc}); rerun the split stage"
        ) from None


def split_paths(directory: Path) -> dict[str, Path]:
    """Where each split lives under a prepared-data folder."""
    return {name: Path(directory) / f"{name}.npz" for name in SPLITS}


def load_splits(directory: Path) -> dict[str, Split]:
    """All three splits under `directory`."""
    return {name: load_split(path) for name, path in split_paths(directory).items()}
