"""The HTML report of a pipeline run: the strategies side by side, in one self-contained page.

content.py holds what the page shows and reads it from a run's outputs; views.py and
formatting.py turn it into the template's strings, images.py embeds the pictures, and html.py
renders and writes the page.
"""

from pipeline.reporting.content import (
    DatasetCard,
    Figure,
    FigureGroup,
    ReportContent,
    StrategySection,
    build_dataset_card,
    collect_strategy_figures,
    mlflow_run_url,
    read_classification_report,
)
from pipeline.reporting.html import render_report, write_report

__all__ = [
    "DatasetCard",
    "Figure",
    "FigureGroup",
    "ReportContent",
    "StrategySection",
    "build_dataset_card",
    "collect_strategy_figures",
    "mlflow_run_url",
    "read_classification_report",
    "render_report",
    "write_report",
]
