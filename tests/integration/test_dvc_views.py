"""DVC's own views of the pipeline's outputs: `dvc plots show` draws every plot of dvc.yaml
with no network (Vega inlined through .dvc/config's plots.html_template), checked in headless
Chromium with the network off, and `dvc metrics show` is a row per strategy within 130
columns."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.stages.compare import MAIN_METRICS
from tests.browser import Browser, Page, chromium_or_skip
from tests.project import PROJECT_ROOT

pytestmark = pytest.mark.slow

STRATEGIES = ("scratch", "feature_extraction", "fine_tune")
CLASSES = ("0", "1", "2")

# Per container vega-embed drew into: its drawn marks (lines, points, cells, labels) and the
# longest line's path data; per image: whether it decoded. Then every resource requested.
INSPECT = """(() => {
    const marks = "svg .mark-line path, svg .mark-symbol path, svg .mark-rect path, "
        + "svg .mark-text text";
    const paths = (div) => [...div.querySelectorAll("svg .mark-line path")];
    return {
        vega: [...document.querySelectorAll(".vega-embed")].map((div) => ({
            id: div.id,
            marks: div.querySelectorAll(marks).length,
            line: Math.max(0, ...paths(div).map((p) => (p.getAttribute("d") || "").length)),
            strokes: [...new Set(paths(div).map((p) => p.getAttribute("stroke")))],
            dashes: [...new Set(paths(div).map((p) => p.getAttribute("stroke-dasharray")))],
        })),
        images: [...document.querySelectorAll("img")].map(
            (img) => img.complete && img.naturalWidth > 0
        ),
        resources: performance.getEntriesByType("resource").map((entry) => entry.name),
    };
})()"""


def _dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _write_outputs(root: Path) -> None:
    """What train and evaluate leave for DVC's plots, small: each strategy's history.csv,
    confusion.json and confusion_matrix.png."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    rng = np.random.default_rng(0)
    for strategy in STRATEGIES:
        models = root / "models" / strategy
        reports = root / "reports" / strategy
        models.mkdir(parents=True)
        reports.mkdir(parents=True)
        rows = ["epoch,loss,val_loss,accuracy,val_accuracy"]
        for epoch in range(5):
            loss = 1.0 / (epoch + 1)
            rows.append(
                f"{epoch},{loss:.4f},{loss * 1.1:.4f},{1 - loss / 2:.4f},{1 - loss / 1.8:.4f}"
            )
        (models / "history.csv").write_text("\n".join(rows) + "\n")
        actual = rng.integers(0, len(CLASSES), 30)
        predicted = np.where(rng.random(30) < 0.8, actual, rng.integers(0, len(CLASSES), 30))
        records = [
            {"actual": CLASSES[a], "predicted": CLASSES[p]}
            for a, p in zip(actual, predicted, strict=True)
        ]
        (reports / "confusion.json").write_text(json.dumps(records))
        pyplot.imsave(reports / "confusion_matrix.png", rng.random((3, 3)))


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A DVC project with this one's dvc.yaml, params and .dvc/config, the plots template, and
    small outputs where the stages write theirs."""
    root = tmp_path_factory.mktemp("views")
    initialised = _dvc(root, "init", "--no-scm")
    assert initialised.returncode == 0, initialised.stderr
    for name in (
        "dvc.yaml",
        "params.yaml",
        ".dvc/config",
        "tools/dvc_plots/template.html",
        "tools/dvc_plots/strategy_curves.json",
    ):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT_ROOT / name, root / name)
    _write_outputs(root)
    return root


def test_dvc_plots_show_draws_every_plot_with_no_network(project: Path) -> None:
    executable = chromium_or_skip()
    shown = _dvc(project, "plots", "show", "-o", "dvc_plots")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    page_file = project / "dvc_plots" / "index.html"
    html = page_file.read_text()
    assert "cdn.jsdelivr.net" not in html and html.count("vegaEmbed('#") == 5
    with Browser(executable) as browser:
        target = browser.call("Target.createTarget", url="about:blank")["targetId"]
        session = browser.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        # Offline before the page loads: a library fetched from anywhere would fail to load.
        browser.call("Network.enable", session)
        browser.call(
            "Network.emulateNetworkConditions",
            session,
            offline=True,
            latency=0,
            downloadThroughput=-1,
            uploadThroughput=-1,
        )
        browser.call("Page.enable", session)
        browser.call("Page.navigate", session, url=page_file.resolve().as_uri())
        page = Page(browser, session)
        page.wait_until("document.readyState === 'complete'")
        page.wait_until(
            "[...document.querySelectorAll('.vega-embed')].length >= 5 && "
            "[...document.querySelectorAll('.vega-embed')].every((e) => e.querySelector('svg'))"
        )
        state = page.evaluate(INSPECT)
    # loss and accuracy (three strategies each) and one confusion matrix per strategy.
    assert len(state["vega"]) == 5, state["vega"]
    for plot in state["vega"]:
        assert plot["marks"] > 0, plot
    curves = [plot for plot in state["vega"] if "confusion" not in plot["id"]]
    assert len(curves) == 2 and all(plot["line"] > 20 for plot in curves), curves
    # One colour per strategy, train solid and val dashed (DVC's own linear template drew all
    # six curves in one colour).
    for plot in curves:
        assert len(plot["strokes"]) == len(STRATEGIES), plot
        assert len(plot["dashes"]) == 2, plot
    assert state["images"] == [True, True, True]
    remote = [url for url in state["resources"] if not url.startswith(("file:", "data:"))]
    assert not remote, remote


def test_dvc_metrics_show_is_a_row_per_strategy_within_130_columns(project: Path) -> None:
    folder = project / "reports" / "metrics"
    folder.mkdir(parents=True, exist_ok=True)
    for strategy in STRATEGIES:
        # compare's MAIN_METRICS: the val figures choices are made on, then test's.
        values = {
            "val_accuracy": 0.976543,
            "val_loss": 0.0567891,
            "test_accuracy": 0.987654,
            "test_ece": 0.0123456,
        }
        assert tuple(values) == MAIN_METRICS
        if strategy != "scratch":
            values["backbone_weights"] = "random"
        (folder / f"{strategy}.json").write_text(json.dumps(values))
    shown = _dvc(project, "metrics", "show")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert max(len(line) for line in lines) <= 130, shown.stdout
    rows = {line.split()[0] for line in lines[1:]}
    assert rows == {f"reports/metrics/{strategy}.json" for strategy in STRATEGIES}, shown.stdout
    assert lines[0].split()[1:] == [
        "backbone_weights",
        "test_accuracy",
        "test_ece",
        "val_accuracy",
        "val_loss",
    ]
