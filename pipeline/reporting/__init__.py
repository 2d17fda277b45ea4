"""The HTML report of a pipeline run: the strategies side by side, in one self-contained page."""

from pipeline.reporting.html import (
    DatasetCard,
    Figure,
    FigureGroup,
    ReportContent,
    StrategySection,
    build_dataset_card,
    collect_strategy_figures,
    mlflow_run_url,
    read_classification_report,
    render_report,
    write_report,
)

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
