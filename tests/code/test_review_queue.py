"""The review queue: the served images that most need a label come first, once each, and the
page shows the kept ones as thumbnails, with every text escaped."""

from __future__ import annotations

import base64
import csv
import io
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.errors import PipelineError
from pipeline.monitoring.records import read_window
from pipeline.retraining.review import (
    NOT_KEPT,
    QUEUE_COLUMNS,
    select_for_review,
    write_review_queue,
)
from pipeline.serving.recorder import PredictionRecorder

START = datetime(2024, 3, 1, tzinfo=UTC)
THUMBNAIL = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _digest(index: int) -> str:
    return f"{index:032x}"


def _records(
    probabilities: list[float],
    embeddings: list[list[float] | None],
    *,
    digests: list[str] | None = None,
    image_files: list[str | None] | None = None,
    classes: list[str] | None = None,
) -> pd.DataFrame:
    count = len(probabilities)
    return pd.DataFrame(
        {
            "time": [START + timedelta(minutes=index) for index in range(count)],
            "model_name": "digits",
            "model_version": "4",
            "model_alias": "champion",
            "digest": digests or [_digest(index) for index in range(count)],
            "predicted_class": classes or [str(index % 10) for index in range(count)],
            "probability": probabilities,
            "embedding": [
                None if value is None else np.asarray(value, np.float32) for value in embeddings
            ],
            "image_file": image_files or [None] * count,
        }
    )


def _reference(count: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, (count, 2)).astype(np.float32)


def test_a_low_confidence_far_away_image_comes_first():
    records = _records(
        [0.99, 0.95, 0.30, 0.90, 0.40],
        [[0, 0], [0.1, 0], [8, 8], [0, 0.1], [0.05, 0]],
    )
    queue = select_for_review(records, _reference())
    assert list(queue.columns) == list(QUEUE_COLUMNS)
    assert queue["digest"].iloc[0] == _digest(2)
    assert queue["need_score"].iloc[0] == 1.0
    assert queue["need_score"].is_monotonic_decreasing
    # The confident image near the reference needs a label least.
    assert queue["digest"].iloc[-1] == _digest(0)
    assert queue["drift_distance"].iloc[0] > 10 * queue["drift_distance"].iloc[-1]


def test_drift_distance_is_the_mean_distance_to_the_five_nearest_references():
    reference = np.array([[float(index), 0.0] for index in range(10)], np.float32)
    queue = select_for_review(_records([0.5], [[0.0, 1.0]]), reference)
    expected = np.mean([np.hypot(index, 1.0) for index in range(5)])
    assert queue["drift_distance"].iloc[0] == pytest.approx(expected)
    # Fewer references than neighbours: all of them.
    queue = select_for_review(_records([0.5], [[0.0, 1.0]]), reference[:2])
    assert queue["drift_distance"].iloc[0] == pytest.approx(np.mean([1.0, np.hypot(1, 1)]))


def test_duplicates_of_a_digest_collapse_to_their_latest_record():
    records = _records(
        [0.9, 0.2, 0.6, 0.8],
        [[0, 0], [0, 0], [1, 1], [0, 0]],
        digests=[_digest(7), _digest(7), _digest(8), _digest(7)],
        classes=["1", "2", "3", "4"],
    )
    queue = select_for_review(records, _reference())
    assert sorted(queue["digest"]) == [_digest(7), _digest(8)]
    latest = queue.set_index("digest").loc[_digest(7)]
    assert latest["predicted_class"] == "4"
    assert latest["probability"] == 0.8
    assert latest["time"] == START + timedelta(minutes=3)


def test_images_without_embeddings_are_ranked_by_confidence_alone():
    records = _records([0.2, 0.9, 0.5, 0.7], [None, [5, 5], None, [0, 0]])
    queue = select_for_review(records, _reference()).set_index("digest")
    assert set(queue.index[queue["drift_distance"].isna()]) == {_digest(0), _digest(2)}
    # The least confident image of four: its confidence rank, 1.0, is its whole score.
    assert queue.loc[_digest(0), "need_score"] == 1.0
    assert queue.loc[_digest(2), "need_score"] == 0.75
    # With a drift score, the two ranks are averaged: confidence 0.25, drift 1.0.
    assert queue.loc[_digest(1), "need_score"] == pytest.approx(0.625)


@pytest.mark.parametrize("reference", [None, "other width"])
def test_without_a_usable_reference_confidence_decides(reference):
    if reference == "other width":
        reference = np.zeros((10, 3), np.float32)
    records = _records([0.6, 0.1, 0.9], [[0, 0], [9, 9], [1, 1]])
    queue = select_for_review(records, reference)
    assert queue["digest"].tolist() == [_digest(1), _digest(0), _digest(2)]
    assert queue["drift_distance"].isna().all()


def test_records_without_an_embedding_column_are_ranked_by_confidence():
    records = _records([0.6, 0.1], [None, None]).drop(columns=["embedding", "image_file"])
    queue = select_for_review(records, _reference())
    assert queue["digest"].tolist() == [_digest(1), _digest(0)]
    assert queue["image_file"].isna().all()


def test_the_queue_holds_at_most_size_images():
    count = 30
    records = _records(list(np.linspace(0.1, 0.99, count)), [[index, 0] for index in range(count)])
    queue = select_for_review(records, _reference(), size=7)
    assert len(queue) == 7
    assert len(select_for_review(records, _reference(), size=1000)) == count


def test_empty_records_give_an_empty_queue():
    queue = select_for_review(_records([], []), _reference())
    assert queue.empty
    assert list(queue.columns) == list(QUEUE_COLUMNS)


@pytest.mark.parametrize(
    ("records", "reference", "size", "message"),
    [
        (_records([0.5], [[0, 0]]), None, 0, "size=0"),
        (_records([0.5], [[0, 0]]).drop(columns=["probability"]), None, 10, "probability"),
        (_records([0.5], [[0, 0]]), np.zeros((0, 2)), 10, "shape (0, 2)"),
    ],
)
def test_bad_inputs_are_refused(records, reference, size, message):
    with pytest.raises(PipelineError, match=re.escape(message)):
        select_for_review(records, reference, size=size)


def _keep_image(predictions: Path, digest: str, pixels: np.ndarray) -> str:
    relative = f"images/{digest[:2]}/{digest}.png"
    (predictions / relative).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(predictions / relative)
    return relative


def test_the_page_shows_kept_images_and_a_placeholder_for_the_others(tmp_path):
    predictions = tmp_path / "predictions"
    digit = (np.arange(64, dtype=np.uint8) * 4).reshape(8, 8)
    kept = _keep_image(predictions, _digest(0), digit)
    records = _records(
        [0.2, 0.3, 0.4],
        [[1, 1], [2, 2], None],
        image_files=[kept, None, "images/ff/gone.png"],
    )
    queue = select_for_review(records, _reference())
    result = write_review_queue(
        tmp_path / "review", queue, predictions, "Review", image_folder="data/images"
    )

    assert result == {
        "csv": str(tmp_path / "review" / "queue.csv"),
        "html": str(tmp_path / "review" / "index.html"),
        "images": 3,
        "with_files": 1,
    }
    page = (tmp_path / "review" / "index.html").read_text(encoding="utf-8")
    thumbnails = THUMBNAIL.findall(page)
    assert len(thumbnails) == 1
    # Upscaled with nearest neighbour: 8x8 becomes 96x96 of the same pixels.
    thumbnail = np.asarray(Image.open(io.BytesIO(base64.b64decode(thumbnails[0]))))
    assert thumbnail.shape == (96, 96)
    np.testing.assert_array_equal(thumbnail[::12, ::12], digit)
    assert page.count(NOT_KEPT) == 1
    assert "image file not found: images/ff/gone.png" in page
    assert "data/images/&lt;class name&gt;/" in page
    assert "pipeline retrain" in page
    # Nothing outside the page is referenced: it can be mailed or archived as it is.
    assert 'src="images/' not in page
    assert "<link" not in page


def test_the_csv_holds_the_queue_columns(tmp_path):
    records = _records([0.2, 0.8], [[1, 1], None], classes=["seven", "été"])
    queue = select_for_review(records, _reference())
    write_review_queue(tmp_path, queue, tmp_path / "predictions", "Review")
    with open(tmp_path / "queue.csv", newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert list(rows[0]) == list(QUEUE_COLUMNS)
    assert [row["digest"] for row in rows] == [_digest(0), _digest(1)]
    assert rows[1]["predicted_class"] == "été"
    assert rows[1]["drift_distance"] == ""
    assert float(rows[0]["probability"]) == 0.2
    # Written atomically: no temporary file is left beside them.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["index.html", "queue.csv"]


def test_all_text_on_the_page_is_escaped(tmp_path):
    predictions = tmp_path / "predictions"
    attack = "<script>alert('x')</script>"
    kept = _keep_image(predictions, _digest(0), np.zeros((8, 8), np.uint8))
    records = _records(
        [0.2, 0.3], [[1, 1], [2, 2]], image_files=[kept, None], classes=[attack, "&"]
    )
    queue = select_for_review(records, _reference())
    write_review_queue(tmp_path / "review", queue, predictions, f"Review {attack}")
    page = (tmp_path / "review" / "index.html").read_text(encoding="utf-8")
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<b>&amp;</b>" in page


def test_an_image_file_outside_the_predictions_folder_is_not_shown(tmp_path):
    predictions = tmp_path / "predictions"
    predictions.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "secret.png")
    records = _records([0.2], [[1, 1]], image_files=["../secret.png"])
    result = write_review_queue(
        tmp_path / "review", select_for_review(records, _reference()), predictions, "Review"
    )
    assert result["with_files"] == 0
    assert THUMBNAIL.findall((tmp_path / "review" / "index.html").read_text()) == []


def test_an_empty_queue_writes_a_page_that_says_so(tmp_path):
    queue = select_for_review(_records([], []), None)
    result = write_review_queue(tmp_path, queue, tmp_path, "Review")
    assert result["images"] == 0
    assert "No served images to review." in Path(result["html"]).read_text()


def test_a_frame_that_is_not_a_queue_is_refused(tmp_path):
    with pytest.raises(PipelineError, match="select_for_review"):
        write_review_queue(tmp_path, pd.DataFrame({"digest": []}), tmp_path, "Review")


def test_the_queue_of_what_the_recorder_kept(tmp_path):
    predictions = tmp_path / "predictions"
    images = np.random.default_rng(0).integers(0, 256, (4, 8, 8, 1), dtype=np.uint8)
    with PredictionRecorder(predictions, source="serve", keep_images=True) as recorder:
        recorder.record(
            model_name="digits",
            model_version="4",
            model_alias="champion",
            images=images,
            predicted_class=["1", "2", "3", "1"],
            probability=[0.9, 0.3, 0.8, 0.95],
            top_classes=[["1"], ["2"], ["3"], ["1"]],
            top_probabilities=[[0.9], [0.3], [0.8], [0.95]],
            embeddings=np.array([[0, 0], [6, 6], [0.1, 0], [0, 0.1]], np.float32),
            when=START,
        )
    records = read_window(predictions, last=timedelta(days=1), now=START + timedelta(hours=1))
    queue = select_for_review(records, _reference(), size=3)
    assert len(queue) == 3
    assert queue["probability"].iloc[0] == 0.3
    result = write_review_queue(tmp_path / "review", queue, predictions, "Review")
    assert result["with_files"] == 3
    assert len(THUMBNAIL.findall(Path(result["html"]).read_text())) == 3
