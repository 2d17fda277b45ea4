"""Validate params.yaml, and everything it implies, before any other stage runs.

Every stage depends on this stage's output, and DVC deletes a stage's outputs before running
it: checking here, first, means a typo, a missing image folder, a dataset with no known address
or a model no builder could make stops the pipeline while earlier results are intact. So does
an MLflow tracking server (MLFLOW_TRACKING_URI) that does not answer.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.config import (
    STRATEGY_NAMES,
    PipelineConfig,
    ReduceLrConfig,
    ScratchConfig,
    load_config,
)
from pipeline.datasets.fetch import resolve_source, source_overrides
from pipeline.datasets.folders import scan_image_folder
from pipeline.datasets.sources import DATASETS
from pipeline.entry import run_entry
from pipeline.errors import ConfigError, ModelError
from pipeline.models.backbones import (
    BACKBONES,
    check_backbone_input,
    check_backbone_layer,
    resolve_unfreeze_from,
)
from pipeline.models.builders import (
    check_architecture,
    check_pooling_blocks,
    resolve_architecture,
)
from pipeline.models.weights import check_weights
from pipeline.store import write_json
from pipeline.tracking.server import check_tracking_server, tracking_uri

logger = logging.getLogger("pipeline.stages.check_params")

SERVER_TIMEOUT = 3.0
"""Seconds a tracking server has to answer /health: a closed port fails at once, a host that
drops packets costs this long."""


def check_dataset_source(config: PipelineConfig) -> None:
    """Raise DataError if the configured dataset cannot be fetched as configured."""
    data = config.data
    if data.dataset == "image_folder":
        # The scan refuses class names no model could answer with (check_class_names).
        scan_image_folder(Path(data.image_folder), follow_links=data.follow_links)
        return
    spec = DATASETS[data.dataset]
    override = source_overrides(data.sources).get(spec.name)
    for source in spec.files:
        resolve_source(spec, source, data.mirror, override)


def check_models(config: PipelineConfig) -> None:
    """Raise ConfigError naming every key whose value a model builder would reject, given the
    dataset's image shape: what would otherwise fail only inside a training stage."""
    spec = DATASETS[config.data.dataset]
    shape = spec.image_shape(config.data.image_size)
    scratch = config.train.scratch
    if config.backbone.name not in BACKBONES:
        raise ConfigError(
            f"params.yaml: backbone.name = {config.backbone.name!r} is not a known backbone; "
            f"choose one of {', '.join(BACKBONES)}"
        )
    backbone = BACKBONES[config.backbone.name]

    def check_scratch() -> None:
        architecture = resolve_architecture(scratch.architecture, spec.name)
        if architecture.name == "small_convnet":
            check_pooling_blocks(shape, len(scratch.conv_filters))
        check_architecture(architecture, shape, conv_filters=scratch.conv_filters)

    # small_convnet's size comes from conv_filters: that is the key to fix.
    scratch_key, scratch_value = "train.scratch.architecture", scratch.architecture
    if scratch.architecture == "small_convnet":
        scratch_key, scratch_value = "train.scratch.conv_filters", scratch.conv_filters
    checks = [
        (scratch_key, scratch_value, check_scratch),
        (
            "backbone.image_size",
            config.backbone.image_size,
            lambda: check_backbone_input(backbone, config.backbone.image_size),
        ),
        (
            "backbone.weights",
            config.backbone.weights,
            lambda: check_weights(config.backbone.weights, backbone),
        ),
        (
            "backbone.unfreeze_from",
            config.backbone.unfreeze_from,
            lambda: check_backbone_layer(
                backbone, resolve_unfreeze_from(backbone, config.backbone.unfreeze_from)
            ),
        ),
    ]
    problems = []
    for key, value, check in checks:
        try:
            check()
        except ModelError as error:
            problems.append(f"  - {key} = {value!r}: {error}")
    if problems:
        where = f"data.dataset {spec.name} has {'x'.join(map(str, shape))} images"
        raise ConfigError(
            f"params.yaml asks for models that cannot be built ({where}); fix these keys:\n"
            + "\n".join(problems)
        )


SMALL_CONVNET_KEYS = ("conv_filters", "dense_units", "dropout_rate")
"""The train.scratch keys only small_convnet reads: every other architecture is fixed."""


def ignored_keys(config: PipelineConfig) -> list[str]:
    """One line per params key set to something other than its default that nothing will
    read with the rest of params.yaml as it is (the key, its value, and why): a sweep of such a
    key would take minutes for an identical result. Keys left at their defaults say nothing."""
    lines = []
    scratch = config.train.scratch
    architecture = resolve_architecture(scratch.architecture, config.data.dataset).name
    if architecture != "small_convnet":
        chosen = (
            f"auto chooses {architecture} for {config.data.dataset}"
            if scratch.architecture == "auto"
            else f"{architecture} is fixed"
        )
        for key in SMALL_CONVNET_KEYS:
            value = getattr(scratch, key)
            if value != ScratchConfig.model_fields[key].default:
                lines.append(
                    f"train.scratch.{key} = {value!r} is ignored: only architecture small_convnet "
                    f"reads it, and train.scratch.architecture is {scratch.architecture} "
                    f"({chosen})"
                )
    for name in STRATEGY_NAMES:
        block = getattr(config.train, name)
        defaults = type(block).model_fields
        reduce_defaults: ReduceLrConfig = defaults["reduce_lr"].default
        if (
            block.early_stopping_patience == 0
            and block.early_stopping_monitor != defaults["early_stopping_monitor"].default
        ):
            lines.append(
                f"train.{name}.early_stopping_monitor = {block.early_stopping_monitor!r} is "
                f"ignored: train.{name}.early_stopping_patience is 0 (early stopping off)"
            )
        if block.reduce_lr.patience == 0:
            for key in ("factor", "min_learning_rate"):
                value = getattr(block.reduce_lr, key)
                if value != getattr(reduce_defaults, key):
                    lines.append(
                        f"train.{name}.reduce_lr.{key} = {value!r} is ignored: "
                        f"train.{name}.reduce_lr.patience is 0 (ReduceLROnPlateau off)"
                    )
    return lines


def check_tracking(project_root: Path, timeout: float = SERVER_TIMEOUT) -> None:
    """Raise TrackingUnavailable, naming the URI and the fix, when MLFLOW_TRACKING_URI is an
    http(s) server that does not answer: the training stages would otherwise delete their
    models before finding out. The embedded SQLite store (the default) is not touched here, so
    the default costs nothing; the stages that write to it check its folder themselves."""
    uri = tracking_uri(project_root)
    if urlsplit(uri).scheme in ("http", "https"):
        check_tracking_server(uri, timeout)


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="check_params", description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="the marker written when valid")
    args = parser.parse_args(argv)
    config = load_config()
    check_models(config)
    for line in ignored_keys(config):
        logger.warning(line)
    check_dataset_source(config)
    check_tracking(Path.cwd())
    # The content is constant on purpose: re-checking valid params must not re-run anything.
    write_json(args.out, {"params": "valid"})
    logger.info("params.yaml is valid (dataset=%s)", config.data.dataset)


if __name__ == "__main__":
    run_entry(main, "stage 'check_params'")
