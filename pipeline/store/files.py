"""Atomic writes, JSON and text files, file hashes, and the names of the files that stages pass
between them (defined once: the stage that writes a folder and those that read it share them)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from pipeline.errors import PipelineError

SPLITS: tuple[str, ...] = ("train", "val", "test")
PLAN_FILE = "split.json"
"""Written beside the splits: counts and the fractions the split aimed at."""
SOURCES_COLUMNS: tuple[str, ...] = ("digest", "split", "path")
"""The split stage's table of where each stored image came from (its file, for a folder): what
the label_issues stage reads to name the files."""
DROPPED_CONFLICTS_KEY = "label_conflicts_dropped"
"""split.json's list of the identical images under several classes that
`validate.label_conflicts: drop` left out of the store (the label_issues stage lists them)."""
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
        # mkstemp makes the file private (0600); the output gets the mode a plain open gives
        # it, so a server or a teammate running as another user can read what was written.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _umask() -> int:
    """The process's umask, read without changing it (os.umask sets it too, which would race
    with other threads creating files); 0o022 where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


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
    # mkdtemp makes the folder private (0700); the output gets the mode a plain mkdir gives it,
    # so a report or model folder stays readable to the other users it was readable to before.
    staging.chmod(0o777 & ~_umask())
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


_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """`value` for a CSV cell that a spreadsheet shows as text: a string that begins with `=`,
    `+`, `-`, `@`, a tab or a carriage return (a file named `=HYPERLINK(...).png`) gets a leading
    apostrophe (OWASP's CSV-injection advice), so Excel or LibreOffice never runs it as a
    formula. Numbers pass unchanged, negative ones included."""
    if isinstance(value, str) and value.startswith(_FORMULA_STARTS):
        return "'" + value
    return value


def write_csv(path: Path, header: Iterable[str], rows: Iterable[Iterable[Any]]) -> None:
    """Write a CSV atomically, every cell through `spreadsheet_safe`."""
    import csv

    with atomic_write(path) as stream:
        writer = csv.writer(stream, lineterminator="\n")
        writer.writerow([spreadsheet_safe(cell) for cell in header])
        writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)


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
