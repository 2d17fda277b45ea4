"""A training killed as an epoch begins, for the tests of resuming from a backup."""

from __future__ import annotations

import keras


class Killed(Exception):
    """What CrashAt raises: stands in for the process being killed."""


class CrashAt(keras.callbacks.Callback):
    """Dies as epoch `epoch` (0-based) begins: the backup holds the epoch before."""

    def __init__(self, epoch: int) -> None:
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        if epoch == self.epoch:
            raise Killed
