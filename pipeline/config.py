"""Typed model of params.yaml: load it once, fail early and by name on anything wrong.

Importing this module must stay cheap (no Keras, no MLflow): the `check_params` stage runs it
before every other stage so that a typo stops the pipeline before any output is touched.
"""

from __future__ import annotations

import re
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from pipeline.datasets.sources import DATASET_NAMES, DATASETS
from pipeline.errors import ConfigError

STRATEGY_NAMES: tuple[str, ...] = ("scratch", "feature_extraction", "fine_tune")
"""The training strategies (`train.<name>` blocks), in the order the pipeline reports them."""
CLASS_WEIGHT_AUTO_RATIO = 3.0
"""`class_weight: auto` weights the classes when the largest has more than this many times the
train images of the smallest."""

WEIGHT_KEYWORDS: tuple[str, ...] = ("auto", "imagenet", "hed", "random")
EXPORT_NAMES: tuple[str, ...] = (
    "onnx",
    "onnx-fp16",
    "onnx-int8",
    "tflite",
    "tflite-fp16",
    "tflite-int8",
    "saved_model",
)
"""Exports by name: a format, and its quantization after a dash (pipeline.export.formats)."""

_YAML_BOOL = "tag:yaml.org,2002:bool"
_YAML_FLOAT = "tag:yaml.org,2002:float"

DatasetName = Literal[DATASET_NAMES]  # type: ignore[valid-type]
Fraction = Annotated[float, Field(gt=0.0, lt=1.0)]
DropoutRate = Annotated[float, Field(ge=0.0, lt=1.0)]


class _Strict(BaseModel):
    """Every block rejects unknown keys, so a typo such as `epoch:` is an error, not a no-op,
    and every value must have its key's type: `epochs: true` or `tensorboard: "no"` is an error,
    not 1 epoch or false. A float key still takes an integer (`learning_rate: 1`)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


_URL_SCHEMES = ("http://", "https://", "ftp://", "file://")


def _require_scheme(value: str | None, what: str) -> str | None:
    if value is not None and not value.startswith(_URL_SCHEMES):
        raise ValueError(f"must be {what} starting with one of {', '.join(_URL_SCHEMES)}")
    return value


class SourceConfig(_Strict):
    """Where to fetch one dataset from instead of the table in pipeline/datasets/sources.py."""

    url: str | None = None
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")] | None = None

    @field_validator("url")
    @classmethod
    def _known_scheme(cls, value: str | None) -> str | None:
        return _require_scheme(value, "a URL")


class DataConfig(_Strict):
    dataset: DatasetName = "digits"
    # The folder read when dataset is image_folder. The default placeholder exists (it holds a
    # README) because dvc.yaml lists this path as a dependency of the download stage.
    image_folder: str = "data/images"
    image_size: PositiveInt = 150
    resize: Literal["stretch", "pad"] = "stretch"
    on_bad_image: Literal["skip", "fail"] = "skip"
    # A bound on what one image may cost to decode (width x height, read from the header before
    # any pixel is allocated): a 0.3 MB PNG can declare 169 M pixels.
    max_pixels: PositiveInt = 40_000_000
    # Symlinks in data.image_folder that resolve outside it are skipped unless this is true.
    follow_links: bool = False
    max_images: PositiveInt | None = None
    val_fraction: Fraction = 0.15
    test_fraction: Fraction = 0.2
    seed: int = 42
    mirror: str | None = None
    sources: dict[str, SourceConfig] = {}
    # Processes that decode and hash image files at split (auto: one, whose decoding threads
    # already use every core; more pay only on many cores). The store is byte-identical
    # whatever this says: only the time changes.
    workers: PositiveInt | Literal["auto"] = "auto"

    @field_validator("mirror")
    @classmethod
    def _mirror_scheme(cls, value: str | None) -> str | None:
        return _require_scheme(value, "a base URL (holding <dataset>/<file> for each dataset)")

    @field_validator("sources")
    @classmethod
    def _known_sources(cls, value: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        downloadable = [name for name, spec in DATASETS.items() if spec.files]
        for name, source in value.items():
            spec = DATASETS.get(name)
            if spec is None or not spec.files:
                raise ValueError(
                    f"{name!r} has no files to download; allowed keys: {', '.join(downloadable)}"
                )
            if source.url and len(spec.files) > 1 and not source.url.endswith("/"):
                raise ValueError(
                    f"{name}.url: {name} has {len(spec.files)} files, so give the folder URL "
                    "that holds them, ending in '/'"
                )
            if source.sha256 and any(file.sha256 for file in spec.files):
                raise ValueError(
                    f"{name}.sha256: the checksum of {name} is fixed in "
                    "pipeline/datasets/sources.py; a mirror must serve the identical file"
                )
        return value

    @model_validator(mode="after")
    def _leave_training_data(self) -> DataConfig:
        train_fraction = 1.0 - self.val_fraction - self.test_fraction
        if train_fraction < 0.05:
            raise ValueError(
                f"val_fraction ({self.val_fraction}) + test_fraction ({self.test_fraction}) "
                f"leaves {train_fraction:.2f} of the data for training; keep their sum at most 0.95"
            )
        return self


class ValidateConfig(_Strict):
    """Bounds of the Great Expectations gate (pipeline/validation.py)."""

    min_images_per_class: PositiveInt = 1
    split_tolerance: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.05
    max_class_imbalance: Annotated[float, Field(ge=1.0)] = 10.0
    max_blank_fraction: Annotated[float, Field(ge=0.0, le=1.0)] = 0.01
    near_duplicate_distance: Annotated[int, Field(ge=0, le=64)] = 2
    reference: str | None = None
    max_drift: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2
    # Identical images under two classes: fail the gate naming both files, or drop them at split
    # (listed in reports/data/skipped.csv).
    label_conflicts: Literal["fail", "drop"] = "fail"

    @field_validator("reference")
    @classmethod
    def _reference_exists(cls, value: str | None) -> str | None:
        # "store.json" is pipeline.store.STORE_FILE, spelled here so that this module, which
        # every stage imports, does not import the store.
        if value is not None and not (Path(value) / "store.json").is_file():
            raise ValueError(
                f"reference {value!r} must be a prepared-data folder holding a split store: "
                "store.json and its shards/ (a copy of an earlier data/prepared; a folder of "
                ".npz splits is the old format, which the split stage rewrites)"
            )
        return value


class BackboneConfig(_Strict):
    """The pretrained base. What depends on the backbone itself (its name, smallest input and
    layer names) is checked against the backbone registry by the check_params stage, so that
    this module, which every stage imports, never needs the registry."""

    name: Annotated[str, Field(min_length=1)] = "vgg16"
    weights: str = "auto"
    image_size: Annotated[int, Field(ge=1, le=512)] = 32
    # auto: the backbone's own default (block5_conv1 for vgg16, the course's).
    unfreeze_from: Annotated[str, Field(min_length=1)] = "auto"
    batch_size: PositiveInt = 64

    @field_validator("weights")
    @classmethod
    def _known_weights(cls, value: str) -> str:
        if value in WEIGHT_KEYWORDS:
            return value
        if not value.endswith(".h5"):
            raise ValueError(
                f"must be one of {', '.join(WEIGHT_KEYWORDS)} or a path to a notop '.h5' (or "
                f"'.weights.h5') weights file of the backbone, got {value!r}"
            )
        if not Path(value).is_file():
            raise ValueError(f"weights file {value!r} does not exist")
        return value


class AugmentationConfig(_Strict):
    """The course's ImageDataGenerator settings (listing 5.11) as Keras layers inside the model,
    active only while training. `enabled: auto` turns them on except for digit datasets, where a
    flip or a large rotation changes the class (a mirrored 2 is no digit; a turned 6 is a 9)."""

    enabled: bool | Literal["auto"] = "auto"
    rotation: Annotated[float, Field(ge=0.0, le=180.0)] = 40.0  # degrees, either way
    width_shift: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2  # fraction of the width
    height_shift: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    shear: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2  # keras.layers.RandomShear's factor
    zoom: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.2
    horizontal_flip: bool = True
    fill_mode: Literal["nearest", "reflect", "wrap", "constant"] = "nearest"

    def resolve(self, augment_by_default: bool) -> AugmentationConfig | None:
        """These settings when augmentation is on for this dataset, else None."""
        enabled = augment_by_default if self.enabled == "auto" else self.enabled
        return self if enabled else None


class ReduceLrConfig(_Strict):
    """keras.callbacks.ReduceLROnPlateau on val_loss; patience 0 turns it off."""

    patience: NonNegativeInt = 0
    factor: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    min_learning_rate: Annotated[float, Field(ge=0.0)] = 1e-6


class _TrainCommon(_Strict):
    epochs: PositiveInt
    batch_size: PositiveInt = 32
    learning_rate: PositiveFloat = 1e-3
    optimizer: Literal["adam", "rmsprop", "sgd"] = "adam"
    # Stops when early_stopping_monitor has not improved for this many epochs and restores
    # the weights of its best epoch; 0 trains every epoch.
    early_stopping_patience: NonNegativeInt = 0
    # Which epoch early stopping keeps (the log names it and why): val_loss, the lowest
    # validation loss (on digits' 264 val images the steadier choice: 0.9927 against 0.9909
    # mean test accuracy over three seeds); val_accuracy, the epoch the report's headline
    # would pick, ties broken by the lower val_loss.
    early_stopping_monitor: Literal["val_accuracy", "val_loss"] = "val_loss"
    reduce_lr: ReduceLrConfig = ReduceLrConfig()
    augmentation: AugmentationConfig = AugmentationConfig()
    # Weights each class's loss by n_images / (n_classes * n_class_images) (scikit-learn's
    # compute_class_weight). auto: balanced when the largest class of the train split has more
    # than CLASS_WEIGHT_AUTO_RATIO (3) times the images of the smallest, else none.
    class_weight: Literal["auto", "none", "balanced"] = "auto"


class ScratchConfig(_TrainCommon):
    # Long enough for digits_convnet to beat an RBF SVM on digits; early stopping and the
    # schedule end it sooner.
    early_stopping_patience: NonNegativeInt = 15
    reduce_lr: ReduceLrConfig = ReduceLrConfig(patience=5, factor=0.3, min_learning_rate=1e-5)
    # auto: the dataset's network (digits_convnet for digits, mnist_bn_convnet for mnist and
    # fashion_mnist, the course's otherwise); or a name from pipeline/models/builders.py.
    architecture: Annotated[str, Field(min_length=1)] = "auto"
    # The options of small_convnet; the course's listings are fixed.
    conv_filters: Annotated[list[PositiveInt], Field(min_length=1, max_length=6)] = [32, 64]
    dense_units: PositiveInt = 64
    dropout_rate: DropoutRate = 0.5


class FeatureExtractionConfig(_TrainCommon):
    # cached: a dense head on the features stage's outputs (listing 5.18), fast, no
    # augmentation. end_to_end: the frozen base inside the model, run on every batch, so
    # augmentation can apply (listings 5.20/5.21).
    mode: Literal["cached", "end_to_end"] = "cached"
    learning_rate: PositiveFloat = 2e-5
    optimizer: Literal["adam", "rmsprop", "sgd"] = "rmsprop"
    dense_units: PositiveInt = 256
    dropout_rate: DropoutRate = 0.5

    @model_validator(mode="after")
    def _cached_features_are_not_augmented(self) -> FeatureExtractionConfig:
        if self.mode == "cached" and self.augmentation.enabled is True:
            raise ValueError(
                "augmentation.enabled is true, but mode cached trains on features computed "
                "once, which cannot be augmented: set mode: end_to_end, or enabled: auto"
            )
        return self


class FineTuneConfig(_TrainCommon):
    """The course's five steps: add a head, freeze the base, train the head for `head_epochs`
    at `head_learning_rate`, unfreeze from `backbone.unfreeze_from`, then train both for
    `epochs` at the low `learning_rate`."""

    head_epochs: PositiveInt = 3
    head_learning_rate: PositiveFloat = 1e-3
    learning_rate: PositiveFloat = 1e-5
    optimizer: Literal["adam", "rmsprop", "sgd"] = "rmsprop"
    dense_units: PositiveInt = 256
    dropout_rate: DropoutRate = 0.5


class TrainConfig(_Strict):
    # Seeds Python, NumPy and the backend before every strategy trains.
    seed: int = 42
    # On a CPU, two runs with the same seed give identical metrics (TensorFlow's deterministic
    # ops); slower on a GPU.
    deterministic: bool = True
    # auto: mixed_bfloat16 (or mixed_float16 with loss scaling) on a GPU, float32 on a CPU.
    precision: Literal["auto", "float32", "mixed_bfloat16", "mixed_float16"] = "auto"
    # TensorBoard logs of every training (scalars per epoch, the graph where the backend gives
    # one), under logs/<strategy>/<run>, also stored in the strategy's MLflow run.
    tensorboard: bool = True
    # temperature: one scalar fitted on the val split (lowest NLL) divides the model's logits,
    # inside the saved model, so served probabilities are calibrated; the argmax is unchanged.
    calibration: Literal["temperature", "none"] = "temperature"
    scratch: ScratchConfig
    feature_extraction: FeatureExtractionConfig
    fine_tune: FineTuneConfig


# A registered model's name: MLflow allows any text, but a URI (`models:/<name>@champion`) and
# a shell command line must hold it unquoted.
RegisteredModelName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class MlflowConfig(_Strict):
    experiment_name: Annotated[str, Field(min_length=1)] = "image-classifiers"
    # None: "<dataset>-classifier", so each dataset's models have their own registry entry.
    registered_model: RegisteredModelName | None = None

    def registered_model_name(self, dataset: str) -> str:
        return self.registered_model or f"{dataset.replace('_', '-')}-classifier"


Rate = Annotated[float, Field(ge=0.0, le=1.0)]


class PromoteConfig(_Strict):
    """The promotion gate: a challenger becomes champion only when it passes every criterion."""

    # `best`: the strategy with the highest val accuracy (the test split judges it, never
    # chooses it); or one strategy by name.
    strategy: Literal[("best", *STRATEGY_NAMES)] = "best"  # type: ignore[valid-type]
    min_accuracy: Rate = 0.7
    min_improvement: Rate = 0.0
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    min_class_recall: Rate = 0.5
    # The challenger's expected calibration error on the test split may be at most this
    # (null: calibration does not gate).
    max_ece: Rate | None = None
    # The exports each newly registered version carries (`pipeline export`'s names), each
    # refused unless it matches the Keras model on the test split; []: none.
    exports: list[Literal[EXPORT_NAMES]] = ["onnx"]  # type: ignore[valid-type]

    @field_validator("exports")
    @classmethod
    def _each_once(cls, value: list[str]) -> list[str]:
        repeated = sorted({name for name in value if value.count(name) > 1})
        if repeated:
            raise ValueError(f"lists {', '.join(repeated)} more than once; name each export once")
        return value


class ServeConfig(_Strict):
    """`pipeline serve`: what answers requests (its command-line flags override these)."""

    # keras: the Keras model; onnx: the version's ONNX export through onnxruntime (the version
    # must carry it: promote.exports lists onnx), the same requests and answers, faster.
    backend: Literal["keras", "onnx"] = "keras"


class LabelIssuesConfig(_Strict):
    """Suspected label errors of the train and val splits (reports/label_issues.csv)."""

    # Out-of-fold probabilities: K folds, each image scored by a model that never saw it.
    folds: Annotated[int, Field(ge=2, le=20)] = 5
    gallery_images: NonNegativeInt = 24  # the worst suspects shown in the report


class PatternsConfig(_Strict):
    """Filter patterns by gradient ascent in input space (the course's listings 5.32-5.39)."""

    filters: NonNegativeInt = 8  # patterns per layer (0: none)
    size: Annotated[int, Field(ge=16, le=512)] = 64  # side of each pattern, in pixels
    # 15 steps of 20 move as far as keras-io's 30 of 10 and draw the same patterns, in half the
    # time (the slowest figure: gradient ascent through VGG16 up to block5_conv1).
    steps: PositiveInt = 15  # gradient-ascent steps
    step_size: PositiveFloat = 20.0
    # The ascent's arithmetic. auto: bfloat16 where it is native (a CPU with AMX or AVX-512
    # BF16 under TensorFlow, a bfloat16 GPU or TPU), else float32. On such a CPU it draws the
    # same patterns 2.5 times as fast; every metric is computed in float32 whatever this says.
    precision: Literal["auto", "float32", "bfloat16"] = "auto"


class EvaluateConfig(_Strict):
    """What the evaluate and report stages show beyond the test metrics."""

    # McNemar's test between every two strategies: a difference counts below this p-value.
    alpha: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.05
    gradcam_images: NonNegativeInt = 12  # test images with Grad-CAM heatmaps, mistakes first
    gallery_images: NonNegativeInt = 32  # test images in the predictions mosaic
    mistakes: NonNegativeInt = 16  # the most confident mistakes shown
    augmented_versions: NonNegativeInt = 4  # augmented copies of one training image
    activation_channels: Annotated[int, Field(ge=1, le=256)] = 16  # channels per conv layer
    patterns: PatternsConfig = PatternsConfig()
    # Where the report links each run id; null: the tracking server's address when it is an
    # http(s) server, else no links.
    mlflow_ui: str | None = None

    @field_validator("mlflow_ui")
    @classmethod
    def _ui_address(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(
                "must be the MLflow UI's address, starting with http:// or https:// (e.g. "
                "http://127.0.0.1:5000), or null"
            )
        return value


TUNE_METRICS: tuple[str, ...] = ("val_accuracy", "val_loss")
"""What `pipeline tune` may optimise: validation figures only (never test's)."""
TUNE_LOWER_IS_BETTER: tuple[str, ...] = ("val_loss",)


class TuneRange(_Strict):
    """A number drawn between `low` and `high` (integers when both are integers), on a log
    scale with `log: true`, in steps of `step` when given."""

    low: int | float
    high: int | float
    log: bool = False
    step: PositiveInt | PositiveFloat | None = None

    @model_validator(mode="after")
    def _ordered(self) -> TuneRange:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"log: true needs low above 0, got {self.low}")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined; drop one")
        return self

    @property
    def integer(self) -> bool:
        return (
            isinstance(self.low, int)
            and isinstance(self.high, int)
            and (self.step is None or isinstance(self.step, int))
        )


TuneChoices = Annotated[list[int | float | str | bool], Field(min_length=2)]


class TuneConfig(_Strict):
    """`pipeline tune`: Optuna proposes params, DVC's queue runs each trial as an experiment,
    and a validation figure (never a test one) goes back to the study."""

    # What the study optimises: a val figure of `strategy` (TUNE_METRICS).
    metric: Literal[TUNE_METRICS] = "val_accuracy"  # type: ignore[valid-type]
    # auto: promote.strategy (with `best`, the best strategy's figure); or one strategy by name.
    strategy: Literal[("auto", "best", *STRATEGY_NAMES)] = "auto"  # type: ignore[valid-type]
    # Optuna's storage: null is optuna.db (SQLite) in the project; postgresql+psycopg://... lets
    # workers on several hosts share one study.
    storage: str | None = None
    # The study's name; null: <dataset>-<strategy>-<metric>.
    study: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_]*$")] | None = None
    # The search space: a params key (dotted, as `dvc exp run -S` names it) and either a range
    # {low, high, log, step} or a list of choices.
    space: dict[str, TuneRange | TuneChoices] = Field(
        default_factory=lambda: {
            # Both strategies' rates span the course's values; the head's dropout too.
            "train.scratch.learning_rate": TuneRange(low=0.0003, high=0.003, log=True),
            "train.feature_extraction.learning_rate": TuneRange(low=0.00001, high=0.0003, log=True),
            "train.feature_extraction.dropout_rate": TuneRange(low=0.2, high=0.6),
        }
    )

    @field_validator("space")
    @classmethod
    def _known_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems = []
        for key in value:
            if key.split(".")[0] in ("tune", "mlflow", "serve") or not _is_params_key(key):
                problems.append(key)
        if problems:
            raise ValueError(
                f"{', '.join(problems)}: not a params key a trial can set; name a key of data, "
                "validate, backbone, train, evaluate, label_issues or promote, dotted "
                "(train.scratch.learning_rate)"
            )
        return value

    def resolved_strategy(self, promote_strategy: str) -> str:
        """The strategy whose figure counts: `best` or one by name."""
        return promote_strategy if self.strategy == "auto" else self.strategy

    @property
    def direction(self) -> Literal["maximize", "minimize"]:
        return "minimize" if self.metric in TUNE_LOWER_IS_BETTER else "maximize"


def _is_params_key(dotted: str) -> bool:
    """Whether `dotted` names a setting (a leaf) of PipelineConfig, as params.yaml spells it."""
    model: Any = PipelineConfig
    parts = dotted.split(".")
    for position, part in enumerate(parts):
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        if part not in fields:
            return False
        model = fields[part].annotation
        if position == len(parts) - 1:
            return not (isinstance(model, type) and issubclass(model, BaseModel))
    return False


class PipelineConfig(_Strict):
    data: DataConfig = DataConfig()
    # `validate` would shadow BaseModel.validate, so the field has another name and the alias.
    validation: ValidateConfig = Field(ValidateConfig(), alias="validate")
    backbone: BackboneConfig = BackboneConfig()
    train: TrainConfig
    mlflow: MlflowConfig = MlflowConfig()
    promote: PromoteConfig = PromoteConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    label_issues: LabelIssuesConfig = LabelIssuesConfig()
    serve: ServeConfig = ServeConfig()
    tune: TuneConfig = TuneConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=True)


class ParamsLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans and floats, as DVC reads params.yaml.

    PyYAML follows YAML 1.1: `no`, `off` and `yes` are booleans and `1e-05` is a string. DVC
    (ruamel, YAML 1.2) reads them the other way round, and `dvc exp run -S lr=1e-5` writes
    `1e-05`: reading as DVC does, the pipeline trains on the value `dvc params diff` shows.
    """


ParamsLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag not in (_YAML_BOOL, _YAML_FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
ParamsLoader.add_implicit_resolver(
    _YAML_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
ParamsLoader.add_implicit_resolver(
    _YAML_FLOAT,
    # A dot or an exponent, so that integers stay integers; then YAML 1.2's infinities and NaN.
    re.compile(
        r"^(?:[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?|[-+]?[0-9]+[eE][-+]?[0-9]+"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def read_params(text: str) -> Any:
    """params.yaml's text as DVC reads it (see ParamsLoader)."""
    return yaml.load(text, Loader=ParamsLoader)  # noqa: S506 - a SafeLoader subclass


def load_config(path: str | Path = "params.yaml") -> PipelineConfig:
    """Read and validate params.yaml; raise ConfigError naming every bad key and value."""
    path = Path(path)
    try:
        raw = read_params(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{path} not found: run from the project root, where params.yaml is"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must be a mapping of blocks (data, train, ...), got {raw!r}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, path)) from None


# What a strict type error means in params.yaml's terms: pydantic's own words ("Input should be
# a valid integer") do not say that `true`, `60.0` or `"10"` are what was wrong.
_TYPE_HINTS = {
    "int_type": "must be an integer such as 10 (not true/false, not 10.0, not quoted)",
    "bool_type": "must be true or false (unquoted; not yes/no, on/off, 0/1)",
    "float_type": "must be a number such as 0.001 or 1e-3 (not true/false, not quoted)",
    "string_type": "must be text",
    "list_type": "must be a list such as [32, 64]",
    "dict_type": "must be a mapping of keys to values",
}


def format_validation_error(error: ValidationError, path: str | Path) -> str:
    """One line per problem: the dotted key, the bad value and what is allowed. The members
    of a union (`enabled: true | false | auto`) are one problem: one line, every choice."""
    lines = []
    unions: dict[str, list[str]] = {}
    for problem in error.errors():
        location = [str(part) for part in problem["loc"]]
        if len(location) > 1 and _is_union(location[:-1]):
            # pydantic names the union member tried ("bool", "literal['auto']") after the key.
            location = location[:-1]
        key = ".".join(location) or "<root>"
        if problem["type"] == "extra_forbidden":
            allowed = _allowed_keys(location[:-1])
            lines.append(f"  - {key}: unknown key; allowed keys here: {', '.join(allowed)}")
        elif problem["type"] == "missing":
            lines.append(f"  - {key}: required key is missing")
        else:
            message = _TYPE_HINTS.get(problem["type"]) or problem["msg"].removeprefix(
                "Value error, "
            ).replace("Input should be", "must be", 1)
            line = f"  - {key} = {_yaml_value(problem['input'])}: "
            if line in unions:
                unions[line].append(message)
                continue
            unions[line] = [message]
            lines.append(line)
    header = f"{path} is invalid ({len(lines)} problem(s)); fix these keys:"
    return "\n".join(
        [
            header,
            *(f"{line}{'; or '.join(unions[line])}" if line in unions else line for line in lines),
        ]
    )


def _yaml_value(value: Any) -> str:
    """`value` as params.yaml spells it: true, null, 'no' (quoted where YAML needs it)."""
    if isinstance(value, bool | None):
        return {True: "true", False: "false", None: "null"}[value]
    return repr(value)


def _is_union(location: list[str]) -> bool:
    """Whether the key at `location` has a union type (`bool | Literal["auto"]`, `T | None`)."""
    model: Any = PipelineConfig
    annotation: Any = None
    for part in location:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return False
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        if part not in fields:
            return False
        annotation = model = fields[part].annotation
    return get_origin(annotation) in (Union, UnionType)


def _allowed_keys(location: list[str]) -> list[str]:
    """The keys a block accepts, found by walking the model along `location`."""
    model: Any = PipelineConfig
    for part in location:
        fields = {field.alias or name: field for name, field in model.model_fields.items()}
        if part not in fields:
            return []
        model = fields[part].annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return [field.alias or name for name, field in model.model_fields.items()]
