"""The prediction recorder: every answered image becomes one Parquet row (see
pipeline.monitoring.records), written by a background thread so a request only pays for putting
one item on a queue.

Each flush writes one new file per UTC day, under a name no other process or host can choose
(time, host, process, sequence), to a hidden temporary name first: readers never see half a file
and servers sharing one disk never collide. On a clean stop (`close`) nothing is lost; after a
SIGKILL at most the last flush interval is. A failing disk never fails a request: the rows of
that flush are dropped, counted, and reported once.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.monitoring.records import (
    DIGEST,
    EMBEDDING,
    IMAGE_FILE,
    MODEL_ALIAS,
    MODEL_NAME,
    MODEL_VERSION,
    PREDICTED_CLASS,
    PROBABILITY,
    RECORD_SCHEMA,
    REQUEST_ID,
    SOURCE,
    SOURCES,
    TIME,
    TOP_CLASSES,
    TOP_PROBABILITIES,
    partition_name,
)
from pipeline.store import atomic_write, image_digest

logger = logging.getLogger(__name__)

IMAGES_DIR = "images"
"""Under the predictions folder: the kept images, `images/<digest[:2]>/<digest>.png`."""

# One counter for the whole process, so two recorders writing into the same folder in the same
# microsecond still choose different file names.
_FILE_SEQUENCE = itertools.count()
EMBED_BATCH = 256
"""Images embedded per call of a version's `embed` in the writer thread."""
_UNSAFE_NAME_CHARACTERS = re.compile(r"[^A-Za-z0-9._]+")


@dataclass(frozen=True, slots=True)
class _Batch:
    """One `record` call, as it waits on the queue: nothing computed yet but the time."""

    when: datetime
    model_name: str
    model_version: str
    model_alias: str | None
    images: np.ndarray
    predicted_class: Sequence[str]
    probability: Sequence[float]
    top_classes: Sequence[Sequence[str]]
    top_probabilities: Sequence[Sequence[float]]
    embeddings: np.ndarray | None
    request_id: str
    embed: Callable[[np.ndarray], np.ndarray | None] | None = None
    """Computes the embeddings in the writer thread, when `embeddings` is None."""

    @property
    def rows(self) -> int:
        return len(self.images)


class PredictionRecorder:
    """Buffers prediction records from any number of threads and writes them as Parquet every
    `flush_seconds`, or sooner once `max_rows` are waiting, from one daemon thread."""

    def __init__(
        self,
        directory: Path,
        *,
        source: str,
        flush_seconds: float = 2.0,
        max_rows: int = 5000,
        keep_images: bool = False,
        max_queue_rows: int = 100_000,
    ) -> None:
        if source not in SOURCES:
            raise PipelineError(
                f"prediction recorder source {source!r} is unknown: use one of {list(SOURCES)}"
            )
        if not flush_seconds > 0:
            raise PipelineError(
                f"prediction recorder flush_seconds={flush_seconds!r}: use a positive number of "
                "seconds"
            )
        if max_rows < 1 or max_queue_rows < max_rows:
            raise PipelineError(
                f"prediction recorder max_rows={max_rows!r}, max_queue_rows={max_queue_rows!r}: "
                "use 1 <= max_rows <= max_queue_rows"
            )
        self.directory = Path(directory)
        self.source = source
        self.flush_seconds = float(flush_seconds)
        self.max_rows = int(max_rows)
        self.keep_images = bool(keep_images)
        self.max_queue_rows = int(max_queue_rows)
        self.written = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._pending: collections.deque[_Batch] = collections.deque()
        self._queued = 0
        # One lock guards the queue and the counters; the condition wakes the writer early.
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        # Only one flush at a time: the writer thread's, or close()'s when no thread ever ran.
        self._flush_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._closed = False
        self._failing = False
        self._dropped_while_failing = 0
        self._overflow_reported = False
        self._bad_batch_reported = False
        self._unsaved_image_reported = False
        self._embed_failure_reported = False
        self._file_prefix = (
            f"{_UNSAFE_NAME_CHARACTERS.sub('_', socket.gethostname()) or 'host'}-{os.getpid()}"
        )

    # --- the request path -------------------------------------------------------------------

    def record(
        self,
        *,
        model_name: str,
        model_version: str,
        model_alias: str | None,
        images: np.ndarray,
        predicted_class: Sequence[str],
        probability: Sequence[float],
        top_classes: Sequence[Sequence[str]],
        top_probabilities: Sequence[Sequence[float]],
        embeddings: np.ndarray | None,
        request_id: str | None = None,
        when: datetime | None = None,
        embed: Callable[[np.ndarray], np.ndarray | None] | None = None,
    ) -> None:
        """Queue the records of one answered request (N images, (N, H, W, C) uint8). Cheap and
        never raises: digests, tables and files are the writer thread's work."""
        try:
            when = datetime.now(UTC) if when is None else when
            # A copy: the caller may reuse its buffer once the request is answered.
            batch = _Batch(
                when=when,
                model_name=str(model_name),
                model_version=str(model_version),
                model_alias=None if model_alias is None else str(model_alias),
                images=np.array(images, dtype=np.uint8),
                predicted_class=predicted_class,
                probability=probability,
                top_classes=top_classes,
                top_probabilities=top_probabilities,
                embeddings=None if embeddings is None else np.array(embeddings, np.float32),
                request_id=uuid.uuid4().hex if request_id is None else str(request_id),
                embed=embed if embeddings is None else None,
            )
            rows = batch.rows
            if rows == 0:
                return
            with self._lock:
                if self._closed:
                    self._count_dropped_locked(rows)
                    return
                if self._queued + rows > self.max_queue_rows:
                    self._count_dropped_locked(rows)
                    report = not self._overflow_reported
                    self._overflow_reported = True
                    queued = self._queued
                else:
                    self._pending.append(batch)
                    self._queued += rows
                    if self._queued >= self.max_rows:
                        self._wake.notify()
                    return
            if report:
                logger.warning(
                    "prediction records for %s are piling up (%d rows queued, the limit is %d): "
                    "the disk is not keeping up; requests still succeed, but new records are "
                    "being dropped",
                    self.directory,
                    queued,
                    self.max_queue_rows,
                )
        except Exception:
            # A record is never worth a failed request; the error is logged for the operator.
            logger.exception("a prediction record could not be queued (request %s)", request_id)

    # --- the writer thread ------------------------------------------------------------------

    def start(self) -> PredictionRecorder:
        """Start the background writer (once; a second call does nothing)."""
        with self._lock:
            if self._closed:
                raise PipelineError(
                    f"the prediction recorder for {self.directory} was closed: create a new one"
                )
            if self._thread is not None:
                return self
            self._thread = threading.Thread(
                target=self._run, name="prediction-recorder", daemon=True
            )
        self._thread.start()
        return self

    def close(self, timeout: float = 10.0) -> None:
        """Write everything queued and stop the writer; later calls do nothing. Records that
        arrive after this are dropped (and counted)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True
            thread = self._thread
            self._wake.notify()
        if thread is None:
            # Never started: the final flush happens here, in the caller's thread.
            self._flush_pending()
            return
        thread.join(timeout)
        if thread.is_alive():
            logger.warning(
                "the prediction recorder for %s did not finish writing within %.1f s; "
                "%d queued records may be lost",
                self.directory,
                timeout,
                self._queued,
            )

    def flush(self) -> None:
        """Write what is queued now, in the caller's thread (`predict --log` at the end of a
        batch, say); like the writer thread's flushes, it never raises."""
        self._flush_pending()

    def __enter__(self) -> PredictionRecorder:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def status(self) -> dict[str, Any]:
        """The counters for the server's status endpoint: rows written and dropped so far,
        rows waiting, the latest write error (kept after recovery) and whether writes fail now."""
        with self._lock:
            return {
                "written": self.written,
                "dropped": self.dropped,
                "queued": self._queued,
                "last_error": self.last_error,
                "failing": self._failing,
                "directory": str(self.directory),
            }

    def _run(self) -> None:
        while True:
            with self._wake:
                self._wake.wait_for(
                    lambda: self._stopping or self._queued >= self.max_rows,
                    timeout=self.flush_seconds,
                )
                stopping = self._stopping
            self._flush_pending()
            if stopping:
                return

    def _flush_pending(self) -> None:
        with self._flush_lock:
            with self._lock:
                batches = list(self._pending)
                self._pending.clear()
                self._queued = 0
            if batches:
                try:
                    self._write_batches(batches)
                except Exception as exc:
                    # Never let the writer thread die: a dead writer would drop every later
                    # record without a word. OSError is handled inside; this is a bug.
                    logger.exception("prediction records could not be written")
                    self._fail(sum(batch.rows for batch in batches), exc)

    def _write_batches(self, batches: list[_Batch]) -> None:
        batches = self._embedded(batches)
        days: dict[date, list[dict[str, Any]]] = collections.defaultdict(list)
        for batch in batches:
            try:
                rows = self._rows_of(batch)
            except Exception as exc:
                self._drop_bad_batch(batch, exc)
                continue
            for row in rows:
                days[row[TIME].date()].append(row)
        for day, rows in sorted(days.items()):
            try:
                self._write_day(day, rows)
            except OSError as exc:
                self._fail(len(rows), exc)
            else:
                self._succeed(len(rows))

    def _embedded(self, batches: list[_Batch]) -> list[_Batch]:
        """`batches` with the embeddings their `embed` computes, one call per model for the
        whole flush (batched, and off the request path); a model whose embed fails leaves its
        rows without embeddings, said once."""
        groups: dict[int, list[int]] = collections.defaultdict(list)
        for position, batch in enumerate(batches):
            if batch.embed is not None and batch.embeddings is None:
                groups[id(batch.embed)].append(position)
        batches = list(batches)
        for positions in groups.values():
            embed = batches[positions[0]].embed
            try:
                images = np.concatenate([batches[position].images for position in positions])
                embeddings = [
                    embed(images[start : start + EMBED_BATCH])
                    for start in range(0, len(images), EMBED_BATCH)
                ]
                if any(part is None for part in embeddings):
                    continue
                embeddings = np.concatenate(embeddings).astype(np.float32)
            except Exception as exc:  # noqa: BLE001 - the records still go, without embeddings
                if not self._embed_failure_reported:
                    self._embed_failure_reported = True
                    logger.warning(
                        "prediction records are written without embeddings: computing them "
                        "failed (%s: %s)",
                        type(exc).__name__,
                        exc,
                    )
                continue
            start = 0
            for position in positions:
                count = batches[position].rows
                batches[position] = dataclasses.replace(
                    batches[position], embeddings=embeddings[start : start + count], embed=None
                )
                start += count
        return batches

    def _rows_of(self, batch: _Batch) -> list[dict[str, Any]]:
        """One record per image of a batch; raises when the batch's sequences disagree."""
        count = batch.rows
        columns = {
            PREDICTED_CLASS: batch.predicted_class,
            PROBABILITY: batch.probability,
            TOP_CLASSES: batch.top_classes,
            TOP_PROBABILITIES: batch.top_probabilities,
        }
        if batch.embeddings is not None:
            columns[EMBEDDING] = batch.embeddings
        lengths = {name: len(values) for name, values in columns.items()}
        if any(length != count for length in lengths.values()):
            raise ValueError(f"{count} images but these lengths: {lengths}")
        when = batch.when if batch.when.tzinfo is not None else batch.when.replace(tzinfo=UTC)
        when = when.astimezone(UTC)
        rows = []
        for index in range(count):
            image = batch.images[index]
            embedding = None if batch.embeddings is None else batch.embeddings[index]
            rows.append(
                {
                    TIME: when,
                    MODEL_NAME: batch.model_name,
                    MODEL_VERSION: batch.model_version,
                    MODEL_ALIAS: batch.model_alias,
                    DIGEST: image_digest(image),
                    PREDICTED_CLASS: str(batch.predicted_class[index]),
                    PROBABILITY: float(batch.probability[index]),
                    TOP_CLASSES: [str(name) for name in batch.top_classes[index]],
                    TOP_PROBABILITIES: [float(value) for value in batch.top_probabilities[index]],
                    EMBEDDING: None if embedding is None else embedding.tolist(),
                    IMAGE_FILE: None,
                    SOURCE: self.source,
                    REQUEST_ID: batch.request_id,
                    "_image": image,
                }
            )
        return rows

    def _write_day(self, day: date, rows: list[dict[str, Any]]) -> None:
        """Write one day's rows as one new Parquet file (and their images, when kept)."""
        if self.keep_images:
            for row in rows:
                row[IMAGE_FILE] = self._save_image(row[DIGEST], row["_image"])
        table = pa.Table.from_pylist(
            [{name: row[name] for name in RECORD_SCHEMA.names} for row in rows],
            schema=RECORD_SCHEMA,
        )
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        name = f"part-{stamp}-{self._file_prefix}-{next(_FILE_SEQUENCE)}.parquet"
        # atomic_write's temporary name starts with a dot, which pyarrow.dataset ignores, and
        # lives in the same folder, so os.replace publishes the whole file at once.
        with atomic_write(self.directory / partition_name(day) / name, "wb") as stream:
            pq.write_table(table, stream)

    def _save_image(self, digest: str, image: np.ndarray) -> str | None:
        """Save an image once as a PNG named by its digest; its path relative to the folder,
        or None for a channel count PNG cannot hold."""
        relative = f"{IMAGES_DIR}/{digest[:2]}/{digest}.png"
        target = self.directory / relative
        if target.exists():
            return relative
        pixels = image[..., 0] if image.ndim == 3 and image.shape[-1] == 1 else image
        try:
            picture = Image.fromarray(pixels)
        except (TypeError, ValueError) as exc:
            if not self._unsaved_image_reported:
                self._unsaved_image_reported = True
                logger.warning(
                    "an image of shape %s cannot be saved as PNG (%s); its record is written "
                    "without an image file",
                    image.shape,
                    exc,
                )
            return None
        with atomic_write(target, "wb") as stream:
            picture.save(stream, format="PNG")
        return relative

    # --- counting and reporting -------------------------------------------------------------

    def _count_dropped_locked(self, rows: int) -> None:
        self.dropped += rows
        if self._failing:
            self._dropped_while_failing += rows

    def _fail(self, rows: int, exc: BaseException) -> None:
        with self._lock:
            self._count_dropped_locked(rows)
            self.last_error = f"{type(exc).__name__}: {exc}"
            first = not self._failing
            if first:
                self._failing = True
                self._dropped_while_failing = rows
        if first:
            # Once per outage: a full disk under load would otherwise log on every flush.
            logger.warning(
                "prediction records cannot be written to %s (%s): requests still succeed, but "
                "records are being dropped until the folder is writable again",
                self.directory,
                self.last_error,
            )

    def _succeed(self, rows: int) -> None:
        with self._lock:
            self.written += rows
            resumed = self._dropped_while_failing if self._failing else None
            self._failing = False
            self._dropped_while_failing = 0
            self._overflow_reported = False
        if resumed is not None:
            logger.info(
                "prediction recording to %s resumed after %d dropped records",
                self.directory,
                resumed,
            )

    def _drop_bad_batch(self, batch: _Batch, exc: Exception) -> None:
        with self._lock:
            self._count_dropped_locked(batch.rows)
            report = not self._bad_batch_reported
            self._bad_batch_reported = True
        if report:
            # A caller's bug, not a disk's: reported once, as later batches likely share it.
            logger.error(
                "the prediction records of request %s were dropped: %s (further malformed "
                "records are dropped silently)",
                batch.request_id,
                exc,
            )
