"""What a trial is worth: its validation figure, and nothing of the test split.

A trial's experiment leaves DVC metrics `reports/metrics/<strategy>.json`, each holding val_ and
test_ figures side by side. `val_figures` keeps the val_ keys and drops everything else before
any other function sees them, so no choice (the trial's value, the best strategy) can lean on a
test figure. `reported_test_figures` exists only for the summary's line on the winner: read once,
reported, never compared.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any, Literal

from pipeline.config import STRATEGY_NAMES

VAL_PREFIX = "val_"
TEST_PREFIX = "test_"
BEST = "best"


class MissingFigure(Exception):
    """The experiment's metrics lack the figure the study optimises; the message says which."""


def strategy_of(metrics_path: str) -> str | None:
    """The strategy a DVC metrics file belongs to (`reports/metrics/<strategy>.json`)."""
    path = PurePosixPath(metrics_path.replace("\\", "/"))
    if path.suffix == ".json" and path.parent.name == "metrics" and path.stem in STRATEGY_NAMES:
        return path.stem
    return None


def _figures(metrics: Mapping[str, Any], prefix: str) -> dict[str, dict[str, float]]:
    found: dict[str, dict[str, float]] = {}
    for path, values in metrics.items():
        strategy = strategy_of(path)
        if strategy is None or not isinstance(values, Mapping):
            continue
        kept = {
            key: float(value)
            for key, value in values.items()
            if key.startswith(prefix) and isinstance(value, int | float)
            and not isinstance(value, bool)
        }  # fmt: skip
        if kept:
            found[strategy] = kept
    return found


def val_figures(metrics: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """{strategy: {val_ key: value}} from an experiment's metrics ({file: {key: value}})."""
    return _figures(metrics, VAL_PREFIX)


def reported_test_figures(metrics: Mapping[str, Any], strategy: str) -> dict[str, float]:
    """The winner's test figures, for the summary only: nothing chooses on them."""
    return _figures(metrics, TEST_PREFIX).get(strategy, {})


def objective(
    val: Mapping[str, Mapping[str, float]],
    strategy: str,
    metric: str,
    direction: Literal["maximize", "minimize"],
) -> tuple[float, str]:
    """(the trial's value, the strategy it is of): `metric` of `strategy`, or with `best` the
    best strategy's by that same val figure. Raises MissingFigure naming what is missing."""
    if not metric.startswith(VAL_PREFIX):
        raise ValueError(f"{metric}: a study optimises a val_ figure only")
    candidates = list(val) if strategy == BEST else [strategy]
    scored = {name: val[name][metric] for name in candidates if metric in val.get(name, {})}
    if not scored:
        where = ", ".join(f"reports/metrics/{name}.json" for name in candidates) or (
            "reports/metrics/<strategy>.json"
        )
        raise MissingFigure(
            f"no {metric} in {where}: the compare stage writes it beside the test figures"
        )
    pick = max if direction == "maximize" else min
    chosen = pick(sorted(scored), key=lambda name: scored[name])
    return scored[chosen], chosen
