"""A training backup after every epoch, so a run killed mid-epoch resumes where it stopped.

Why not `keras.callbacks.BackupAndRestore`: in Keras 3.15 it does restore the weights, the
optimizer state (its `.weights.h5` carries `model.optimizer` too) and the epoch, but it
writes its files in place, so a kill during the save leaves a truncated `.weights.h5` (an
`OSError` at the next start) or new weights beside the old epoch number; it forgets the
history of the epochs before the crash; and it cannot tell a backup of another training
(other params, other data, the other phase of a fine-tuning) from this one's.

A backup folder holds complete snapshots only:

    <directory>/backup-000007/   weights.npz, optimizer.npz, random_state.npz, state.json
    <directory>/.staging-*/      a snapshot being written (left over by a kill: ignored)

Each snapshot is written into a staging folder, flushed to disk, and then renamed to a new
name in one `os.rename`, so a kill at any moment leaves the previous complete snapshot in
place; older snapshots are removed only after the new one is in place. state.json, written
last, records the SHA-256 of the other two files: `load` passes over a snapshot that does
not match them for an older one.

The optimizer's variables are saved in `optimizer.variables` order: `iteration`,
`learning_rate`, then its slots (Adam's momentum and velocity, RMSprop's velocity) in the
order of `model.trainable_variables`, which a functional model fixes by its layers. The
names differ between processes (auto-numbered layers), so a restore checks count and shapes.

Two-phase training (fine-tuning: phase "head", recompile, phase "tune") shares one backup
and one epoch axis. A snapshot records its phase, and the optimizer of each phase is a
different object (other trainable variables, another learning rate), so a snapshot must only
be restored into a model compiled for the same phase: when the state says "tune", the caller
skips the head phase (its history is in the snapshot), recompiles for "tune" and restores
then. `restore(model, phase=...)` refuses a snapshot of another phase.

Callbacks that decide when to stop or slow down (`training.schedules`: early stopping's best
epoch, its weights and its patience count; ReduceLROnPlateau's counters) implement
`Resumable`: their state is saved in state.json and their arrays (the best epoch's weights)
in `callback-<key>.npz`, hard-linked from the previous snapshot while they have not changed,
so a resumed run stops at the epoch an uninterrupted one stops at, and keeps the same epoch.

Everything here goes through Keras (`model.weights`, `Variable.numpy`, `Variable.assign`), so
it works on every backend.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.errors import PipelineError
from pipeline.store import atomic_directory, sha256_of
from pipeline.training.callback_state import Resumable, read_arrays, save_arrays

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "weights.npz"
OPTIMIZER_FILE = "optimizer.npz"
RANDOM_FILE = "random_state.npz"
"""The model's seed-generator states (dropout's, augmentation's), which model.weights leaves
out: restored, a resumed epoch draws the random masks the uninterrupted one would."""
STATE_FILE = "state.json"
_FORMAT = 3
"""3: weights as arrays in `model.weights` order (2: an .h5 file; older snapshots are not
resumed)."""
_SNAPSHOT_FILES = (WEIGHTS_FILE, OPTIMIZER_FILE, RANDOM_FILE)
_SNAPSHOT = re.compile(r"^backup-(\d{6,})$")
_STAGING_PREFIX = ".backup-"
"""What `store.atomic_directory` names a snapshot's staging folder (a leftover after a kill)."""


@dataclass
class BackupState:
    """What a snapshot says about the training it was taken from."""

    epoch: int
    """Epochs completed, counted globally across phases: the `initial_epoch` to resume at."""
    phase: str
    """The phase the snapshot was taken in ("train"; "head" or "tune" for fine-tuning)."""
    history: dict[str, list[float]] = field(default_factory=dict)
    """The per-epoch logs of every completed epoch, earlier phases included."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free JSON for the caller, e.g. the MLflow run id to continue."""
    callbacks: dict[str, dict] = field(default_factory=dict)
    """Each `Resumable` callback's state, by its `resume_key`."""


class TrainingBackup:
    """The backup of one training, in `directory` (used for nothing else), for the training
    described by `fingerprint` (a hash of params, data version, code): a backup with another
    fingerprint is stale, and is ignored and removed."""

    def __init__(self, directory: Path, fingerprint: str) -> None:
        self.directory = Path(directory)
        self.fingerprint = fingerprint
        self.meta: dict[str, Any] = {}
        """Saved with every snapshot by callbacks made without their own `meta`."""

    # --- reading ------------------------------------------------------------------------------

    def load(self) -> BackupState | None:
        """The state of the newest complete, intact snapshot of this training, or None.

        Damaged snapshots (a file missing or not matching its recorded checksum) are passed
        over for an older one; a snapshot of another training (another fingerprint) makes
        the whole backup stale: it is removed.
        """
        newest = self._newest()
        return newest[1] if newest is not None else None

    def restore(
        self,
        model: keras.Model,
        phase: str | None = None,
        resumables: list[Resumable] | tuple[Resumable, ...] = (),
    ) -> BackupState | None:
        """Load the snapshot that `load` returns, weights and optimizer variables (iterations,
        moments, learning rate), into the compiled `model`, and return its state; None,
        leaving the model untouched, when there is no backup of this training, or when
        `phase` is given and the snapshot belongs to another phase.

        The optimizer is built here if it is not yet. A snapshot that does not fit the model
        (another architecture, or another phase's trainable variables) raises PipelineError.
        Each of `resumables` gets the state its key has in the snapshot.
        """
        if model.optimizer is None:
            raise ValueError("restore needs a compiled model: call model.compile first")
        newest = self._newest()
        if newest is None:
            return None
        snapshot, state = newest
        if phase is not None and state.phase != phase:
            # Expected in every fine-tuning: phase "tune" starts beside the head's snapshots.
            logger.debug("training backup is of phase %r, not %r: not restored", state.phase, phase)
            return None
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        _restore_snapshot(model, snapshot)
        for resumable in resumables:
            if resumable.resume_key in state.callbacks:
                resumable.set_resume_state(
                    state.callbacks[resumable.resume_key],
                    read_arrays(snapshot, resumable.resume_key),
                )
        logger.info(
            "restored %s: phase %s, %d epochs done, optimizer step %d",
            snapshot,
            state.phase,
            state.epoch,
            int(keras.ops.convert_to_numpy(model.optimizer.iterations)),
        )
        return state

    # --- writing ------------------------------------------------------------------------------

    def save(
        self,
        model: keras.Model,
        state: BackupState,
        resumables: list[Resumable] | tuple[Resumable, ...] = (),
    ) -> Path:
        """Write a snapshot of `model` (weights, built optimizer), `state` and the state of
        `resumables`, atomically; remove the older ones. Returns the snapshot's folder."""
        if model.optimizer is None or not model.optimizer.built:
            raise ValueError("save needs a compiled model whose optimizer is built")
        previous = self._snapshots()
        target = self.directory / f"backup-{self._next_number():06d}"
        # One staging folder that fsyncs: a snapshot is whole after a power cut, or absent.
        with atomic_directory(target, durable=True) as staging:
            # Arrays in `model.weights` order, not save_weights' .h5: that took 0.4 s per epoch
            # for a 141k-parameter model (h5py writes each variable), this about 10 ms.
            np.savez(staging / WEIGHTS_FILE, *[variable.numpy() for variable in model.weights])
            values = [variable.numpy() for variable in model.optimizer.variables]
            np.savez(staging / OPTIMIZER_FILE, *values)
            np.savez(staging / RANDOM_FILE, *[state.numpy() for state in random_states(model)])
            files = list(_SNAPSHOT_FILES)
            for resumable in resumables:
                state.callbacks[resumable.resume_key] = resumable.get_resume_state()
                name = save_arrays(resumable, staging, *_previous_callbacks(previous))
                if name is not None:
                    files.append(name)
            payload = {
                "format": _FORMAT,
                "fingerprint": self.fingerprint,
                **asdict(state),
                # Checked by `load`, so a damaged file is found before anything is restored.
                "sha256": {name: sha256_of(staging / name) for name in files},
                # For a person reading the file; matching is by position and shape, since
                # auto-generated layer names differ between processes.
                "optimizer_variables": [variable.path for variable in model.optimizer.variables],
            }
            # state.json is written last: a snapshot with one is complete.
            (staging / STATE_FILE).write_text(json.dumps(payload, indent=1) + "\n")
        for entry in self.directory.iterdir():
            if entry != target and (_SNAPSHOT.match(entry.name) or _is_staging(entry)):
                shutil.rmtree(entry, ignore_errors=True)
        return target

    def callback(
        self,
        phase: str,
        history_so_far: dict[str, list[float]] | None = None,
        meta: dict[str, Any] | None = None,
        resumables: list[Resumable] | tuple[Resumable, ...] = (),
    ) -> keras.callbacks.Callback:
        """A callback that saves a snapshot after every finished epoch of `model.fit`.

        `history_so_far` holds the epochs before this `fit` (earlier phases, and the epochs
        restored from a backup); each epoch's logs are appended to it. The recorded epoch is
        Keras' global epoch index + 1, so resumed fits must pass `initial_epoch=state.epoch`.
        `meta` defaults to this backup's `meta` at the time of each save. The state of each
        of `resumables` is saved too: they must come before this callback in `fit`'s list, so
        that their state includes the epoch just ended.
        """
        return _BackupCallback(self, phase, history_so_far, meta, tuple(resumables))

    def clear(self) -> None:
        """Remove the backup: called once training has succeeded and its outputs are saved."""
        shutil.rmtree(self.directory, ignore_errors=True)

    # --- helpers ------------------------------------------------------------------------------

    def _snapshots(self) -> list[Path]:
        """The snapshot folders (complete, once renamed from staging), newest first."""
        if not self.directory.is_dir():
            return []
        found = [
            (int(match.group(1)), entry)
            for entry in self.directory.iterdir()
            if (match := _SNAPSHOT.match(entry.name)) and entry.is_dir()
        ]
        return [entry for _, entry in sorted(found, reverse=True)]

    def _newest(self) -> tuple[Path, BackupState] | None:
        """The newest intact snapshot of this training and its state; clears a stale backup."""
        for snapshot in self._snapshots():
            recorded = _read_state(snapshot)
            if recorded is None:
                logger.warning("training backup %s is incomplete or damaged: skipped", snapshot)
                continue
            fingerprint, state = recorded
            if fingerprint != self.fingerprint:
                logger.warning(
                    "training backup in %s is of another training (params, data or code "
                    "changed): removed, training starts over",
                    self.directory,
                )
                self.clear()
                return None
            return snapshot, state
        return None

    def _next_number(self) -> int:
        snapshots = self._snapshots()
        return int(_SNAPSHOT.match(snapshots[0].name).group(1)) + 1 if snapshots else 1


class _BackupCallback(keras.callbacks.Callback):
    """Saves a `TrainingBackup` snapshot at the end of every epoch."""

    def __init__(
        self,
        backup: TrainingBackup,
        phase: str,
        history_so_far: dict[str, list[float]] | None,
        meta: dict[str, Any] | None,
        resumables: tuple[Resumable, ...] = (),
    ) -> None:
        super().__init__()
        self.backup = backup
        self.resumables = resumables
        self.phase = phase
        self.history = {
            key: [float(v) for v in values] for key, values in (history_so_far or {}).items()
        }
        self.meta = meta

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        for key, value in (logs or {}).items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue  # Not a per-epoch number: nothing to plot or compare.
            self.history.setdefault(key, []).append(number)
        state = BackupState(
            epoch=epoch + 1,
            phase=self.phase,
            history={key: list(values) for key, values in self.history.items()},
            meta=dict(self.meta if self.meta is not None else self.backup.meta),
        )
        snapshot = self.backup.save(self.model, state, self.resumables)
        logger.debug("training backup after epoch %d: %s", epoch + 1, snapshot)


def _restore_snapshot(model: keras.Model, snapshot: Path) -> None:
    """Check the snapshot against `model`, then assign its weights, optimizer variables and
    random-number states."""
    fix = f"Delete {snapshot.parent} to train from the start."
    parts = (
        (WEIGHTS_FILE, model.weights, "weights"),
        (OPTIMIZER_FILE, model.optimizer.variables, "optimizer variables"),
        (RANDOM_FILE, random_states(model), "random-number states"),
    )
    checked = []
    for name, variables, what in parts:
        try:
            with np.load(snapshot / name) as archive:
                values = [archive[f"arr_{index}"] for index in range(len(archive.files))]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            raise PipelineError(
                f"the training backup {snapshot} cannot be read ({exc}). {fix}"
            ) from exc
        if [tuple(value.shape) for value in values] != [tuple(v.shape) for v in variables]:
            raise PipelineError(
                f"the training backup in {snapshot.parent} does not fit this model: it holds "
                f"{len(values)} {what}, this model {len(variables)}, or their shapes differ (a "
                f"backup of another model, or of another phase's trainable layers). {fix}"
            )
        checked.append((variables, values))
    # Only once every part fits: a refused snapshot leaves the model untouched.
    for variables, values in checked:
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)


def random_states(model: keras.Model) -> list:
    """The state variables of the model's seed generators (one per dropout or random
    augmentation layer), in the model's own order."""
    return [
        variable for variable in model.variables if variable.path.endswith("seed_generator_state")
    ]


def _read_state(snapshot: Path) -> tuple[str, BackupState] | None:
    """(fingerprint, state) of a complete, intact snapshot; None when a file is missing or
    does not match its checksum."""
    try:
        payload = json.loads((snapshot / STATE_FILE).read_text())
        if payload.get("format") != _FORMAT:
            return None
        if not set(_SNAPSHOT_FILES) <= set(payload["sha256"]):
            return None
        for name, digest in payload["sha256"].items():
            if sha256_of(snapshot / name) != digest:
                return None
        state = BackupState(
            epoch=int(payload["epoch"]),
            phase=str(payload["phase"]),
            history={
                str(key): [float(v) for v in values] for key, values in payload["history"].items()
            },
            meta=dict(payload["meta"]),
            callbacks={
                str(key): dict(value) for key, value in payload.get("callbacks", {}).items()
            },
        )
        return str(payload["fingerprint"]), state
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _previous_callbacks(snapshots: list[Path]) -> tuple[Path | None, dict[str, dict]]:
    """The newest snapshot and its callbacks' recorded state (written by this process, or
    verified when it was loaded), for `save_arrays` to link what has not changed."""
    if not snapshots:
        return None, {}
    try:
        return snapshots[0], dict(json.loads((snapshots[0] / STATE_FILE).read_text())["callbacks"])
    except (OSError, ValueError, KeyError, TypeError):
        return snapshots[0], {}


def _is_staging(entry: Path) -> bool:
    return entry.name.startswith(_STAGING_PREFIX)
