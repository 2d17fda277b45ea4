"""The prediction records a served model writes (one Parquet row per image answered, in day
partitions) and the reading of a time window of them: the contract between the recorder and
the monitor, defined once so both sides import the same names and types."""

from __future__ import annotations

import datetime
import logging
import math
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.errors import DataError

if TYPE_CHECKING:
    # Only for annotations: pyarrow imports pandas when a frame is made, so a server that
    # records predictions without reading them does not pay for pandas' import.
    import pandas as pd

logger = logging.getLogger(__name__)

DEFAULT_DIRECTORY = Path("monitoring/predictions")
"""Where the recorder writes, relative to the project root, unless told otherwise."""

TIME = "time"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
MODEL_ALIAS = "model_alias"
DIGEST = "digest"
PREDICTED_CLASS = "predicted_class"
PROBABILITY = "probability"
TOP_CLASSES = "top_classes"
TOP_PROBABILITIES = "top_probabilities"
EMBEDDING = "embedding"
IMAGE_FILE = "image_file"
SOURCE = "source"
REQUEST_ID = "request_id"

SOURCES: tuple[str, ...] = ("serve", "predict")
"""The values of SOURCE: the HTTP server, or the `predict` command."""
EMBEDDING_MAX_DIMENSIONS = 32

RECORD_SCHEMA: pa.Schema = pa.schema(
    [
        pa.field(TIME, pa.timestamp("us", tz="UTC")),
        pa.field(MODEL_NAME, pa.string()),
        pa.field(MODEL_VERSION, pa.string()),
        pa.field(MODEL_ALIAS, pa.string()),
        pa.field(DIGEST, pa.string()),
        pa.field(PREDICTED_CLASS, pa.string()),
        pa.field(PROBABILITY, pa.float64()),
        pa.field(TOP_CLASSES, pa.list_(pa.string())),
        pa.field(TOP_PROBABILITIES, pa.list_(pa.float64())),
        pa.field(EMBEDDING, pa.list_(pa.float32())),
        pa.field(IMAGE_FILE, pa.string()),
        pa.field(SOURCE, pa.string()),
        pa.field(REQUEST_ID, pa.string()),
    ]
)
"""One row per image answered. `probability` is the top probability (the confidence);
`embedding` (at most EMBEDDING_MAX_DIMENSIONS numbers) is null for a model without a
projection; `image_file` is relative to the predictions folder, set only when images are kept;
`model_alias` is null when the model was named by version. Fields are declared nullable (as
pyarrow does by default) so that files from any writer cast to this schema alike."""

PARTITION_PREFIX = "date="
"""Day partitions are folders named `date=YYYY-MM-DD` (UTC days), Hive style."""


def partition_name(day: datetime.date) -> str:
    """The folder name of one UTC day's records: `date=YYYY-MM-DD`."""
    return f"{PARTITION_PREFIX}{day.isoformat()}"


def read_window(
    directory: Path,
    *,
    last: timedelta | None = None,
    last_n: int | None = None,
    version: str | None = None,
    now: datetime.datetime | None = None,
) -> pd.DataFrame:
    """The records answered in (now - last, now], or the last `last_n` of them, or both (the
    last `last_n` within the period), of one model version if given, sorted by time.

    Only the day partitions that can hold the window are opened, so a monitor that looks at
    the last hour does not read a year of records. A missing or empty folder gives an empty
    frame with the schema's columns; an unreadable file is skipped with a warning.
    """
    if last is not None and last <= timedelta(0):
        raise ValueError(f"last must be a positive period, got {last}")
    if last_n is not None and last_n < 1:
        raise ValueError(f"last_n must be at least 1, got {last_n}")
    if now is None:
        now = datetime.datetime.now(datetime.UTC)
    elif now.tzinfo is None:
        raise ValueError(f"now must be timezone-aware (records are in UTC), got {now}")
    now = now.astimezone(datetime.UTC)
    start = None if last is None else now - last

    days = _list_partitions(Path(directory))
    # Days after `now` hold only records the window excludes; with `last`, days before the
    # start's day hold only older records.
    days = [
        (day, folder)
        for day, folder in days
        if day <= now.date() and (start is None or day >= start.date())
    ]
    tables: list[pa.Table] = []
    rows = 0
    # Newest day first, so that `last_n` alone can stop once it has enough records.
    for _day, folder in sorted(days, reverse=True):
        for path in sorted(folder.glob("part-*.parquet")):
            table = _read_records(path)
            if table is None:
                continue
            table = _filter_table(table, version=version, start=start, end=now)
            tables.append(table)
            rows += table.num_rows
        if last is None and last_n is not None and rows >= last_n:
            break

    if not tables:
        return _empty_frame()
    frame = pa.concat_tables(tables).to_pandas()
    # A stable sort keeps records of the same microsecond in file order.
    frame = frame.sort_values(TIME, kind="stable", ignore_index=True)
    if last_n is not None:
        frame = frame.iloc[-last_n:].reset_index(drop=True)
    return frame


def window_embeddings(window_records: pd.DataFrame) -> np.ndarray | None:
    """The embeddings of a frame of records as an (n, k) float64 array, leaving out records
    without one; None when no record has one."""
    if EMBEDDING not in window_records:
        return None
    present = [
        np.asarray(value, dtype=np.float64)
        for value in window_records[EMBEDDING]
        if not (value is None or (isinstance(value, float) and math.isnan(value)))
    ]
    if not present:
        return None
    widths = {len(value) for value in present}
    if len(widths) > 1:
        raise DataError(
            f"the window's embeddings have different widths {sorted(widths)}: it mixes model "
            "versions; compare the records of one version"
        )
    return np.stack(present)


def _list_partitions(directory: Path) -> list[tuple[datetime.date, Path]]:
    """The day folders under `directory` with their dates; other entries are ignored."""
    if not directory.is_dir():
        logger.info("monitor: %s does not exist yet; no records", directory)
        return []
    partitions = []
    for folder in directory.iterdir():
        if not folder.is_dir() or not folder.name.startswith(PARTITION_PREFIX):
            continue
        try:
            day = datetime.date.fromisoformat(folder.name.removeprefix(PARTITION_PREFIX))
        except ValueError:
            logger.warning(
                "monitor: %s is not a day folder (%sYYYY-MM-DD); skipped",
                folder,
                PARTITION_PREFIX,
            )
            continue
        partitions.append((day, folder))
    return partitions


def _read_records(path: Path) -> pa.Table | None:
    """One Parquet file cast to RECORD_SCHEMA, or None with a warning when it cannot be read:
    a recorder that crashed mid-write must not stop the monitor."""
    try:
        with pq.ParquetFile(path) as parquet:
            table = parquet.read(columns=RECORD_SCHEMA.names)
        return table.select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)
    except (OSError, ValueError, KeyError, pa.ArrowException) as exc:
        logger.warning("monitor: skipped %s, which cannot be read as records (%s)", path, exc)
        return None


def _filter_table(
    table: pa.Table,
    *,
    version: str | None,
    start: datetime.datetime | None,
    end: datetime.datetime,
) -> pa.Table:
    """The rows of `table` of `version` (if given) answered in (start, end]."""
    times = table[TIME]
    mask = pc.less_equal(times, pa.scalar(end, type=times.type))
    if start is not None:
        mask = pc.and_(mask, pc.greater(times, pa.scalar(start, type=times.type)))
    if version is not None:
        mask = pc.and_(mask, pc.equal(table[MODEL_VERSION], version))
    # Null times or versions compare as null: such rows are dropped, not kept.
    return table.filter(mask, null_selection_behavior="drop")


def _empty_frame() -> pd.DataFrame:
    return RECORD_SCHEMA.empty_table().to_pandas()
