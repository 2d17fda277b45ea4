"""The drift monitor: windows of prediction records read from day partitions, the embedding
projection and the monitoring reference, the three drift tests and their verdict, the page."""

from __future__ import annotations

import json
import logging
import re
import time
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import DataError
from pipeline.monitoring.drift import (
    CLASS_SHIFT,
    CONFIDENCE_SHIFT,
    EMBEDDING_SHIFT,
    class_shift,
    confidence_shift,
    detect_drift,
    embedding_shift,
    resamples_for,
)
from pipeline.monitoring.page import write_monitor_page
from pipeline.monitoring.records import (
    EMBEDDING,
    MODEL_VERSION,
    PREDICTED_CLASS,
    PROBABILITY,
    RECORD_SCHEMA,
    REQUEST_ID,
    TIME,
    partition_name,
    read_window,
    window_embeddings,
)
from pipeline.monitoring.reference import (
    REFERENCE_KEYS,
    Projection,
    Reference,
    apply_projection,
    fit_projection,
    load_projection,
    load_reference,
    save_projection,
    save_reference,
)

RECORDS_LOGGER = "pipeline.monitoring.records"
NOW = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
CLASSES = ("cat", "dog", "<b>", "fish")
ALPHA = 0.01


# --- fixtures built in the tests ---------------------------------------------------------------


def _row(when: datetime, request_id: str, version: str = "1") -> dict:
    return {
        "time": when,
        "model_name": "digits",
        "model_version": version,
        "model_alias": None,
        "digest": "0" * 32,
        "predicted_class": "cat",
        "probability": 0.9,
        "top_classes": ["cat", "dog"],
        "top_probabilities": [0.9, 0.1],
        "embedding": [0.5, -0.5],
        "image_file": None,
        "source": "serve",
        "request_id": request_id,
    }


def _write_day(directory, day: date, rows: list[dict], part: str = "part-0") -> None:
    folder = directory / partition_name(day)
    folder.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RECORD_SCHEMA), folder / f"{part}.parquet")


def _write_records(directory, times: list[datetime], version: str = "1") -> None:
    """One file per day, each record named by its position in `times`."""
    days: dict[date, list[dict]] = {}
    for position, when in enumerate(times):
        days.setdefault(when.date(), []).append(_row(when, f"r{position}", version))
    for day, rows in days.items():
        _write_day(directory, day, rows, part=f"part-{version}")


def _reference(rng: np.random.Generator, count: int = 1000, width: int = 8) -> Reference:
    return Reference(
        embeddings=rng.normal(size=(count, width)).astype(np.float32),
        predicted=rng.choice(len(CLASSES), size=count, p=[0.4, 0.3, 0.2, 0.1]).astype(np.int64),
        confidences=rng.beta(8, 2, size=count),
        classes=CLASSES,
    )


def _window(
    rng: np.random.Generator,
    count: int = 200,
    *,
    class_shares=(0.4, 0.3, 0.2, 0.1),
    confidence=(8, 2),
    embedding_shift_by: float = 0.0,
    width: int = 8,
    embeddings: bool = True,
) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            PREDICTED_CLASS: rng.choice(CLASSES, size=count, p=class_shares),
            PROBABILITY: rng.beta(*confidence, size=count),
        }
    )
    if embeddings:
        points = rng.normal(size=(count, width)) + embedding_shift_by
        frame[EMBEDDING] = list(points.astype(np.float32))
    return frame


# --- records: reading a window ----------------------------------------------------------------


def test_partition_name_is_hive_style_day():
    assert partition_name(date(2024, 1, 2)) == "date=2024-01-02"


def test_last_keeps_the_period_and_never_opens_older_days(tmp_path, caplog):
    times = [
        NOW - timedelta(days=3),
        NOW - timedelta(hours=2),  # exactly at the window's start: left out
        NOW - timedelta(hours=1, minutes=59),
        NOW - timedelta(minutes=5),
        NOW,  # the window's end is included
        NOW + timedelta(minutes=1),  # after `now`: left out
    ]
    _write_records(tmp_path, times)
    # A file the reader would warn about, in a day the window cannot hold: opening it would
    # show up as a warning.
    (tmp_path / partition_name(date(2024, 5, 1))).mkdir()
    (tmp_path / partition_name(date(2024, 5, 1)) / "part-x.parquet").write_bytes(b"not parquet")

    with caplog.at_level(logging.WARNING, logger=RECORDS_LOGGER):
        frame = read_window(tmp_path, last=timedelta(hours=2), now=NOW)

    assert frame[REQUEST_ID].tolist() == ["r2", "r3", "r4"]
    assert caplog.records == []


def test_last_n_keeps_the_newest_records_sorted_by_time(tmp_path, caplog):
    times = [NOW - timedelta(days=day, minutes=minute) for day in (0, 1, 2) for minute in (1, 2)]
    _write_records(tmp_path, times)
    # The oldest day is not needed for the newest three records: it must not be opened.
    oldest = tmp_path / partition_name((NOW - timedelta(days=2)).date())
    (oldest / "part-x.parquet").write_bytes(b"not parquet")

    with caplog.at_level(logging.WARNING, logger=RECORDS_LOGGER):
        frame = read_window(tmp_path, last_n=3, now=NOW)

    assert frame[REQUEST_ID].tolist() == ["r2", "r1", "r0"]
    assert frame[TIME].is_monotonic_increasing
    assert caplog.records == []


def test_last_n_within_last_keeps_the_newest_of_the_period(tmp_path):
    times = [NOW - timedelta(minutes=minute) for minute in (50, 40, 30, 20, 10)]
    _write_records(tmp_path, times)

    frame = read_window(tmp_path, last=timedelta(minutes=45), last_n=2, now=NOW)

    assert frame[REQUEST_ID].tolist() == ["r3", "r4"]


def test_version_keeps_only_that_model_version(tmp_path):
    _write_records(tmp_path, [NOW - timedelta(minutes=3), NOW - timedelta(minutes=1)], "1")
    _write_records(tmp_path, [NOW - timedelta(minutes=2)], "2")

    frame = read_window(tmp_path, last=timedelta(hours=1), version="2", now=NOW)

    assert frame[MODEL_VERSION].tolist() == ["2"]
    assert len(read_window(tmp_path, last=timedelta(hours=1), now=NOW)) == 3


@pytest.mark.parametrize("layout", ["missing", "empty", "no day folders"])
def test_no_records_give_an_empty_frame_with_the_schema_columns(tmp_path, layout):
    directory = tmp_path / "predictions"
    if layout != "missing":
        directory.mkdir()
    if layout == "no day folders":
        (directory / "images").mkdir()
        (directory / "notes.txt").write_text("not records")

    frame = read_window(directory, last=timedelta(days=1), now=NOW)

    assert frame.empty
    assert list(frame.columns) == RECORD_SCHEMA.names


def test_a_corrupt_file_is_skipped_with_one_warning_naming_it(tmp_path, caplog):
    _write_records(tmp_path, [NOW - timedelta(minutes=1)])
    broken = tmp_path / partition_name(NOW.date()) / "part-broken.parquet"
    broken.write_bytes(b"PAR1 cut short by a crash")

    with caplog.at_level(logging.WARNING, logger=RECORDS_LOGGER):
        frame = read_window(tmp_path, last=timedelta(hours=1), now=NOW)

    assert frame[REQUEST_ID].tolist() == ["r0"]
    warnings = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(broken) in warnings[0].getMessage()


@pytest.mark.parametrize(
    "arguments",
    [
        {"last": timedelta(0), "now": NOW},
        {"last_n": 0, "now": NOW},
        {"last": timedelta(hours=1), "now": datetime(2024, 5, 10, 12)},
    ],
    ids=["zero period", "zero count", "naive now"],
)
def test_bad_window_arguments_are_rejected(tmp_path, arguments):
    with pytest.raises(ValueError, match="last|now"):
        read_window(tmp_path, **arguments)


def test_window_embeddings_leave_out_records_without_one():
    frame = pd.DataFrame({EMBEDDING: [np.array([1.0, 2.0]), None, np.array([3.0, 4.0])]})

    assert window_embeddings(frame).tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert window_embeddings(pd.DataFrame({EMBEDDING: [None, None]})) is None


def test_window_embeddings_of_different_widths_are_an_error():
    frame = pd.DataFrame({EMBEDDING: [np.zeros(2), np.zeros(3)]})

    with pytest.raises(DataError, match=r"\[2, 3\]"):
        window_embeddings(frame)


# --- reference: projection and reference files -------------------------------------------------


def test_projection_recovers_a_planted_low_rank_structure():
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.normal(size=(20, 3)))[0].T  # (3, 20), orthonormal rows
    latent = rng.normal(size=(500, 3)) * [5.0, 3.0, 2.0]
    features = latent @ basis + 7.0 + rng.normal(scale=0.01, size=(500, 20))

    projection = fit_projection(features, dimensions=3)

    # The fitted directions span the planted ones: each planted direction lies in their span.
    overlap = np.linalg.svd(projection.components @ basis.T, compute_uv=False)
    np.testing.assert_allclose(overlap, 1.0, atol=1e-3)
    np.testing.assert_allclose(projection.mean, features.mean(axis=0))
    embeddings = apply_projection(features, projection)
    assert embeddings.dtype == np.float32
    # Largest variance first.
    assert np.all(np.diff(embeddings.var(axis=0)) < 0)


@pytest.mark.parametrize(
    ("shape", "dimensions", "kept"), [((50, 10), 32, 10), ((6, 10), 32, 5), ((50, 10), 4, 4)]
)
def test_projection_keeps_at_most_dimensions_features_and_rows_less_one(shape, dimensions, kept):
    features = np.random.default_rng(1).normal(size=shape)

    assert fit_projection(features, dimensions).components.shape == (kept, shape[1])


def test_projection_is_deterministic_with_a_fixed_sign():
    features = np.random.default_rng(2).normal(size=(100, 12))

    first = fit_projection(features, 5)
    # The same rows in another order: SVD may flip any component's sign, the fit must not.
    second = fit_projection(features[::-1], 5)

    np.testing.assert_allclose(first.components, second.components, atol=1e-10)
    largest = np.abs(first.components).argmax(axis=1)
    assert np.all(first.components[np.arange(5), largest] > 0)


def test_projection_file_round_trip_keeps_the_served_format(tmp_path):
    projection = fit_projection(np.random.default_rng(3).normal(size=(40, 6)), 4)
    path = tmp_path / "projection.npz"

    save_projection(path, projection)
    loaded = load_projection(path)

    with np.load(path) as archive:
        assert sorted(archive.files) == ["components", "mean"]
    np.testing.assert_array_equal(loaded.mean, projection.mean)
    np.testing.assert_array_equal(loaded.components, projection.components)
    features = np.ones((2, 6))
    np.testing.assert_allclose(
        apply_projection(features, loaded),
        (features - projection.mean) @ projection.components.T,
        rtol=1e-6,
    )


def test_apply_projection_rejects_features_of_another_width():
    projection = Projection(mean=np.zeros(4), components=np.eye(2, 4))

    with pytest.raises(ValueError, match="4 features"):
        apply_projection(np.zeros((3, 5)), projection)


def test_reference_file_round_trip(tmp_path):
    reference = _reference(np.random.default_rng(4), count=50)
    path = tmp_path / "reference.npz"

    save_reference(path, reference)
    loaded = load_reference(path)

    np.testing.assert_array_equal(loaded.embeddings, reference.embeddings)
    np.testing.assert_array_equal(loaded.predicted, reference.predicted)
    np.testing.assert_array_equal(loaded.confidences, reference.confidences)
    assert loaded.classes == CLASSES
    assert loaded.predicted.dtype == np.int64 and loaded.embeddings.dtype == np.float32


def test_a_missing_reference_file_names_the_file(tmp_path):
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "absent.npz"))):
        load_reference(tmp_path / "absent.npz")


@pytest.mark.parametrize("key", REFERENCE_KEYS)
def test_a_reference_without_a_key_names_the_file_and_the_key(tmp_path, key):
    path = tmp_path / "reference.npz"
    arrays = {
        "embeddings": np.zeros((2, 3), np.float32),
        "predicted": np.zeros(2, np.int64),
        "confidences": np.ones(2),
        "classes": np.array(["a", "b"]),
    }
    del arrays[key]
    np.savez(path, **arrays)

    with pytest.raises(DataError, match=f"{re.escape(str(path))}.*'{key}'"):
        load_reference(path)


# --- drift tests --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shares", "fires"), [((0.4, 0.3, 0.2, 0.1), False), ((0.1, 0.2, 0.3, 0.4), True)]
)
def test_class_shift_fires_on_a_changed_class_mix_only(shares, fires):
    reference = _reference(np.random.default_rng(10))
    window = np.random.default_rng(11).choice(len(CLASSES), size=200, p=shares)

    result = class_shift(window, reference.predicted, CLASSES, threshold=ALPHA / 3)

    assert result.fired is fires
    assert (result.p_value < ALPHA / 3) is fires
    assert result.name == CLASS_SHIFT


def test_class_shift_ignores_classes_neither_sample_predicts():
    reference = np.array([0, 0, 1, 1] * 25)
    window = np.array([0, 1] * 50)

    result = class_shift(window, reference, ("a", "b", "never"), threshold=0.01)

    assert result.p_value == pytest.approx(1.0)
    assert not result.fired


@pytest.mark.parametrize(("shape", "fires"), [((8, 2), False), ((4, 2), True)])
def test_confidence_shift_fires_on_changed_confidences_only(shape, fires):
    reference = _reference(np.random.default_rng(12))
    window = np.random.default_rng(13).beta(*shape, size=200)

    result = confidence_shift(window, reference.confidences, threshold=ALPHA / 3)

    assert result.fired is fires
    assert result.name == CONFIDENCE_SHIFT


@pytest.mark.parametrize(("shift", "fires"), [(0.0, False), (0.4, True)])
def test_embedding_shift_fires_on_moved_embeddings_only(shift, fires):
    reference = _reference(np.random.default_rng(14))
    window = np.random.default_rng(15).normal(size=(200, 8)) + shift

    result = embedding_shift(window, reference.embeddings, threshold=ALPHA / 3, seed=0)

    assert result.fired is fires
    assert result.name == EMBEDDING_SHIFT


def test_embedding_shift_statistic_is_the_unbiased_mmd():
    rng = np.random.default_rng(16)
    first, second = rng.normal(size=(15, 3)), rng.normal(size=(25, 3)) + 0.5
    pooled = np.concatenate([first, second])
    squared = ((pooled[:, None, :] - pooled[None, :, :]) ** 2).sum(axis=-1)
    bandwidth = np.median(squared[np.triu_indices(len(pooled), k=1)])
    kernel = np.exp(-squared / (2 * bandwidth))
    within_first, within_second = kernel[:15, :15], kernel[15:, 15:]
    expected = (
        (within_first.sum() - 15) / (15 * 14)
        + (within_second.sum() - 25) / (25 * 24)
        - 2 * kernel[:15, 15:].mean()
    )

    result = embedding_shift(first, second, threshold=0.01, n_resamples=200)

    assert result.statistic == pytest.approx(expected, rel=1e-9)


def test_embedding_shift_is_deterministic_by_seed():
    rng = np.random.default_rng(17)
    window, reference = rng.normal(size=(60, 4)) + 0.1, rng.normal(size=(1500, 4))

    first = embedding_shift(window, reference, threshold=0.01, seed=3)
    again = embedding_shift(window, reference, threshold=0.01, seed=3)

    assert (first.statistic, first.p_value) == (again.statistic, again.p_value)


def test_embedding_shift_is_fast_on_a_full_window():
    rng = np.random.default_rng(18)
    window, reference = rng.normal(size=(200, 32)), rng.normal(size=(3000, 32))

    started = time.perf_counter()
    embedding_shift(window, reference, threshold=ALPHA / 3)

    # 200 window rows against the 1000 reference rows it subsamples, 1000 permutations:
    # measured at about 0.15 s on 2 cores; a gather per permutation would take many seconds.
    assert time.perf_counter() - started < 2.0


def test_embedding_shift_refuses_too_few_resamples_to_ever_fire():
    rng = np.random.default_rng(19)

    with pytest.raises(ValueError, match="n_resamples"):
        embedding_shift(rng.normal(size=(50, 2)), rng.normal(size=(50, 2)), 0.001, n_resamples=100)


def test_embedding_shift_rejects_embeddings_of_another_width():
    with pytest.raises(DataError, match="width"):
        embedding_shift(np.zeros((40, 3)), np.zeros((40, 4)), threshold=0.01)


# --- the verdict ----------------------------------------------------------------------------------


def test_detect_drift_splits_alpha_over_the_three_tests():
    reference = _reference(np.random.default_rng(20))
    window = _window(np.random.default_rng(21), embedding_shift_by=0.5)

    verdict = detect_drift(window, reference, alpha=ALPHA)

    assert {test["threshold"] for test in verdict["tests"].values()} == {ALPHA / 3}
    assert verdict["drift"] is True
    assert verdict["fired"] == [EMBEDDING_SHIFT]
    assert verdict["records"] == 200 and verdict["alpha"] == ALPHA
    assert EMBEDDING_SHIFT in verdict["reason"]
    # The verdict goes to a JSON report as it is.
    assert json.loads(json.dumps(verdict)) == verdict


def test_detect_drift_skips_the_embedding_test_without_embeddings_and_says_so():
    reference = _reference(np.random.default_rng(22))
    window = _window(np.random.default_rng(23), embeddings=False)

    verdict = detect_drift(window, reference, alpha=ALPHA)

    skipped = verdict["tests"][EMBEDDING_SHIFT]
    assert skipped["skipped"] is True and skipped["fired"] is False
    assert "no embeddings" in skipped["detail"]
    assert verdict["tests"][CLASS_SHIFT]["threshold"] == ALPHA / 2
    assert verdict["tests"][CONFIDENCE_SHIFT]["threshold"] == ALPHA / 2
    assert verdict["drift"] is False
    assert "2 tests" in verdict["reason"]


def test_detect_drift_skips_the_embedding_test_when_few_records_carry_one():
    reference = _reference(np.random.default_rng(38))
    window = _window(np.random.default_rng(39), count=100, embedding_shift_by=3.0)
    window.loc[20:, EMBEDDING] = None

    verdict = detect_drift(window, reference, min_records=30)

    assert verdict["tests"][EMBEDDING_SHIFT]["skipped"] is True
    assert "only 20 of the window's 100 records" in verdict["tests"][EMBEDDING_SHIFT]["detail"]


def test_a_small_alpha_gets_enough_permutations_to_fire():
    reference = _reference(np.random.default_rng(40))
    window = _window(np.random.default_rng(41), embedding_shift_by=0.5)

    # alpha / 3 is below 1 / 1001, the smallest p-value of 1000 permutations.
    verdict = detect_drift(window, reference, alpha=0.001)

    assert resamples_for(0.001 / 3) > 3000
    assert verdict["fired"] == [EMBEDDING_SHIFT]
    assert verdict["tests"][EMBEDDING_SHIFT]["p_value"] < 0.001 / 3


def test_detect_drift_is_quiet_on_traffic_like_the_reference():
    reference = _reference(np.random.default_rng(24))

    verdict = detect_drift(_window(np.random.default_rng(25)), reference, alpha=ALPHA)

    assert verdict["drift"] is False and verdict["fired"] == []
    assert verdict["reason"].startswith("No drift")


def test_too_little_traffic_is_no_drift_and_says_how_much_is_needed():
    reference = _reference(np.random.default_rng(26))
    window = _window(np.random.default_rng(27), count=12, embedding_shift_by=5.0)

    verdict = detect_drift(window, reference, min_records=30)

    assert verdict["drift"] is False and verdict["tests"] == {}
    assert "12" in verdict["reason"] and "30" in verdict["reason"]
    assert "Not enough traffic" in verdict["reason"]


def test_a_class_the_reference_does_not_know_is_an_error_naming_it():
    reference = _reference(np.random.default_rng(28))
    window = _window(np.random.default_rng(29))
    window.loc[5, PREDICTED_CLASS] = "zebra"

    with pytest.raises(DataError, match="'zebra'"):
        detect_drift(window, reference)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_alpha_outside_zero_one_is_rejected(alpha):
    reference = _reference(np.random.default_rng(30))

    with pytest.raises(ValueError, match="alpha"):
        detect_drift(_window(np.random.default_rng(31)), reference, alpha=alpha)


def test_detect_drift_is_deterministic_by_seed():
    reference = _reference(np.random.default_rng(32))
    window = _window(np.random.default_rng(33), embedding_shift_by=0.1)

    assert detect_drift(window, reference, seed=4) == detect_drift(window, reference, seed=4)


# --- the page -----------------------------------------------------------------------------------


def test_page_shows_the_verdict_three_figures_and_escapes_class_names(tmp_path):
    reference = _reference(np.random.default_rng(34))
    window = _window(np.random.default_rng(35), class_shares=(0.1, 0.1, 0.7, 0.1))
    verdict = detect_drift(window, reference)
    path = tmp_path / "monitor" / "index.html"

    write_monitor_page(path, verdict, window, reference, title="Monitor <digits>")

    page = path.read_text(encoding="utf-8")
    assert "Drift detected: class_shift" in page
    assert page.count('src="data:image/png;base64,') == 3
    assert f"{ALPHA / 3:.3g}" in page  # Each test's threshold.
    assert "&#x27;&lt;b&gt;&#x27;" in page  # The class the detail names, escaped.
    assert "<b>" not in page
    assert "Monitor &lt;digits&gt;" in page


def test_page_of_a_window_too_small_to_test_still_renders(tmp_path):
    reference = _reference(np.random.default_rng(36))
    window = _window(np.random.default_rng(37), count=0)
    path = tmp_path / "index.html"

    write_monitor_page(path, detect_drift(window, reference), window, reference, title="quiet")

    page = path.read_text(encoding="utf-8")
    assert "Not tested" in page and "Not enough traffic" in page
    assert page.count('src="data:image/png;base64,') == 3
