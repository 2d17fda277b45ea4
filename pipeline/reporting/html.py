"""The pipeline's HTML report: one self-contained page comparing the strategies of one run.

`render_report` turns a `ReportContent` (content.py: the dataset card, the comparison and
significance tables, the promotion's decision, one section per strategy) into an HTML string;
`write_report` writes it atomically. The first screen (1400 x 900) answers "which model, and is
it in service?": the promotion outcome and the comparison come before everything else. The page
has no network references at all: CSS is inline, every image is embedded as a base64 `data:`
URI (images.py), so it opens the same from disk, from a CI artifact or from MLflow, where it
is logged as a single file. Everything that comes from data (class names are users' folder
names) is escaped by the template engine's autoescaping.

Rendering is pure: the timestamp is passed in and figures are read from the paths given, so
equal content gives an equal page.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from pipeline.reporting import formatting, views
from pipeline.reporting.content import ReportContent
from pipeline.reporting.weights import weights_by_strategy, weights_headline
from pipeline.store import atomic_write

REPORT_FILE = "index.html"

DATA_FILES = ("template.html.j2",)
"""Read at run time: part of the report stage's code for DVC (see pipeline/wiring.py)."""
TEMPLATE = DATA_FILES[0]


def render_report(content: ReportContent) -> str:
    """The report as one self-contained HTML page (a pure function of `content`)."""
    strategies = views.strategy_views(content)
    weights = weights_by_strategy(content.strategies)
    footnotes, markers = views.significance_footnotes(content.significance, content.alpha, weights)
    val_accuracy = {
        section.name: section.metrics.get("val_accuracy") for section in content.strategies
    }
    comparison = views.comparison_view(
        content.comparison, markers, val_accuracy, views.promotion_badge(content.promotion)
    )
    anchors = {strategy["name"]: strategy["anchor"] for strategy in strategies}
    for row in comparison["rows"]:
        row["anchor"] = anchors.get(row["name"])
    page = {
        "title": content.title,
        "generated": formatting.format_time(content.generated),
        "dataset": views.dataset_view(content.dataset),
        "promotion": views.promotion_view(content.promotion, content.promotion_file),
        "label_issues": views.label_issues_view(content.label_issues),
        "comparison": comparison,
        "footnotes": footnotes,
        "significance": views.significance_view(content.significance, content.alpha, weights),
        "alpha": formatting.format_alpha(content.alpha),
        "strategies": strategies,
        "weights": weights_headline(content.strategies, content.backbone),
    }
    return _environment().get_template(TEMPLATE).render(**page)


def write_report(content: ReportContent, path: Path) -> Path:
    """Render the report and write it to `path` atomically (UTF-8, whatever the locale)."""
    path = Path(path)
    text = render_report(content)
    with atomic_write(path, "wb") as stream:
        stream.write(text.encode("utf-8"))
    return path


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
