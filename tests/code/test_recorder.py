"""The prediction recorder: what is recorded is what is written, in the right day folder, from
any number of threads; a failing disk never fails a request and is reported once."""

from __future__ import annotations

import logging
import re
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.monitoring.records import RECORD_SCHEMA, read_window
from pipeline.serving.recorder import PredictionRecorder
from pipeline.store import image_digest

RECORDER_LOGGER = "pipeline.serving.recorder"
FILE_NAME = re.compile(r"^part-\d{8}T\d{12}-[A-Za-z0-9._]+-\d+-\d+\.parquet$")
DAY = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def _images(count: int, seed: int = 0, channels: int = 1, size: int = 8) -> np.ndarray:
    return np.random.default_rng(seed).integers(
        0, 256, (count, size, size, channels), dtype=np.uint8
    )


def _record(
    recorder: PredictionRecorder,
    images: np.ndarray,
    *,
    embeddings: np.ndarray | None = None,
    request_id: str | None = None,
    when: datetime | None = None,
    version: str = "3",
) -> None:
    count = len(images)
    recorder.record(
        model_name="digits",
        model_version=version,
        model_alias="champion",
        images=images,
        predicted_class=[str(index % 10) for index in range(count)],
        probability=[0.5 + index / (4 * count) for index in range(count)],
        top_classes=[[str(index % 10), "x"] for index in range(count)],
        top_probabilities=[[0.5 + index / (4 * count), 0.1] for index in range(count)],
        embeddings=embeddings,
        request_id=request_id,
        when=when,
    )


def _read_all(directory: Path) -> pa.Table:
    """Every record under `directory`'s day folders (not the kept images beside them), read
    as a Hive-partitioned dataset."""
    dataset = ds.dataset(
        sorted(str(path) for path in directory.glob("date=*/*.parquet")),
        format="parquet",
        partitioning="hive",
        partition_base_dir=str(directory),
        schema=RECORD_SCHEMA,
    )
    return dataset.to_table()


def _parquet_files(directory: Path) -> list[Path]:
    return sorted(directory.rglob("*.parquet"))


def test_written_rows_match_what_was_recorded(tmp_path):
    images = _images(5)
    embeddings = np.random.default_rng(1).normal(size=(5, 4)).astype(np.float32)
    with PredictionRecorder(tmp_path, source="serve", flush_seconds=60) as recorder:
        _record(recorder, images, embeddings=embeddings, request_id="req-1", when=DAY)
        _record(recorder, images[:2], request_id="req-2", when=DAY + timedelta(seconds=1))

    table = _read_all(tmp_path)
    assert table.num_rows == 7
    rows = sorted(table.to_pylist(), key=lambda row: (row["time"], row["request_id"]))
    first = [row for row in rows if row["request_id"] == "req-1"]
    assert [row["digest"] for row in first] == [image_digest(image) for image in images]
    assert [row["predicted_class"] for row in first] == ["0", "1", "2", "3", "4"]
    assert first[0]["probability"] == 0.5
    assert first[0]["top_classes"] == ["0", "x"]
    assert first[0]["top_probabilities"] == [0.5, 0.1]
    assert {row["model_name"] for row in rows} == {"digits"}
    assert {row["model_version"] for row in rows} == {"3"}
    assert {row["model_alias"] for row in rows} == {"champion"}
    assert {row["source"] for row in rows} == {"serve"}
    assert {row["image_file"] for row in rows} == {None}
    assert first[0]["time"] == DAY
    # Embeddings come back as float32, bit for bit; a request without them has nulls.
    assert table.schema.field("embedding").type == pa.list_(pa.float32())
    read_back = np.array([row["embedding"] for row in first], dtype=np.float32)
    np.testing.assert_array_equal(read_back, embeddings)
    assert [row["embedding"] for row in rows if row["request_id"] == "req-2"] == [None, None]
    assert recorder.status()["written"] == 7


def test_the_monitor_reads_what_the_recorder_writes(tmp_path):
    with PredictionRecorder(tmp_path, source="predict", flush_seconds=60) as recorder:
        _record(recorder, _images(3), embeddings=np.ones((3, 2), np.float32), when=DAY)
    frame = read_window(tmp_path, last=timedelta(days=1), now=DAY + timedelta(hours=1))
    assert len(frame) == 3
    assert set(frame["source"]) == {"predict"}


def test_a_request_without_an_id_gets_one_per_call(tmp_path):
    with PredictionRecorder(tmp_path, source="serve", flush_seconds=60) as recorder:
        _record(recorder, _images(2))
        _record(recorder, _images(1))
    ids = _read_all(tmp_path)["request_id"].to_pylist()
    assert len(set(ids)) == 2
    assert all(ids)


def test_close_writes_everything_queued_and_is_idempotent(tmp_path):
    recorder = PredictionRecorder(tmp_path, source="serve", flush_seconds=3600).start()
    for index in range(10):
        _record(recorder, _images(3, seed=index))
    assert recorder.status()["queued"] == 30
    recorder.close()
    recorder.close()
    assert _read_all(tmp_path).num_rows == 30
    assert recorder.status() | {"directory": None} == {
        "written": 30,
        "dropped": 0,
        "queued": 0,
        "last_error": None,
        "failing": False,
        "directory": None,
    }
    # After close a record is dropped and counted, never raised.
    _record(recorder, _images(2))
    assert recorder.dropped == 2


def test_close_without_start_still_writes(tmp_path):
    recorder = PredictionRecorder(tmp_path, source="predict")
    _record(recorder, _images(4))
    recorder.close()
    assert _read_all(tmp_path).num_rows == 4


def test_start_after_close_is_refused(tmp_path):
    recorder = PredictionRecorder(tmp_path, source="serve")
    recorder.close()
    with pytest.raises(PipelineError, match="closed"):
        recorder.start()


def test_eight_threads_lose_nothing(tmp_path):
    threads_count, calls = 8, 150
    recorder = PredictionRecorder(tmp_path, source="serve", flush_seconds=0.01, max_rows=37)
    start = threading.Barrier(threads_count)

    def send(thread: int) -> None:
        start.wait()
        for call in range(calls):
            _record(recorder, _images(2, seed=thread * calls + call), request_id=f"{thread}-{call}")

    with recorder:
        workers = [threading.Thread(target=send, args=(index,)) for index in range(threads_count)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    table = _read_all(tmp_path)
    assert table.num_rows == threads_count * calls * 2
    assert len(set(table["request_id"].to_pylist())) == threads_count * calls
    assert recorder.written == threads_count * calls * 2
    assert recorder.dropped == 0
    # Many flushes happened, each writing its own file.
    assert len(_parquet_files(tmp_path)) > 1


def test_enough_waiting_rows_flush_before_the_interval(tmp_path):
    with PredictionRecorder(tmp_path, source="serve", flush_seconds=3600, max_rows=10) as recorder:
        _record(recorder, _images(10))
        deadline = time.monotonic() + 10
        while recorder.written < 10 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert recorder.written == 10


@pytest.mark.parametrize(
    ("when", "day"),
    [
        (datetime(2024, 3, 1, 23, 59, 59, 999999, tzinfo=UTC), "2024-03-01"),
        (datetime(2024, 3, 2, 0, 0, tzinfo=UTC), "2024-03-02"),
        # Days are UTC days: 01:00 at UTC+2 is the previous UTC day.
        (datetime(2024, 3, 2, 1, 0, tzinfo=timezone(timedelta(hours=2))), "2024-03-01"),
        # A naive time is taken to be UTC.
        (datetime(2024, 3, 2, 1, 0), "2024-03-02"),
    ],
)
def test_rows_land_in_their_own_day_folder(tmp_path, when, day):
    with PredictionRecorder(tmp_path, source="serve", flush_seconds=60) as recorder:
        _record(recorder, _images(2), when=when)
    files = _parquet_files(tmp_path)
    assert [path.parent.name for path in files] == [f"date={day}"]
    assert pq.read_table(files[0])["time"].to_pylist()[0] == when.replace(
        tzinfo=when.tzinfo or UTC
    ).astimezone(UTC)


def test_a_flush_across_midnight_writes_one_file_per_day(tmp_path):
    midnight = datetime(2024, 3, 2, tzinfo=UTC)
    recorder = PredictionRecorder(tmp_path, source="serve")
    _record(recorder, _images(2), when=midnight - timedelta(microseconds=1))
    _record(recorder, _images(3), when=midnight)
    _record(recorder, _images(1), when=midnight - timedelta(hours=1))
    recorder.flush()
    files = _parquet_files(tmp_path)
    assert {path.parent.name: pq.read_table(path).num_rows for path in files} == {
        "date=2024-03-01": 3,
        "date=2024-03-02": 3,
    }
    recorder.close()


def test_file_names_are_unique_and_no_temporary_file_remains(tmp_path):
    recorder = PredictionRecorder(tmp_path, source="serve")
    for index in range(5):
        _record(recorder, _images(1, seed=index), when=DAY)
        recorder.flush()
    recorder.close()
    everything = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert len(everything) == 5
    assert all(FILE_NAME.match(path.name) for path in everything), everything


@pytest.mark.parametrize("channels", [1, 3])
def test_kept_images_decode_to_the_recorded_pixels(tmp_path, channels):
    images = _images(3, channels=channels)
    with PredictionRecorder(tmp_path, source="serve", keep_images=True) as recorder:
        _record(recorder, images)
        # The same image again is saved once.
        _record(recorder, images[:1])
    rows = _read_all(tmp_path).to_pylist()
    assert len(rows) == 4
    assert len(list(tmp_path.rglob("*.png"))) == 3
    for row in rows:
        digest = row["digest"]
        assert row["image_file"] == f"images/{digest[:2]}/{digest}.png"
    for image in images:
        digest = image_digest(image)
        decoded = np.asarray(Image.open(tmp_path / f"images/{digest[:2]}/{digest}.png"))
        np.testing.assert_array_equal(decoded.reshape(image.shape), image)


def test_without_keep_images_no_pixels_are_written(tmp_path):
    with PredictionRecorder(tmp_path, source="serve") as recorder:
        _record(recorder, _images(4))
    assert _read_all(tmp_path)["image_file"].to_pylist() == [None] * 4
    assert list(tmp_path.rglob("*.png")) == []
    assert not (tmp_path / "images").exists()
    assert [path.suffix for path in tmp_path.rglob("*") if path.is_file()] == [".parquet"]


def test_an_unwritable_directory_drops_records_reports_once_and_recovers(tmp_path, caplog):
    # Tests run as root, so chmod cannot make a folder read-only; a regular file where a
    # folder should be gives a real OSError (NotADirectoryError) instead.
    blocker = tmp_path / "shared"
    blocker.write_text("not a folder")
    directory = blocker / "predictions"
    caplog.set_level(logging.INFO, logger=RECORDER_LOGGER)

    recorder = PredictionRecorder(directory, source="serve", keep_images=True)
    for index in range(3):
        _record(recorder, _images(2, seed=index))
        recorder.flush()
    assert recorder.dropped == 6
    assert recorder.written == 0
    status = recorder.status()
    assert status["failing"] is True
    assert "NotADirectoryError" in status["last_error"]
    warnings = [record for record in caplog.records if record.levelno >= logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert str(directory) in message
    assert "requests still succeed" in message
    assert "dropped" in message

    blocker.unlink()
    _record(recorder, _images(2, seed=10))
    recorder.flush()
    _record(recorder, _images(1, seed=11))
    recorder.close()
    assert recorder.written == 3
    assert recorder.dropped == 6
    resumed = [record.getMessage() for record in caplog.records if "resumed" in record.message]
    assert resumed == [f"prediction recording to {directory} resumed after 6 dropped records"]
    assert len([record for record in caplog.records if record.levelno >= logging.WARNING]) == 1
    assert recorder.status()["failing"] is False
    assert _read_all(directory).num_rows == 3


def test_the_directory_being_a_file_does_not_break_the_writer_thread(tmp_path, caplog):
    directory = tmp_path / "predictions"
    directory.write_text("oops")
    caplog.set_level(logging.WARNING, logger=RECORDER_LOGGER)
    with PredictionRecorder(directory, source="serve", flush_seconds=0.01) as recorder:
        for index in range(5):
            _record(recorder, _images(1, seed=index))
            time.sleep(0.02)
    assert recorder.dropped == 5
    assert len(caplog.records) == 1


def test_a_full_queue_drops_new_rows_and_says_so_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=RECORDER_LOGGER)
    # Not started: nothing drains the queue, as when the disk stalls.
    recorder = PredictionRecorder(tmp_path, source="serve", max_rows=4, max_queue_rows=5)
    _record(recorder, _images(4))
    _record(recorder, _images(2))
    _record(recorder, _images(1))
    _record(recorder, _images(3))
    assert recorder.status()["queued"] == 5
    assert recorder.dropped == 5
    assert len(caplog.records) == 1
    assert "requests still succeed" in caplog.records[0].getMessage()
    recorder.close()
    assert _read_all(tmp_path).num_rows == 5


def test_a_malformed_request_is_dropped_and_the_others_written(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger=RECORDER_LOGGER)
    with PredictionRecorder(tmp_path, source="serve", flush_seconds=60) as recorder:
        _record(recorder, _images(2))
        recorder.record(
            model_name="digits",
            model_version="3",
            model_alias=None,
            images=_images(3),
            predicted_class=["1"],
            probability=[0.9],
            top_classes=[["1"]],
            top_probabilities=[[0.9]],
            embeddings=None,
            request_id="bad",
        )
        _record(recorder, _images(1))
    assert recorder.dropped == 3
    assert _read_all(tmp_path).num_rows == 3
    assert len(caplog.records) == 1
    assert "bad" in caplog.records[0].getMessage()


def test_record_never_raises(tmp_path):
    recorder = PredictionRecorder(tmp_path, source="serve")
    recorder.record(
        model_name="digits",
        model_version="3",
        model_alias=None,
        images=object(),
        predicted_class=[],
        probability=[],
        top_classes=[],
        top_probabilities=[],
        embeddings=None,
    )
    recorder.close()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"source": "batch"}, "source 'batch'"),
        ({"source": "serve", "flush_seconds": 0}, "flush_seconds=0"),
        ({"source": "serve", "max_rows": 10, "max_queue_rows": 5}, "max_queue_rows=5"),
        ({"source": "serve", "max_rows": 0}, "max_rows=0"),
    ],
)
def test_bad_settings_are_refused(tmp_path, arguments, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        PredictionRecorder(tmp_path, **arguments)


def test_record_is_cheap(tmp_path):
    recorder = PredictionRecorder(tmp_path, source="serve", max_queue_rows=10_000)
    image = _images(1)
    started = time.perf_counter()
    for index in range(1000):
        recorder.record(
            model_name="digits",
            model_version="3",
            model_alias="champion",
            images=image,
            predicted_class=["1"],
            probability=[0.9],
            top_classes=[["1", "7"]],
            top_probabilities=[[0.9, 0.05]],
            embeddings=None,
            request_id=str(index),
        )
    elapsed = time.perf_counter() - started
    print(f"1000 record() calls of one 8x8 image: {elapsed * 1000:.1f} ms")
    # Typically about 10 ms; the bound only catches work moved onto the request path (a digest,
    # a file write), with room for a busy two-core machine.
    assert elapsed < 1.0
    recorder.close()
    assert recorder.written == 1000


def test_embeddings_are_computed_in_the_writer_one_call_per_model_per_flush(tmp_path, caplog):
    """`embed` runs off the request path, batched over a whole flush and per model; a model
    whose embed fails still gets its rows written, without embeddings, said once."""
    calls: list[int] = []

    def embed(images: np.ndarray) -> np.ndarray:
        calls.append(len(images))
        return images.reshape(len(images), -1)[:, :4].astype(np.float32)

    def broken(images: np.ndarray) -> np.ndarray:
        raise RuntimeError("no feature model")

    recorder = PredictionRecorder(tmp_path, source="serve")
    first, second, third = _images(3, seed=1), _images(2, seed=2), _images(4, seed=3)
    for images, function, version in (
        (first, embed, "3"),
        (second, embed, "3"),
        (third, broken, "4"),
    ):
        recorder.record(
            model_name="digits",
            model_version=version,
            model_alias="champion",
            images=images,
            predicted_class=["1"] * len(images),
            probability=[0.9] * len(images),
            top_classes=[["1"]] * len(images),
            top_probabilities=[[0.9]] * len(images),
            embeddings=None,
            embed=function,
        )
    assert calls == [], "nothing is embedded on the request path"
    with caplog.at_level(logging.WARNING, logger="pipeline.serving.recorder"):
        recorder.close()
    assert calls == [5], "one call for both batches of the same model"
    window = read_window(tmp_path, last_n=100)
    embedded = window[window["model_version"] == "3"]
    expected = np.concatenate([first, second]).reshape(5, -1)[:, :4].astype(np.float32)
    assert sorted(map(tuple, embedded["embedding"])) == sorted(map(tuple, expected))
    assert window[window["model_version"] == "4"]["embedding"].isna().all()
    assert len(window) == 9 and recorder.dropped == 0
    assert caplog.text.count("without embeddings") == 1
