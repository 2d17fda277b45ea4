"""The one way a retraining cycle runs a command (DVC, a stage): in the project, with this
environment's Python first on PATH, its output captured or shown as it comes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

SHOWN_TAIL_LINES = 25
"""Lines of a shown command's output kept for the error message: where DVC and the stages say
what went wrong."""


@dataclass(frozen=True)
class CommandResult:
    status: int
    stdout: str
    """The whole standard output; for a shown command, the last lines of both streams."""
    stderr: str
    """The whole standard error; empty for a shown command (it is in `stdout`)."""


def run_command(
    command: Sequence[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    show: bool = False,
    new_session: bool = False,
) -> CommandResult:
    """Run `command` in `cwd` with `env` added to this process's environment.

    `new_session` starts it in a session of its own, so a Ctrl-C at the terminal reaches this
    process only (which decides what to stop), never the command half-way through.

    `show` streams its output (both streams) to standard error as it comes, for the long
    `dvc repro`, keeping only the last SHOWN_TAIL_LINES; otherwise both streams are captured.
    """
    # DVC runs each stage's `python -m ...` with the first python on PATH: make it this
    # environment's, even under cron or systemd, whose PATH knows no virtualenv.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    environment = {**os.environ, "PATH": path, **(env or {})}
    if not show:
        result = subprocess.run(
            list(command),
            cwd=cwd,
            env=environment,
            capture_output=True,
            text=True,
            start_new_session=new_session,
        )
        return CommandResult(result.returncode, result.stdout, result.stderr)
    tail: deque[str] = deque(maxlen=SHOWN_TAIL_LINES)
    with subprocess.Popen(
        list(command),
        cwd=cwd,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    ) as process:
        for line in process.stdout:
            sys.stderr.write(line)
            tail.append(line.rstrip())
    return CommandResult(process.returncode, "\n".join(tail), "")
