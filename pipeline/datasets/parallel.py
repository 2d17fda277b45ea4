"""Decoding a dataset's image files in several processes (`data.workers`), for the split stage.

Pillow's decoders release the GIL, but what surrounds them (opening a file, parsing its
header, converting) holds it, and one process hashes in one thread: threads of one process stop
scaling once that share of the work fills a core; processes do not. Each worker decodes a task
of consecutive rows of the spool, writes their pixels straight into the spool file at their rows
(no pixels cross a pipe), and sends back only their digests and the reasons of the files it
could not decode. The stage collects the tasks in order, at most two per worker in flight, so
memory does not grow with the dataset, and the spool, the digests and the list of bad files are
those one process makes: the same `decode_image` and `image_digests`, the same rows.

Workers start through multiprocessing's forkserver (spawn where there is none), never forked
from the stage itself, which may hold threads. The forkserver imports this module and the main
module's imports once, and each worker is forked from it ready: none imports TensorFlow, Keras
or MLflow. Workers ignore Ctrl-C (the stage stops them once their task is done, and its store is
written atomically), and exit by themselves when the stage dies (a pipe they watch closes).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal

import numpy as np

from pipeline.datasets.images import BadImage, decode_image
from pipeline.datasets.readers.base import ImageFiles, ReadOptions
from pipeline.errors import DataError
from pipeline.store.hashing import image_digests

TASK_BYTES = 8 << 20
"""Decoded bytes of one worker's task at most (a task holds them once, in its worker)."""
TASK_ROWS = 32
"""Images of one task at most: small enough that workers finish together, large enough that
the stage's bookkeeping stays a small share of the work."""
IN_FLIGHT_PER_WORKER = 2
"""Tasks handed out per worker ahead of the stage's collection: one decoding, one waiting."""


def resolve_workers(setting: int | Literal["auto"]) -> int:
    """`data.workers` as a count of processes. "auto" is 1: the stage's own decoding threads
    (pipeline.datasets.images.decode_many) already keep every core busy, since Pillow releases
    the GIL, and on 2 cores two processes measured slower (bench/bench_scale.py: 0.76x, 4,000
    images at 224 px). Processes are for many cores, where the one process's hashing and
    bookkeeping would bound it: set the count."""
    return 1 if setting == "auto" else int(setting)


def task_rows(image_shape: Sequence[int]) -> int:
    """Images per task for images of `image_shape`."""
    return max(1, min(TASK_ROWS, TASK_BYTES // max(1, int(np.prod(image_shape)))))


@dataclass(frozen=True)
class SpoolJob:
    """What every task of one decoding shares, sent once to each worker: the spool file, the
    offset of its row 0, the shape of a row and how files are decoded."""

    spool: str
    offset: int
    image_shape: tuple[int, int, int]
    options: ReadOptions


def decode_files_to_spool(
    files: ImageFiles,
    chosen: np.ndarray,
    job: SpoolJob,
    workers: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[int, str], np.ndarray]:
    """Decode the files at `chosen` in `workers` processes into the spool of `job` (row i:
    image chosen[i]; the file exists at its full size, rows of files that fail stay zero);
    return {row: reason} of those that failed and every row's digest (empty for failed rows),
    as one process would."""
    digests = np.zeros(len(chosen), dtype="<U32")
    bad: dict[int, str] = {}
    step = task_rows(job.image_shape)
    workers = max(1, min(workers, -(-len(chosen) // step)))
    pending: deque[tuple[int, list[str], Future]] = deque()

    def collect() -> None:
        start, paths, future = pending.popleft()
        failed, found = _result(future, paths)
        digests[start : start + len(found)] = found
        bad.update((start + row, reason) for row, reason in failed.items())
        if progress is not None:
            progress(len(paths))

    with worker_pool(workers, job) as pool:
        for start, paths in _tasks(files, chosen, step):
            pending.append((start, paths, pool.submit(_decode_task, start, paths)))
            if len(pending) >= IN_FLIGHT_PER_WORKER * workers:
                collect()
        while pending:
            collect()
    return dict(sorted(bad.items())), digests


def _tasks(files: ImageFiles, chosen: np.ndarray, step: int) -> Iterator[tuple[int, list[str]]]:
    for start in range(0, len(chosen), step):
        yield start, [str(files.paths[int(row)]) for row in chosen[start : start + step]]


def _result(future: Future, paths: list[str]) -> tuple[dict[int, str], list[str]]:
    try:
        return future.result()
    except BrokenProcessPool:
        shown = paths[0] if len(paths) == 1 else f"{paths[0]} ... {paths[-1]}"
        raise DataError(
            f"a process decoding images stopped abruptly (killed, or out of memory) while "
            f"decoding {len(paths)} file(s): {shown}. Rerun the split stage; if it stops again, "
            "set data.workers: 1 to decode in the stage's own process, where a file that "
            "crashes the decoder shows its error"
        ) from None


@contextmanager
def worker_pool(workers: int, job: SpoolJob) -> Iterator[ProcessPoolExecutor]:
    """`workers` decoding processes for `job`; on the way out (an error, Ctrl-C included) the
    tasks not started are cancelled and the pool waits for those running, so no process
    outlives the stage's decoding."""
    context = _start_context()
    watched, held = context.Pipe(duplex=False)
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(job, watched)
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        held.close()
        watched.close()


def _start_context() -> multiprocessing.context.BaseContext:
    """The forkserver, with this module and the main module's imports done once, or spawn."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *_main_imports()])
    return context


def _main_imports() -> list[str]:
    """The modules the main module took its names from, when each worker runs it again (as
    __mp_main__, as multiprocessing does): imported in the forkserver, that run costs
    milliseconds instead of a second per worker. Not the main module itself: runpy warns when
    the module it runs is already imported."""
    main = sys.modules.get("__main__")
    name = getattr(getattr(main, "__spec__", None), "name", None)
    rerun = not name.endswith("__main__") if name else getattr(main, "__file__", None)
    if main is None or not rerun:
        return []
    modules = {
        value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
        for value in vars(main).values()
    }
    return sorted(
        module
        for module in modules
        if isinstance(module, str) and module not in (name, __name__, "__main__", "__mp_main__")
    )


_job: SpoolJob | None = None
_spool: int | None = None


def _start_worker(job: SpoolJob, watched) -> None:
    """A worker's start: Ctrl-C is the stage's to handle; the spool is opened once; a thread
    ends the worker when the stage dies (the pipe's other end closes)."""
    global _job, _spool
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _job = job
    _spool = os.open(job.spool, os.O_WRONLY)
    threading.Thread(target=_exit_with_stage, args=(watched,), daemon=True).start()


def _exit_with_stage(watched) -> None:
    # Nothing is ever sent: recv returns only when the stage's end closes, that is when it dies.
    with suppress(EOFError, OSError):
        watched.recv_bytes()
    os._exit(1)


def _decode_task(start: int, paths: list[str]) -> tuple[dict[int, str], list[str]]:
    """Decode `paths` into rows start.. of the spool: ({row in task: reason}, digests)."""
    assert _job is not None and _spool is not None, "a task ran outside a decoding worker"
    job = _job
    size, resize, channels = job.options.image_size, job.options.resize, job.image_shape[-1]
    buffer = np.zeros((len(paths), *job.image_shape), dtype=np.uint8)
    failed: dict[int, str] = {}
    for row, path in enumerate(paths):
        try:
            buffer[row] = decode_image(Path(path), size, resize, channels, job.options.max_pixels)
        except BadImage as reason:
            failed[row] = str(reason)
    _write_at(_spool, memoryview(buffer).cast("B"), job.offset + start * buffer[0].nbytes)
    digests = image_digests(buffer).tolist()
    for row in failed:
        digests[row] = ""
    return failed, digests


def _write_at(descriptor: int, data: memoryview, offset: int) -> None:
    while data:
        written = os.pwrite(descriptor, data, offset)
        data, offset = data[written:], offset + written


def loaded_modules(names: Sequence[str]) -> list[str]:
    """Which of `names` this process has imported (a worker must not hold TensorFlow)."""
    return [name for name in names if name in sys.modules]
