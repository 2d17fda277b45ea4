"""The one interface every training strategy implements, and what it is given.

A strategy is a train function `(data, config block, context) -> TrainingResult` plus what it
declares it needs: images or cached features, and whether it is built on a pretrained
backbone. The train stage prepares exactly that and never branches on a strategy's name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import keras
from pydantic import BaseModel

from pipeline.config import AugmentationConfig, PipelineConfig
from pipeline.models.backbones import Backbone
from pipeline.models.builders import Architecture
from pipeline.training.backup import TrainingBackup
from pipeline.training.feed import FeedSource
from pipeline.training.fit import FitOptions, TrainingResult, fit_model, resolve_class_weights

logger = logging.getLogger(__name__)

DataKind = Literal["images", "features"]
"""Raw uint8 images (the model preprocesses them) or the features stage's conv-base outputs."""


@dataclass(frozen=True)
class TrainingData:
    """What a strategy fits on, as it declared: training and validation rows, streamed from
    the store (`FeedSource`); (inputs, labels) arrays are accepted too (tests, small data)."""

    train: FeedSource
    val: FeedSource
    num_classes: int
    kind: DataKind = "images"
    extractor: keras.Model | None = None
    """With features: the model that computed them, to put in front of the trained head."""
    seed: int = 0
    """Seeds the feed's per-epoch order (`train.seed`)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "train", FeedSource.of(self.train))
        object.__setattr__(self, "val", FeedSource.of(self.val))

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input's shape: an image's (H, W, C), or a feature map's."""
        return self.train.input_shape

    def class_weights(self, choice: str, strategy: str) -> dict[int, float] | None:
        """`train.<strategy>.class_weight` resolved for this train split's labels (every
        process holds them all), logged with the reason; what each of the strategy's fits
        weights the classes by, and what its `TrainingResult.class_weights` records."""
        key = f"train.{strategy}.class_weight"
        weights, reason = resolve_class_weights(
            choice, self.train.labels, self.num_classes, key=key
        )
        logger.info("class weights (%s) %s", key, reason)
        return weights


@dataclass(frozen=True)
class BackboneSetup:
    """The pretrained base a strategy builds on, ready to use."""

    descriptor: Backbone
    base: keras.Model
    """Built with the weights the run reports (`backbone_weights`)."""
    unfreeze_from: str
    """The layer fine-tuning unfreezes from, `auto` resolved for this backbone."""


@dataclass(frozen=True)
class DeviceSetup:
    """Where training runs: the precision policy applied, the devices, the process grid."""

    precision: str = "float32"
    devices: tuple[str, ...] = ()
    process_count: int = 1
    process_index: int = 0


@dataclass
class TrainingContext:
    """What every train function gets besides its data and its config block."""

    backbone: BackboneSetup | None = None
    """Set for a strategy that uses a backbone and trains on images."""
    devices: DeviceSetup = field(default_factory=DeviceSetup)
    callbacks: list[keras.callbacks.Callback] = field(default_factory=list)
    backup: TrainingBackup | None = None
    augmentation: AugmentationConfig | None = None
    """The strategy's augmentation, resolved for the dataset (None: off)."""
    architecture: Architecture | None = None
    """The architecture the strategy resolved for the dataset, where it has a choice."""

    def fit(
        self,
        model: keras.Model,
        data: TrainingData,
        options: FitOptions,
        **fit_options,
    ) -> dict[str, list[float]]:
        """`fit_model` on `data` with this context's callbacks and backup (what every strategy
        fits with); `fit_options` are fit_model's phase, initial_epoch and history_before."""
        return fit_model(
            model,
            data.train,
            data.val,
            options,
            seed=data.seed,
            callbacks=self.callbacks,
            backup=self.backup,
            **fit_options,
        )

    def require_backbone(self, strategy: str) -> BackboneSetup:
        """The backbone, or a clear error for a strategy run without one."""
        if self.backbone is None:
            raise ValueError(f"strategy {strategy} needs a backbone and its context has none")
        return self.backbone


TrainFunction = Callable[[TrainingData, Any, TrainingContext], TrainingResult]


def _on_images(block: BaseModel) -> DataKind:
    return "images"


def _no_architecture(block: BaseModel, dataset: str) -> Architecture | None:
    return None


@dataclass(frozen=True)
class Strategy:
    """A training strategy: its train function and what it needs.

    `data_kind` says from its config block whether a run trains on images or features;
    `architecture` resolves the architecture a run builds (logged as `train.architecture`);
    `config_block` finds its block in the config, `config.train.<name>` unless given.
    """

    name: str
    train: TrainFunction
    uses_backbone: bool
    data_kind: Callable[[BaseModel], DataKind] = _on_images
    architecture: Callable[[BaseModel, str], Architecture | None] = _no_architecture
    config_block: Callable[[PipelineConfig], BaseModel] | None = None

    def block(self, config: PipelineConfig) -> BaseModel:
        """This strategy's config block."""
        if self.config_block is not None:
            return self.config_block(config)
        return getattr(config.train, self.name)

    def trains_on_features(self, block: BaseModel) -> bool:
        """Whether a run with this block trains on the features stage's cached outputs."""
        return self.data_kind(block) == "features"

    def builds_backbone(self, block: BaseModel) -> bool:
        """Whether a run builds the backbone itself (cached features come with their own)."""
        return self.uses_backbone and not self.trains_on_features(block)
