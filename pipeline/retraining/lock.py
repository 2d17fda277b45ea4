"""The retraining lock: one cycle at a time per project.

A second cycle exits at once, naming the holder; a lock left by a killed cycle is taken over
(the kernel drops a dead process's `flock`, so a lock file that can be locked is stale
whatever it says).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

STATE_DIR = ".pipeline"
"""The project's folder of retraining state: the lock, the previous data for drift."""
LOCK_FILE = f"{STATE_DIR}/retrain.lock"
LOCK_HELD_STATUS = 75  # EX_TEMPFAIL: try again later; systemd units list it as success


class LockHeld(PipelineError):
    """Another cycle holds the lock."""


@contextlib.contextmanager
def cycle_lock(path: Path) -> Iterator[dict]:
    """Hold the project's retraining lock; yield {"holder": ..., "took_over": previous|None}.

    The file holds the holder's pid, host and start time, for the message a second cycle
    prints. Raises LockHeld when another live process holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(descriptor)
        os.close(descriptor)
        raise LockHeld(
            "another retraining cycle is running: pid {pid} on host {host}, started {started} "
            "(lock file {path}); this one exits without doing anything".format(
                path=path, **{"pid": "?", "host": "?", "started": "?", **holder}
            )
        ) from None
    previous = _read_holder(descriptor) or None
    if previous:
        logger.warning(
            "took over a stale lock: the cycle of pid %s on host %s, started %s, is gone",
            previous.get("pid"),
            previous.get("host"),
            previous.get("started"),
        )
    holder = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(holder).encode(), 0)
    os.fsync(descriptor)
    try:
        yield {"holder": holder, "took_over": previous}
    finally:
        os.ftruncate(descriptor, 0)
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        os.close(descriptor)


def _read_holder(descriptor: int) -> dict:
    raw = os.pread(descriptor, 4096, 0)
    try:
        holder = json.loads(raw) if raw.strip() else {}
    except ValueError:
        return {"pid": "?", "host": "?", "started": "? (unreadable lock file)"}
    return holder if isinstance(holder, dict) else {}
