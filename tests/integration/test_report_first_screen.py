"""The report's first screen, as a newcomer sees it: reports/index.html rendered from a digits
run's records (three strategies, a data gate with 151 near-duplicate warnings, label issues,
the promote stage's decision) and opened in headless Chromium at 1400 x 900. Without
scrolling, the promotion outcome (the strategy registered, whether it became the champion, the
gate's criteria) and the whole strategy comparison are in view, and the near-duplicate
warnings are below, collapsed and explained."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.evaluation.significance import PAIRWISE_COLUMNS
from pipeline.reporting.content import (
    DatasetCard,
    LabelIssueExample,
    LabelIssuesCard,
    ReportContent,
    StrategySection,
    collect_strategy_figures,
    read_classification_report,
)
from pipeline.reporting.html import write_report
from tests.browser import Browser, Page, chromium_or_skip
from tests.code.test_report_html import DIGITS, _report_folder, promotion_record

pytestmark = pytest.mark.slow

WIDTH, HEIGHT = 1400, 900
STRATEGIES = ("scratch", "feature_extraction", "fine_tune")
CRITERIA = (
    "Accuracy floor",
    "Lowest class recall",
    "Calibration (test ECE)",
    "Gain over the champion",
    "McNemar's test vs the champion",
)

# Where each element of the first screen is, and its text: read in the page after layout.
MEASURE = """(() => {
    const box = (selector) => {
        const element = document.querySelector(selector);
        if (!element) return null;
        const rect = element.getBoundingClientRect();
        return {top: rect.top, bottom: rect.bottom, right: rect.right,
                text: element.innerText.replace(/\\s+/g, " ").trim()};
    };
    return {
        width: window.innerWidth, height: window.innerHeight, scrolled: window.scrollY,
        title: box("header.top"),
        promotion: box("#promotion"),
        criteria: box("#promotion table.criteria"),
        comparison: box("table.comparison"),
        rows: [...document.querySelectorAll("table.comparison tbody tr")].map((row) => {
            const rect = row.getBoundingClientRect();
            return {bottom: rect.bottom, text: row.innerText.replace(/\\s+/g, " ").trim()};
        }),
        warnings: box("#data-gate details.warnings"),
        warningsOpen: document.querySelector("#data-gate details.warnings").open,
    };
})()"""


def realistic_content(root: Path, promotion: dict | None) -> ReportContent:
    """What the report stage gathers after `dvc repro` on digits: 1,797 images, the data
    gate's summary (passed, 151 near duplicates), three strategies with their figures and
    metrics, two significant differences, HED backbone weights, label issues, and
    `promotion` (promotion.json; None: not promoted yet)."""
    rng = np.random.default_rng(0)
    counts = {
        "train": dict(zip(DIGITS, [125, 127, 124, 128, 126, 127, 125, 124, 125, 126], strict=True)),
        "val": {digit: 27 for digit in DIGITS},
        "test": {digit: 27 for digit in DIGITS},
    }
    examples = {digit: rng.integers(0, 17, (6, 8, 8), dtype=np.uint8) * 15 for digit in DIGITS}
    validation = {
        "passed": True,
        "rows": 1797,
        "rows_per_split": {"train": 1257, "val": 270, "test": 270},
        "failures": 0,
        "warnings": 151,
        "near_duplicates": 151,
        "blank_images": 0,
        "exact_duplicates_across_splits": 0,
        "label_conflicts": 0,
        "failed_expectations": [],
        "drift_max_ks": 0.041,
    }
    dataset = DatasetCard("digits", DIGITS, counts, examples, validation, 2)
    comparison = pd.DataFrame(
        {
            "test_accuracy": [0.9926, 0.9407, 0.9741],
            "test_macro_f1": [0.9926, 0.9401, 0.9739],
            "test_loss": [0.0291, 0.2013, 0.0968],
            "total_params": [27946, 14982474, 14982474],
            "trainable_params": [27946, 267786, 7347210],
            "training_seconds": [41.27, 212.0, 380.5],
            "images_per_second": [9412.3, 311.8, 305.2],
        },
        index=pd.Index(STRATEGIES, name="strategy"),
    )
    val_accuracy = {"scratch": 0.9889, "feature_extraction": 0.9481, "fine_tune": 0.9704}
    significance = pd.DataFrame(
        [
            ["scratch", "feature_extraction", 15, 1, 12.25, 0.0005, False, True, "scratch"],
            ["scratch", "fine_tune", 6, 1, 2.29, 0.125, True, False, ""],
            ["feature_extraction", "fine_tune", 2, 11, 4.92, 0.022, True, True, "fine_tune"],
        ],
        columns=PAIRWISE_COLUMNS,
    )
    sections = []
    for number, strategy in enumerate(STRATEGIES):
        folder = _report_folder(root, strategy, DIGITS)
        metrics = {
            "val_accuracy": val_accuracy[strategy],
            **{column: float(comparison.loc[strategy, column]) for column in comparison.columns},
            "test_ece": 0.0213,
        }
        sections.append(
            StrategySection(
                name=strategy,
                run_id=f"{number}f3c9a1e6d2b84c7b9e0a5d4c3b2a1f0e",
                experiment_id="1",
                metrics=metrics,
                classification_report=read_classification_report(folder),
                figures=collect_strategy_figures(folder),
                backbone_weights="none" if strategy == "scratch" else "hed",
            )
        )
    image = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    label_issues = LabelIssuesCard(
        count=12,
        conflicts=0,
        checked=1527,
        examples=[
            LabelIssueExample(f"digits/{index:04d}", "train", "1", "7", 0.004 * index, image=image)
            for index in range(6)
        ],
        csv_name="reports/label_issues.csv",
        folder=False,
    )
    return ReportContent(
        title="digits: three ways to train a convnet",
        generated=datetime(2025, 1, 2, 3, 4, tzinfo=UTC),
        dataset=dataset,
        comparison=comparison,
        significance=significance,
        alpha=0.05,
        strategies=sections,
        mlflow_url="http://127.0.0.1:5000",
        backbone="vgg16",
        label_issues=label_issues,
        promotion=promotion,
    )


def first_screen(browser: Browser, page_file: Path, screenshot: Path | None = None) -> dict:
    """Open `page_file` at 1400 x 900 and measure its first screen (and save it as a PNG)."""
    page: Page = browser.open(page_file.resolve().as_uri())
    browser.call(
        "Emulation.setDeviceMetricsOverride",
        page.session,
        width=WIDTH,
        height=HEIGHT,
        deviceScaleFactor=1,
        mobile=False,
    )
    page.wait_until(f"window.innerWidth === {WIDTH} && window.innerHeight === {HEIGHT}")
    page.wait_until("Array.from(document.images).every(image => image.complete)")
    measured = page.evaluate(MEASURE)
    if screenshot is not None:
        data = browser.call("Page.captureScreenshot", page.session, format="png")["data"]
        screenshot.write_bytes(base64.b64decode(data))
    return measured


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser(chromium_or_skip()) as opened:
        yield opened


@pytest.fixture(scope="module")
def figures_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reports")


def _render(figures_root: Path, tmp_path: Path, promotion: dict | None) -> Path:
    return write_report(realistic_content(figures_root, promotion), tmp_path / "index.html")


def _in_view(measured: dict, name: str) -> None:
    box = measured[name]
    assert box is not None, f"no {name} on the page"
    assert box["top"] >= 0 and box["bottom"] <= HEIGHT, (name, box["top"], box["bottom"])
    assert box["right"] <= WIDTH, (name, box["right"])


@pytest.mark.parametrize(
    ("outcome", "headline"),
    [
        ("champion", "scratch is the champion: digits-classifier version 4"),
        ("kept", "scratch registered as digits-classifier version 5, not the champion"),
        ("experiment", "scratch: gate passed, nothing registered (DVC experiment sober-yawl)"),
    ],
)
def test_the_first_screen_shows_the_promotion_outcome_and_the_comparison(
    browser, figures_root, tmp_path, outcome, headline
) -> None:
    record = promotion_record(outcome)
    measured = first_screen(
        browser, _render(figures_root, tmp_path, record), tmp_path / "first_screen.png"
    )
    assert (measured["width"], measured["height"], measured["scrolled"]) == (WIDTH, HEIGHT, 0)
    for name in ("title", "promotion", "criteria", "comparison"):
        _in_view(measured, name)
    assert "digits: three ways to train a convnet" in measured["title"]["text"]
    promotion = measured["promotion"]["text"]
    assert headline in promotion
    assert "champion" in promotion
    for criterion in CRITERIA:
        assert criterion in measured["criteria"]["text"]
    verdicts = [row["passed"] for row in record["criteria"].values()]
    assert measured["criteria"]["text"].count("pass") == verdicts.count(True)
    assert measured["criteria"]["text"].count("fail") == verdicts.count(False)
    # Every strategy's row, with its val and test accuracy, is in view.
    assert [row["text"].split()[0] for row in measured["rows"]] == list(STRATEGIES)
    assert all(row["bottom"] <= HEIGHT for row in measured["rows"])
    scratch = measured["rows"][0]["text"]
    assert "0.9889" in scratch and "0.9926" in scratch
    # The near-duplicate warnings: below the first screen, collapsed.
    assert measured["warnings"]["top"] > HEIGHT
    assert not measured["warningsOpen"]
    assert "151 near-duplicate images" in measured["warnings"]["text"]
    assert (tmp_path / "first_screen.png").stat().st_size > 20_000


def test_a_report_rendered_before_promote_says_not_promoted_yet_on_its_first_screen(
    browser, figures_root, tmp_path
) -> None:
    measured = first_screen(browser, _render(figures_root, tmp_path, None))
    for name in ("promotion", "comparison"):
        _in_view(measured, name)
    assert measured["criteria"] is None
    assert "Not promoted yet" in measured["promotion"]["text"]
    assert "reports/promotion.json is not there" in measured["promotion"]["text"]
    assert all(row["bottom"] <= HEIGHT for row in measured["rows"])


def test_a_long_gate_failure_still_leaves_the_comparison_in_view(
    browser, figures_root, tmp_path
) -> None:
    """The worst first screen: a champion that cannot be loaded (a long sentence) and a failed
    gate with its reasons."""
    record = {
        **promotion_record("kept"),
        "champion_unusable": (
            "champion unusable: version 3 cannot be loaded (the model file's SHA-256 differs "
            "from its tag); the challenger is judged on the floors alone. Until a challenger "
            "passes, serve a version that loads: `pipeline rollback --to <version> --reason "
            "...`, or re-register version 3's model"
        ),
    }
    measured = first_screen(browser, _render(figures_root, tmp_path, record))
    for name in ("promotion", "criteria", "comparison"):
        _in_view(measured, name)
    assert "champion unusable" in measured["promotion"]["text"]
    assert all(row["bottom"] <= HEIGHT for row in measured["rows"])
