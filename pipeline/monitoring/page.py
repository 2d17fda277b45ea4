"""The monitor's page: one self-contained HTML file with the drift verdict in words and the
three pictures behind it (class mix, confidences, embeddings: reference against window), so a
person can see what moved without opening MLflow or a notebook."""

from __future__ import annotations

import base64
import html
import io
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from pipeline.monitoring.records import PREDICTED_CLASS, PROBABILITY, window_embeddings
from pipeline.monitoring.reference import Reference
from pipeline.store.files import atomic_write

logger = logging.getLogger(__name__)

DPI = 100
REFERENCE_COLOUR, WINDOW_COLOUR = "C0", "C1"
# Above this many classes the bar labels would overlap: they are turned upright.
MAX_FLAT_LABELS = 12
# A scatter of more points than this hides its own shape and makes a heavy PNG.
MAX_SCATTER_POINTS = 2000
HISTOGRAM_BINS = 20

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
.verdict { padding: 0.8em 1.2em; border-radius: 6px; margin-bottom: 1.5em; }
.drift { background: #fde2e1; border: 1px solid #e0908b; }
.calm { background: #e3f4e1; border: 1px solid #8cc68a; }
.quiet { background: #eeeeee; border: 1px solid #bbbbbb; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border-bottom: 1px solid #ddd; padding: 0.3em 0.8em; text-align: left; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; }
figcaption { color: #555; }
img { max-width: 100%; }
"""


def write_monitor_page(
    path: Path, verdict: dict, window: pd.DataFrame, reference: Reference, title: str
) -> None:
    """Write the monitor's page for `verdict` (detect_drift's dict) on `window` (read_window's
    frame) against `reference`, atomically, as UTF-8."""
    text = render_monitor_page(verdict, window, reference, title)
    with atomic_write(Path(path), "wb") as stream:
        stream.write(text.encode("utf-8"))


def render_monitor_page(
    verdict: dict, window: pd.DataFrame, reference: Reference, title: str
) -> str:
    """The monitor's page as an HTML string (a pure function of its arguments)."""
    figures = [
        (
            _class_figure(window, reference),
            "Predicted classes: the share of answers per class, reference against window.",
        ),
        (
            _confidence_figure(window, reference),
            "Confidence (top probability): density, reference against window.",
        ),
        (
            _embedding_figure(window, reference),
            "Embeddings: the first two dimensions, reference against window.",
        ),
    ]
    body = [
        f"<h1>{_escape(title)}</h1>",
        _verdict_section(verdict),
        *(_figure_html(figure, caption) for figure, caption in figures),
    ]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def _verdict_section(verdict: dict) -> str:
    """The verdict in words, then one table row per test."""
    tests: dict[str, dict[str, Any]] = verdict.get("tests", {})
    if not tests:
        headline, kind = "Not tested", "quiet"
    elif verdict.get("drift"):
        headline, kind = "Drift detected: " + ", ".join(verdict.get("fired", [])), "drift"
    else:
        headline, kind = "No drift", "calm"
    parts = [
        f'<section class="verdict {kind}">',
        f"<h2>{_escape(headline)}</h2>",
        f"<p>{_escape(verdict.get('reason', ''))}</p>",
        f"<p>{_escape(str(verdict.get('records', 0)))} records in the window; alpha "
        f"{_escape(format(float(verdict.get('alpha', float('nan'))), 'g'))}.</p>",
        "</section>",
    ]
    if tests:
        rows = [
            "<tr><th>Test</th><th>Result</th><th>Statistic</th><th>p-value</th>"
            "<th>Threshold</th><th>What it says</th></tr>"
        ]
        for name, test in tests.items():
            if test.get("skipped"):
                outcome = "skipped"
            else:
                outcome = "fired" if test.get("fired") else "quiet"
            rows.append(
                "<tr>"
                f"<td>{_escape(name)}</td>"
                f"<td>{_escape(outcome)}</td>"
                f'<td class="number">{_escape(_number(test.get("statistic")))}</td>'
                f'<td class="number">{_escape(_number(test.get("p_value")))}</td>'
                f'<td class="number">{_escape(_number(test.get("threshold")))}</td>'
                f"<td>{_escape(test.get('detail', ''))}</td>"
                "</tr>"
            )
        parts.append("<table>\n" + "\n".join(rows) + "\n</table>")
    return "\n".join(parts)


def _class_figure(window: pd.DataFrame, reference: Reference) -> Figure:
    """Side-by-side bars of each class's share of the answers."""
    names = list(reference.classes)
    window_names = window[PREDICTED_CLASS].astype(str) if len(window) else pd.Series([], dtype=str)
    # A class the reference does not know still gets its bar, so the page shows it.
    names += sorted(set(window_names) - set(names))
    reference_counts = np.bincount(reference.predicted, minlength=len(names))[: len(names)]
    window_counts = window_names.value_counts().reindex(names, fill_value=0).to_numpy()
    positions = np.arange(len(names))
    figure = Figure(figsize=(max(6.0, 0.45 * len(names) + 2.0), 4.0), dpi=DPI)
    axes = figure.add_subplot()
    width = 0.4
    axes.bar(
        positions - width / 2,
        _shares(reference_counts),
        width,
        label=f"reference ({reference_counts.sum()})",
        color=REFERENCE_COLOUR,
    )
    axes.bar(
        positions + width / 2,
        _shares(window_counts),
        width,
        label=f"window ({window_counts.sum()})",
        color=WINDOW_COLOUR,
    )
    axes.set_xticks(positions)
    axes.set_xticklabels(
        [_plain(name) for name in names], rotation=90 if len(names) > MAX_FLAT_LABELS else 0
    )
    axes.set_ylabel("share of answers")
    axes.legend()
    figure.tight_layout()
    return figure


def _confidence_figure(window: pd.DataFrame, reference: Reference) -> Figure:
    """Histograms (densities) of the top probability."""
    figure = Figure(figsize=(6.0, 4.0), dpi=DPI)
    axes = figure.add_subplot()
    window_confidences = window[PROBABILITY].to_numpy(dtype=np.float64) if len(window) else []
    values = np.concatenate([reference.confidences, window_confidences])
    values = values[np.isfinite(values)]
    low = float(values.min()) if len(values) else 0.0
    edges = np.linspace(min(low, 1.0 - 1e-6), 1.0, HISTOGRAM_BINS + 1)
    for sample, label, colour in (
        (reference.confidences, "reference", REFERENCE_COLOUR),
        (window_confidences, "window", WINDOW_COLOUR),
    ):
        if len(sample):
            axes.hist(
                sample,
                bins=edges,
                density=True,
                alpha=0.5,
                label=f"{label} ({len(sample)})",
                color=colour,
            )
    axes.set_xlabel("confidence (top probability)")
    axes.set_ylabel("density")
    axes.legend()
    figure.tight_layout()
    return figure


def _embedding_figure(window: pd.DataFrame, reference: Reference) -> Figure:
    """A scatter of the first two embedding dimensions; a note where there are none."""
    figure = Figure(figsize=(6.0, 5.0), dpi=DPI)
    axes = figure.add_subplot()
    window_points = window_embeddings(window) if len(window) else None
    drawn = 0
    for sample, label, colour in (
        (reference.embeddings, "reference", REFERENCE_COLOUR),
        (window_points, "window", WINDOW_COLOUR),
    ):
        if sample is None or sample.ndim != 2 or sample.shape[1] < 1 or not len(sample):
            continue
        # Evenly spaced rows, not random ones: the same data gives the same page.
        rows = np.linspace(0, len(sample) - 1, min(len(sample), MAX_SCATTER_POINTS)).astype(int)
        points = sample[rows]
        second = points[:, 1] if points.shape[1] > 1 else np.zeros(len(points))
        axes.scatter(
            points[:, 0], second, s=8, alpha=0.5, label=f"{label} ({len(sample)})", color=colour
        )
        drawn += 1
    if drawn:
        axes.set_xlabel("embedding dimension 1")
        axes.set_ylabel("embedding dimension 2")
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no embeddings to show", ha="center", va="center")
        axes.set_axis_off()
    figure.tight_layout()
    return figure


def _figure_html(figure: Figure, caption: str) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    source = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return (
        f'<figure><img src="{source}" alt="{_escape(caption)}">'
        f"<figcaption>{_escape(caption)}</figcaption></figure>"
    )


def _shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else np.zeros(len(counts))


def _number(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{float(value):.3g}"


def _plain(text: str) -> str:
    # Matplotlib reads text between dollar signs as mathematics: a class name is shown as
    # written.
    return str(text).replace("$", r"\$")


def _escape(text: Any) -> str:
    return html.escape(str(text), quote=True)
