"""The state of callbacks that a training backup keeps (`training.backup`): early stopping's best
epoch and its weights, ReduceLROnPlateau's counters. JSON state goes into the snapshot's
state.json; arrays into `callback-<key>.npz`, hard-linked from the previous snapshot while
they have not changed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np


class Resumable(Protocol):
    """A callback whose state a snapshot keeps: JSON state and, optionally, arrays."""

    resume_key: str

    def get_resume_state(self) -> dict:
        """JSON state; an `arrays_version` key, when present, says the arrays are unchanged
        while it is (the backup then links them instead of writing them again)."""
        ...

    def get_resume_arrays(self) -> list[np.ndarray] | None: ...

    def set_resume_state(self, state: dict, arrays: list[np.ndarray] | None) -> None:
        """Take a restored state, applied at the next `on_train_begin`."""
        ...


def arrays_file(key: str) -> str:
    """The snapshot file of a resumable callback's arrays."""
    return f"callback-{key}.npz"


def save_arrays(
    resumable: Resumable, staging: Path, previous: Path | None, recorded: dict[str, dict]
) -> str | None:
    """Put a resumable's arrays into the snapshot being written: a hard link to the previous
    snapshot's file when its `arrays_version` has not changed (the best epoch's weights,
    unchanged for most epochs, cost nothing), else written. Returns the file's name."""
    arrays = resumable.get_resume_arrays()
    if arrays is None:
        return None
    name = arrays_file(resumable.resume_key)
    version = resumable.get_resume_state().get("arrays_version")
    unchanged = recorded.get(resumable.resume_key, {}).get("arrays_version") == version
    if previous is not None and version is not None and unchanged and (previous / name).is_file():
        try:
            os.link(previous / name, staging / name)
            return name
        except OSError:
            pass  # A file system without hard links: write it again.
    np.savez(staging / name, *arrays)
    return name


def read_arrays(snapshot: Path, key: str) -> list[np.ndarray] | None:
    """A resumable callback's arrays in `snapshot`, or None when it saved none."""
    path = snapshot / arrays_file(key)
    if not path.is_file():
        return None
    with np.load(path) as archive:
        return [archive[f"arr_{index}"] for index in range(len(archive.files))]
