"""The DVC side of a search: each trial a named experiment run by DVC's own queue.

`dvc exp run --queue -n <name> -S key=value ...` stashes the experiment, `dvc queue start -j J`
spawns J detached workers that run the queue in temporary copies of the project, and the
finished experiments stay in the repository as DVC experiments (`dvc exp show` lists them,
`dvc exp apply <name>` brings one into the workspace). What this module reads back is DVC's
own: `dvc queue status` while waiting, `dvc exp show --json` for each experiment's state and
metrics, `dvc queue logs <name>` for why one failed.

The workers stop by themselves about ten seconds after the queue runs dry, and their shutdown
briefly respawns a detached worker process or two; `stop_workers` asks them to stop (`dvc queue
stop`) and waits until no worker process of this project is left, so a search leaves none
behind, when it ends and when it is interrupted.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pipeline.errors import PipelineError
from pipeline.retraining.commands import CommandResult, run_command

logger = logging.getLogger(__name__)

State = Literal["queued", "running", "success", "failed", "missing"]
DONE_STATES = ("success", "failed", "missing")
LOCK_FILE = ".dvc/tmp/pipeline-tune.lock"
"""One search per project at a time: the queue's stash works in the workspace."""
POLL_SECONDS = 5.0
WORKER_QUIET_SECONDS = 3.0
"""How long no worker process may be seen before the queue counts as stopped (their shutdown
respawns a short-lived one)."""
REASON_LINES = 3


class QueueError(PipelineError):
    """DVC refused to queue or start an experiment; the message holds DVC's words."""


@dataclass(frozen=True)
class Outcome:
    """What became of one trial's experiment."""

    name: str
    state: State
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    """{metrics file: its content}, only for a successful experiment."""
    reason: str | None = None
    rev: str | None = None


class Dvc:
    """DVC commands in one project, with this environment's Python and `dvc` first on PATH
    (the queue's workers are spawned as `dvc ...`)."""

    def __init__(self, root: Path, command: Sequence[str] | None = None) -> None:
        self.root = root.resolve()
        self.command = list(command or [sys.executable, "-m", "dvc"])

    def run(self, *args: str) -> CommandResult:
        logger.debug("dvc %s", " ".join(args))
        return run_command([*self.command, *args], self.root)

    def read(self, *args: str, attempts: int = 3) -> CommandResult:
        """A read-only DVC command, tried again when it fails (a queue worker holding the
        repository's lock as it collects an experiment)."""
        for attempt in range(attempts):
            result = self.run(*args)
            if result.status == 0 or attempt == attempts - 1:
                return result
            time.sleep(2.0 * (attempt + 1))
        raise AssertionError("unreachable")

    # -- queueing and running --

    def queue(self, name: str, set_arguments: Sequence[str]) -> None:
        """Queue experiment `name` with `-S` arguments; raise QueueError with DVC's message.

        DVC stashes and restores the workspace (params.yaml) to queue an experiment: Ctrl-C or
        SIGTERM must not cut that short, so they wait until the command is done (it takes a
        second or two), and it runs in a session of its own."""
        with _signals_deferred():
            logger.debug("dvc exp run --queue -n %s", name)
            result = run_command(
                [*self.command, "exp", "run", "--queue", "-n", name, *set_arguments],
                self.root,
                new_session=True,
            )
        if result.status != 0:
            raise QueueError(f"dvc exp run --queue -n {name}: {_last_lines(result)}")

    def start(self, jobs: int) -> None:
        result = self.run("queue", "start", "-j", str(jobs))
        if result.status != 0:
            raise QueueError(f"dvc queue start -j {jobs}: {_last_lines(result)}")

    def queue_status(self) -> dict[str, str]:
        """{experiment name: Queued | Running | Success | Failed} from `dvc queue status`."""
        result = self.read("queue", "status")
        if result.status != 0:
            raise QueueError(f"dvc queue status: {_last_lines(result)}")
        return parse_queue_status(result.stdout)

    def wait(
        self,
        names: Sequence[str],
        jobs: int,
        on_change: Callable[[str, str], None] | None = None,
        poll: float = POLL_SECONDS,
    ) -> None:
        """Until every experiment of `names` has finished (or left the queue). A name still
        queued while no worker runs (one stopped as it was queued) gets workers again."""
        seen: dict[str, str] = {}
        while True:
            status = self.queue_status()
            for name in names:
                now = status.get(name, "Missing")
                if seen.get(name) != now and on_change is not None:
                    on_change(name, now)
                seen[name] = now
            if all(seen[name] not in ("Queued", "Running") for name in names):
                return
            if any(seen[name] == "Queued" for name in names) and not self.live_workers():
                self.start(jobs)
            time.sleep(poll)

    def cancel(self, names: Sequence[str], timeout: float = 60.0) -> None:
        """Kill the running experiments of `names` and drop the queued ones (Ctrl-C), until
        DVC's queue holds none of them (a worker may take a queued one as it is dropped)."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.queue_status()
            running = [name for name in names if status.get(name) == "Running"]
            queued = [name for name in names if status.get(name) == "Queued"]
            if not (running or queued):
                return
            if time.monotonic() > deadline:
                logger.warning("DVC's queue still holds %s", ", ".join(running + queued))
                return
            if running:
                self.run("queue", "kill", "--force", *running)
            if queued:
                self.run("queue", "remove", *queued)
            time.sleep(1.0)

    # -- the queue's workers --

    def node_prefix(self) -> str:
        """The start of the Celery node names of this project's workers (DVC names them
        dvc-exp-<first 6 hex digits of sha256(<repo>/.dvc/tmp/exps/celery)>-<n>@localhost)."""
        celery_dir = os.path.join(self.root, ".dvc", "tmp", "exps", "celery")
        return f"dvc-exp-{hashlib.sha256(celery_dir.encode()).hexdigest()[:6]}-"

    def live_workers(self) -> list[int]:
        """The pids of this project's queue worker processes now running."""
        return queue_worker_pids(self.node_prefix())

    def stop_workers(self, timeout: float = 60.0) -> list[int]:
        """`dvc queue stop`, then wait until no worker of this project is left; those still
        there after `timeout` are terminated. Returns the pids that had to be terminated."""
        self.run("queue", "stop")
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            if self.live_workers():
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= WORKER_QUIET_SECONDS:
                return []
            time.sleep(0.5)
        stragglers = self.live_workers()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in stragglers:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            time.sleep(2.0)
            stragglers = [pid for pid in stragglers if _alive(pid)]
            if not stragglers:
                break
        return stragglers or []

    # -- reading experiments back --

    def outcomes(self, names: Iterable[str]) -> dict[str, Outcome]:
        """Each named experiment's state and, when it succeeded, its metrics; a name DVC
        knows nothing of is `missing`. Experiments of earlier baselines are looked for
        with --all-commits only when the current one lacks some."""
        wanted = set(names)
        found = collect_outcomes(self._show(), wanted)
        if wanted - set(found):
            found.update(collect_outcomes(self._show("--all-commits"), wanted - set(found)))
        for name in wanted - set(found):
            found[name] = Outcome(name, "missing", reason="DVC has no experiment of that name")
        for name, outcome in found.items():
            if outcome.state == "failed" and not outcome.reason:
                found[name] = Outcome(name, "failed", reason=self.failure_reason(name))
        return found

    def _show(self, *extra: str) -> list:
        result = self.read("exp", "show", "--json", *extra)
        if result.status != 0:
            raise QueueError(f"dvc exp show --json: {_last_lines(result)}")
        try:
            return json.loads(result.stdout or "[]")
        except json.JSONDecodeError as exc:
            raise QueueError(f"dvc exp show --json printed no JSON: {exc}") from None

    def failure_reason(self, name: str) -> str:
        """The last error lines of `dvc queue logs <name>`."""
        result = self.run("queue", "logs", name)
        text = result.stdout if result.status == 0 else result.stderr or result.stdout
        return failure_reason_from_log(text) or "the experiment failed (no log)"


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT and SIGTERM stay pending until the block ends, then arrive as usual."""
    deferred = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, deferred)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def parse_queue_status(text: str) -> dict[str, str]:
    """{name: status} from the table `dvc queue status` prints: columns Task, Name, Created and
    Status, the name read between the header's Name and Created (an unnamed task has none)."""
    statuses: dict[str, str] = {}
    lines = text.splitlines()
    header = next((line for line in lines if line.split()[:2] == ["Task", "Name"]), None)
    if header is None:
        return statuses
    start, end = header.index("Name"), header.index("Created")
    for line in lines[lines.index(header) + 1 :]:
        words = line.split()
        if not words or line.startswith("Worker status"):
            continue
        name = line[start:end].strip()
        if name and words[-1] in ("Queued", "Running", "Success", "Failed"):
            statuses[name] = words[-1]
    return statuses


def collect_outcomes(shown: list, names: set[str]) -> dict[str, Outcome]:
    """The outcomes of `names` in `dvc exp show --json`'s output (DVC 3: a list of baselines,
    each with `experiments`, each a named range of `revs` and its `executor` state).

    A failed experiment's `data` holds its baseline's metrics (its workspace at the start), so
    metrics are read only from an experiment whose executor succeeded and that has no error."""
    found: dict[str, Outcome] = {}
    for baseline in shown or []:
        for experiment in baseline.get("experiments") or []:
            revs = experiment.get("revs") or []
            name = experiment.get("name") or (revs[0].get("name") if revs else None)
            if name not in names or not revs:
                continue
            head = revs[0]
            executor = experiment.get("executor") or {}
            state = executor.get("state") or ("failed" if head.get("error") else "success")
            if state == "success" and head.get("error"):
                state = "failed"
            if state == "success":
                metrics = {
                    path: (entry or {}).get("data") or {}
                    for path, entry in ((head.get("data") or {}).get("metrics") or {}).items()
                }
                found[name] = Outcome(name, "success", metrics, rev=head.get("rev"))
            else:
                found[name] = Outcome(name, state, rev=head.get("rev"))
    return found


_ERROR_LINE = re.compile(r"^(ERROR|error in|Error|\w+Error|\w+Exception)\b")


def failure_reason_from_log(text: str) -> str:
    """Why an experiment failed, from its log: the line before DVC's first ERROR (the stage's
    own last word) and DVC's distinct error lines, else the log's last line."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    first = next((i for i, line in enumerate(lines) if _ERROR_LINE.match(line)), None)
    if first is None:
        return " | ".join(lines[-1:])[:1000]
    chosen: list[str] = []
    if first > 0 and not lines[first - 1].startswith(("Running stage", ">")):
        chosen.append(lines[first - 1])
    for line in lines[first:]:
        if _ERROR_LINE.match(line) and line not in chosen:
            chosen.append(line)
    return " | ".join(chosen[:1] + chosen[1:][-REASON_LINES:])[:1000]


def queue_worker_pids(node_prefix: str) -> list[int]:
    """The pids of `dvc exp queue-worker <node_prefix>...` processes (Linux /proc)."""
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            arguments = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [word.decode(errors="replace") for word in arguments]
        if "queue-worker" in words and any(word.startswith(node_prefix) for word in words):
            pid = int(entry.name)
            if pid != os.getpid() and _alive(pid):
                pids.append(pid)
    return sorted(pids)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _last_lines(result: CommandResult, count: int = 4) -> str:
    text = (result.stderr or "") + (result.stdout or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or f"exit status {result.status}"


@contextlib.contextmanager
def project_lock(root: Path) -> Iterator[None]:
    """Hold the project's tune lock: a second `pipeline tune` in the same project would stash
    its experiments through the same workspace; each worker needs a clone of its own."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 200, 0).decode(errors="replace").strip() or "?"
            raise PipelineError(
                f"another `pipeline tune` runs in {root} ({holder}); run each worker in a "
                "clone of its own (git clone + dvc pull), sharing the study through --storage"
            ) from None
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)
