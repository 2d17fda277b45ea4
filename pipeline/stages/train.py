"""Train one strategy (`python -m pipeline.stages.train <strategy> ...`) and track it in MLflow.

Writes the strategy's model folder: model.keras, classes.json, history.csv (the DVC plot) and
run.json (the typed run record: the MLflow run id and what is needed to log the run again, for
the evaluate stage and `pipeline sync-mlflow`).

The tracking server is checked first, before Keras loads: a server that is down stops the
stage in about a second, with its URI, instead of after minutes of MLflow's retries. The model
folder is replaced whole, only once training and its record succeeded (DVC persists it), so a
stage that fails, early or late, leaves the previous model folder as it was.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.config import STRATEGY_NAMES, PipelineConfig, load_config
from pipeline.entry import run_entry
from pipeline.errors import ConfigError
from pipeline.store import data_version, open_splits, read_json
from pipeline.tracking.context import execution_tags
from pipeline.tracking.server import check_tracking_server, tracking_uri

if TYPE_CHECKING:
    from pipeline.training.interface import Strategy

logger = logging.getLogger("pipeline.stages.train")


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train", description=__doc__.split("\n\n")[0])
    parser.add_argument("strategy", help=f"one of {', '.join(STRATEGY_NAMES)}")
    parser.add_argument("--prepared", type=Path, required=True, help="the prepared-data folder")
    parser.add_argument("--gate", type=Path, required=True, help="the data gate's summary JSON")
    parser.add_argument("--features", type=Path, help="the features folder (feature_extraction)")
    parser.add_argument("--out", type=Path, required=True, help="the strategy's model folder")
    args = parser.parse_args(argv)
    if args.strategy not in STRATEGY_NAMES:
        raise ConfigError(
            f"unknown strategy {args.strategy!r}; allowed strategies: {', '.join(STRATEGY_NAMES)}"
        )
    return args


def main(argv: Sequence[str]) -> None:
    args = parse_arguments(argv)
    config = load_config()
    check_tracking_server(tracking_uri(Path.cwd()))

    # Keras and MLflow load only now (about 8 s): a closed tracking port fails before that.
    from pipeline.training.workers import initialize_workers_from_env

    # Several processes (PIPELINE_COORDINATOR, ...): join them before any other JAX work.
    initialize_workers_from_env()
    from pipeline.training.strategies import STRATEGIES

    train_strategy(
        STRATEGIES[args.strategy], config, args.prepared, args.gate, args.features, args.out
    )


def train_strategy(
    strategy: Strategy,
    config: PipelineConfig,
    prepared: Path,
    gate: Path,
    features: Path | None,
    out: Path,
    root: Path | None = None,
) -> None:
    """Train one registered strategy on the prepared data and record its run: what `main`
    does once the arguments, the config and the tracking server are checked."""
    from pipeline.training.tracked import RunIdentity, run_params, train_and_record

    root = Path.cwd() if root is None else root
    if strategy.trains_on_features(strategy.block(config)) and features is None:
        raise ConfigError(f"strategy {strategy.name} trains on cached features: pass --features")
    summary = read_json(gate)
    identity = RunIdentity(
        experiment_name=config.mlflow.experiment_name,
        run_name=f"{config.data.dataset}-{strategy.name}",
        tags={
            "dataset": config.data.dataset,
            "strategy": strategy.name,
            **execution_tags(root),
            "data_version": data_version(prepared),
            **_validation_tags(summary),
        },
        params=run_params(strategy, config),
        validation_summary=summary,
    )
    train_and_record(strategy, config, open_splits(prepared), identity, features, out, root)


def _validation_tags(summary: dict) -> dict[str, str]:
    """The data gate's verdict on the data this run trains on."""
    return {
        "validation_passed": str(summary["passed"]).lower(),
        "validation_failures": str(summary["failures"]),
        "validation_warnings": str(summary["warnings"]),
    }


if __name__ == "__main__":
    run_entry(main, "stage 'train'")
