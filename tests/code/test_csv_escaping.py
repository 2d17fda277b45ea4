"""CSV files of the evaluation name classes by their folder names, which are anyone's: a name
that begins with =, +, - or @ is written spreadsheet-safe (a leading apostrophe), so Excel or
LibreOffice shows it as text and never runs it; numeric cells are written unchanged."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from pipeline.evaluation.metrics import classification_report_frame
from pipeline.evaluation.report import write_classification_report, write_confusion

CLASSES = ['=HYPERLINK("http://evil.example","click")', "-1", "@sum", "cat"]
SAFE = ["'" + CLASSES[0], "'-1", "'@sum", "cat"]


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as stream:
        return list(csv.reader(stream))


def test_confusion_matrix_headers_are_escaped_and_counts_unchanged(tmp_path: Path) -> None:
    y_true = np.array([0, 1, 2, 3, 3])
    y_pred = np.array([0, 1, 2, 3, 0])
    write_confusion(y_true, y_pred, CLASSES, tmp_path, "test")
    counts = _rows(tmp_path / "confusion_matrix.csv")
    assert counts[0] == SAFE
    assert counts[1:] == [["1", "0", "0", "0"], ["0", "1", "0", "0"], ["0", "0", "1", "0"]] + [
        ["1", "0", "0", "1"]
    ]
    normalized = _rows(tmp_path / "confusion_matrix_normalized.csv")
    assert normalized[0] == SAFE and normalized[4] == ["0.5", "0.0", "0.0", "0.5"]


def test_classification_report_class_column_is_escaped(tmp_path: Path) -> None:
    report = classification_report_frame(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 3]), CLASSES)
    path = tmp_path / "classification_report.csv"
    write_classification_report(report, path)
    rows = _rows(path)
    assert [row[0] for row in rows[1:5]] == SAFE
    # The figures are numbers, not text: none is escaped.
    assert all(not cell.startswith("'") for row in rows[1:] for cell in row[1:])
    report.to_csv(tmp_path / "plain.csv", index_label="class")
    plain = _rows(tmp_path / "plain.csv")
    assert [row[1:] for row in rows] == [row[1:] for row in plain]
    assert [row[0] for row in rows[5:]] == [row[0] for row in plain[5:]]  # the averages


def test_predictions_csv_escapes_class_names_and_the_comparison_reads_them_back(tmp_path):
    from pipeline.evaluation.comparison import read_evaluated_strategy
    from pipeline.evaluation.layout import EVALUATION_JSON, PREDICTIONS_CSV
    from pipeline.evaluation.report import write_predictions
    from pipeline.store import write_json

    classes = ["=HYPERLINK(1)", "-1", "cat"]
    y_true = np.array([0, 1, 2, 0])
    probabilities = np.eye(3)[[0, 1, 2, 2]]
    write_predictions(y_true, probabilities, classes, tmp_path / PREDICTIONS_CSV)
    with open(tmp_path / PREDICTIONS_CSV, newline="") as stream:
        rows = list(csv.DictReader(stream))
    assert rows[0]["true"] == "'=HYPERLINK(1)" and rows[1]["predicted"] == "'-1"
    write_json(tmp_path / EVALUATION_JSON, {"strategy": "scratch", "test_accuracy": 0.75})
    evaluated = read_evaluated_strategy(tmp_path, classes)
    assert evaluated.predictions.tolist() == [0, 1, 2, 2]
