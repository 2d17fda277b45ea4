"""params.yaml validation: the defaults load, and every bad input names its key and value."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.config import STRATEGY_NAMES, PipelineConfig, TrainConfig, load_config
from pipeline.errors import ConfigError
from pipeline.store import write_store_from_arrays
from pipeline.tracking.context import flatten_params
from tests.project import PROJECT_ROOT, copy_project_files, stage_command


@pytest.fixture
def params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def _write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_project_params_load_without_dropping_or_changing_a_value(params: dict) -> None:
    """Every key of params.yaml reaches the pipeline as written: none is silently ignored,
    renamed or coerced (a "1e-3" string, a rounded fraction)."""
    loaded = flatten_params(load_config(PROJECT_ROOT / "params.yaml").model_dump(by_alias=True))
    written = flatten_params(params)
    assert {key: loaded.get(key, "<dropped>") for key in written} == written


def _flat_defaults() -> dict:
    """Every key of the config with its default, the keys params.yaml must set (epochs) set."""
    required = {name: {"epochs": 1} for name in STRATEGY_NAMES}
    return flatten_params(
        PipelineConfig.model_validate({"train": required}).model_dump(by_alias=True)
    )


def test_every_key_is_written_so_that_dvc_exp_run_can_set_it(params: dict) -> None:
    """`dvc exp run -S key=value` sets only keys params.yaml already has (another needs
    `-S +key=value`): every key of the config is written there, the augmentation's settings
    excepted (params.yaml says they take a `+`). A key added to pipeline/config.py alone would
    be refused by DVC's -S."""
    every = _flat_defaults()
    written = flatten_params(params)
    missing = [
        key
        for key in every
        if key not in written
        and not any(key.startswith(f"{prefix}.") for prefix in written)  # e.g. data.sources
        and not (".augmentation." in key and not key.endswith(".enabled"))
        # The search space is the user's own mapping of keys to ranges (optional `step`).
        and not key.startswith("tune.space.")
    ]
    assert missing == []


def test_defaults_of_optional_keys_are_the_documented_ones(params: dict) -> None:
    """A key left out of params.yaml takes the value params.yaml documents for it: the
    project's file and the model's defaults never disagree, except the keys params.yaml must
    set (epochs)."""
    defaults = _flat_defaults()
    written = flatten_params(params)
    differing = {key for key in written if written[key] != defaults.get(key)}
    assert differing == {
        "train.scratch.epochs",
        "train.feature_extraction.epochs",
        "train.fine_tune.epochs",
    }
    assert [name for name in TrainConfig.model_fields if name in STRATEGY_NAMES] == list(
        STRATEGY_NAMES
    )


@pytest.mark.parametrize(
    ("block", "key", "value", "expected"),
    [
        # Each case: the dotted key, the bad value and the allowed values must all be named.
        ("data", "dataset", "imagenet21k", ["data.dataset", "imagenet21k", "digits"]),
        ("train.scratch", "epochs", 0, ["train.scratch.epochs", "0", "greater than 0"]),
        ("train.fine_tune", "epochs", -3, ["train.fine_tune.epochs", "-3", "greater than 0"]),
        ("train.scratch", "epochs", "ten", ["train.scratch.epochs", "ten", "integer"]),
        ("train.scratch", "dropout_rate", 1.5, ["train.scratch.dropout_rate", "1.5"]),
        ("train.scratch", "optimizer", "adamw", ["optimizer", "adamw", "rmsprop"]),
        ("backbone", "weights", "resnet", ["backbone.weights", "resnet", "imagenet", "random"]),
        ("backbone", "weights", "missing.h5", ["backbone.weights", "missing.h5", "does not exist"]),
        ("backbone", "image_size", 0, ["backbone.image_size", "0"]),
        ("backbone", "unfreeze_from", "", ["backbone.unfreeze_from"]),
        ("data", "val_fraction", 0.0, ["data.val_fraction", "0.0"]),
        ("data", "resize", "crop", ["data.resize", "crop", "stretch", "pad"]),
        ("data", "on_bad_image", "ignore", ["data.on_bad_image", "ignore", "skip", "fail"]),
        ("data", "max_images", 0, ["data.max_images", "0", "greater than 0"]),
        ("data", "mirror", "mirror.example.org", ["data.mirror", "mirror.example.org", "https://"]),
        (
            "data",
            "sources",
            {"imagenet": {"url": "https://x/"}},
            ["data.sources", "imagenet", "mnist"],
        ),
        (
            "data",
            "sources",
            {"mnist": {"url": "https://m/mnist.npz", "sha256": "a" * 64}},
            ["data.sources", "checksum of mnist is fixed"],
        ),
        (
            "data",
            "sources",
            {"fashion_mnist": {"url": "https://m/train-images-idx3-ubyte.gz"}},
            ["data.sources", "folder URL", "ending in '/'"],
        ),
        ("data", "sources", {"mini_cifar": {"sha256": "XYZ"}}, ["data.sources.mini_cifar.sha256"]),
    ],
)
def test_bad_value_names_key_value_and_allowed(
    tmp_path: Path, params: dict, block: str, key: str, value, expected: list[str]
) -> None:
    target = params
    for part in block.split("."):
        target = target[part]
    target[key] = value
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, params))
    for fragment in expected:
        assert fragment in str(error.value)


def test_fractions_that_leave_no_training_data_are_refused(tmp_path: Path, params: dict) -> None:
    params["data"].update(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ConfigError, match="leaves 0.00 of the data for training"):
        load_config(_write(tmp_path, params))


def test_unknown_key_is_named_with_the_allowed_keys(tmp_path: Path, params: dict) -> None:
    params["train"]["scratch"]["epoch"] = 5  # the classic typo
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, params))
    message = str(error.value)
    assert "train.scratch.epoch: unknown key" in message
    assert "epochs" in message and "conv_filters" in message


def test_unknown_block_is_refused(tmp_path: Path, params: dict) -> None:
    params["trian"] = {}
    with pytest.raises(ConfigError, match="trian: unknown key; allowed keys here: data, validate"):
        load_config(_write(tmp_path, params))


def test_missing_strategy_block_is_refused(tmp_path: Path, params: dict) -> None:
    del params["train"]["fine_tune"]
    with pytest.raises(ConfigError, match="train.fine_tune: required key is missing"):
        load_config(_write(tmp_path, params))


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "params.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_weights_path_to_existing_h5_is_accepted(tmp_path: Path, params: dict) -> None:
    weights = tmp_path / "vgg16_notop.h5"
    weights.write_bytes(b"placeholder")
    params["backbone"]["weights"] = str(weights)
    assert load_config(_write(tmp_path, params)).backbone.weights == str(weights)


def test_flatten_params_uses_dotted_keys() -> None:
    assert flatten_params({"a": {"b": 1, "c": {"d": [2]}}, "e": None}) == {
        "a.b": 1,
        "a.c.d": [2],
        "e": None,
    }


def _run_check(cwd: Path) -> subprocess.CompletedProcess:
    copy_project_files(cwd, ("dvc.yaml", ".dvc/config", "data/images/README.md"))
    return subprocess.run(
        stage_command(cwd, "check_params"),
        cwd=cwd,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"},
        timeout=120,
    )


def test_check_params_stage_exits_2_with_message_and_no_traceback(
    tmp_path: Path, params: dict
) -> None:
    params["train"]["scratch"]["epochs"] = -1
    params["data"]["dataset"] = "nope"
    _write(tmp_path, params)
    result = _run_check(tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "train.scratch.epochs = -1" in result.stderr
    assert "data.dataset = 'nope'" in result.stderr
    assert not (tmp_path / "reports" / "params_check.json").exists()


def test_check_params_stage_accepts_valid_params(tmp_path: Path, params: dict) -> None:
    _write(tmp_path, params)
    result = _run_check(tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "reports" / "params_check.json").is_file()


def test_drift_reference_must_be_a_prepared_folder(tmp_path: Path, params: dict) -> None:
    params["validate"]["reference"] = str(tmp_path / "old_prepared")
    with pytest.raises(ConfigError, match="validate.reference.*store.json and its shards/"):
        load_config(_write(tmp_path, params))
    # A folder of the old .npz splits is not a store: refused, naming the format.
    (tmp_path / "old_prepared").mkdir()
    for name in ("train", "val", "test"):
        (tmp_path / "old_prepared" / f"{name}.npz").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"validate.reference.*\.npz splits is the old format"):
        load_config(_write(tmp_path, params))
    rng = np.random.default_rng(0)
    arrays = {
        name: (rng.integers(0, 256, (2, 4, 4, 1), dtype=np.uint8), np.array([0, 1]))
        for name in ("train", "val", "test")
    }
    write_store_from_arrays(tmp_path / "old_prepared", arrays, ["a", "b"])
    assert load_config(_write(tmp_path, params)).validation.reference == str(
        tmp_path / "old_prepared"
    )


@pytest.mark.parametrize(
    ("data", "block", "key", "value", "expected"),
    [
        # Each case: a value pydantic accepts but no builder could use, for this dataset.
        (
            {},
            "train.scratch",
            "conv_filters",
            [8, 8, 8, 8, 8],
            ["train.scratch.conv_filters = [8, 8, 8, 8, 8]", "5 conv blocks", "8x8", "at most 3"],
        ),
        (
            {"dataset": "cifar10"},
            "train.scratch",
            "conv_filters",
            [8] * 6,
            ["train.scratch.conv_filters", "6 conv blocks", "32x32", "at most 5"],
        ),
        (
            {"dataset": "malaria", "image_size": 20},
            "train.scratch",
            "conv_filters",
            [8] * 5,
            ["train.scratch.conv_filters", "20x20x3 images", "at most 4"],
        ),
        (
            {},
            "train.scratch",
            "architecture",
            "course_c",
            ["train.scratch.architecture = 'course_c'", "cannot take 8x8", "at least 32x32"],
        ),
        (
            {},
            "train.scratch",
            "architecture",
            "lenet6",
            ["train.scratch.architecture = 'lenet6'", "unknown architecture", "lenet5"],
        ),
        (
            {},
            "backbone",
            "name",
            "inception_v3",
            ["backbone.name = 'inception_v3'", "vgg16, resnet50, mobilenet_v2"],
        ),
        ({}, "backbone", "image_size", 16, ["backbone.image_size = 16", "at least 32x32"]),
        (
            {},
            "backbone",
            "unfreeze_from",
            "block6_conv1",
            ["backbone.unfreeze_from = 'block6_conv1'", "not a layer of vgg16", "block5_conv1"],
        ),
        (
            {},
            "backbone",
            "unfreeze_from",
            "block5_pool",
            ["backbone.unfreeze_from = 'block5_pool'", "with weights to fine-tune"],
        ),
    ],
)
def test_check_params_refuses_a_model_no_builder_could_make(
    tmp_path: Path, params: dict, data: dict, block: str, key: str, value, expected: list[str]
) -> None:
    from pipeline.stages.check_params import check_models

    params["data"].update(data)
    target = params
    for part in block.split("."):
        target = target[part]
    target[key] = value
    if key == "conv_filters":
        # conv_filters are small_convnet's options; `auto` picks another network.
        params["train"]["scratch"]["architecture"] = "small_convnet"
    config = load_config(_write(tmp_path, params))
    with pytest.raises(ConfigError) as error:
        check_models(config)
    for fragment in expected:
        assert fragment in str(error.value)


def test_check_params_names_every_unbuildable_key_at_once(tmp_path: Path, params: dict) -> None:
    from pipeline.stages.check_params import check_models

    params["train"]["scratch"].update(architecture="small_convnet", conv_filters=[8, 8, 8, 8])
    params["backbone"].update(image_size=8, unfreeze_from="conv1")
    with pytest.raises(ConfigError) as error:
        check_models(load_config(_write(tmp_path, params)))
    lines = [line for line in str(error.value).splitlines() if line.startswith("  - ")]
    assert [line.split(" = ")[0] for line in lines] == [
        "  - train.scratch.conv_filters",
        "  - backbone.image_size",
        "  - backbone.unfreeze_from",
    ]


@pytest.mark.parametrize("dataset", ["digits", "mnist", "cifar10", "cats_vs_dogs", "malaria"])
def test_project_params_build_for_every_dataset(tmp_path: Path, params: dict, dataset) -> None:
    from pipeline.stages.check_params import check_models

    params["data"]["dataset"] = dataset
    check_models(load_config(_write(tmp_path, params)))


@pytest.mark.parametrize(
    ("block", "key", "value", "expected"),
    [
        # Values that pydantic's lax mode took: true as 1 epoch, "no" as false, 60.0 as 60.
        ("train.scratch", "epochs", True, "train.scratch.epochs = true: must be an integer"),
        ("train.scratch", "epochs", 60.0, "train.scratch.epochs = 60.0: must be an integer"),
        ("data", "seed", "42", "data.seed = '42': must be an integer"),
        ("data", "max_images", 1e3, "data.max_images = 1000.0: must be an integer"),
        ("train", "tensorboard", "no", "train.tensorboard = 'no': must be true or false"),
        ("train", "deterministic", 1, "train.deterministic = 1: must be true or false"),
        ("data", "follow_links", "false", "data.follow_links = 'false': must be true or false"),
        ("train.scratch", "learning_rate", True, "learning_rate = true: must be a number"),
        ("train.scratch", "learning_rate", "0.001", "learning_rate = '0.001': must be a number"),
        ("train.scratch", "conv_filters", [32, True], "conv_filters.1 = true: must be an integer"),
        (
            "train.scratch.augmentation",
            "enabled",
            "yes",
            "augmentation.enabled = 'yes': must be true or false (unquoted; not yes/no, on/off, "
            "0/1); or must be 'auto'",
        ),
    ],
)
def test_values_of_another_type_are_refused_naming_key_and_type(
    tmp_path: Path, params: dict, block: str, key: str, value, expected: str
) -> None:
    target = params
    for part in block.split("."):
        target = target[part]
    target[key] = value
    with pytest.raises(ConfigError) as error:
        load_config(_write(tmp_path, params))
    assert expected in str(error.value)
    # A union's members (bool, 'auto') are one problem, on one line.
    assert "1 problem(s)" in str(error.value)


@pytest.mark.parametrize(
    ("written", "loaded"),
    [
        # YAML 1.2, as DVC reads params.yaml: `no` is text, `1e-05` a number (PyYAML's 1.1
        # reads the opposite); so the pipeline trains on what `dvc params diff` shows.
        ("tensorboard: no", None),
        ("tensorboard: off", None),
        ("tensorboard: false", False),
        ("tensorboard: True", True),
    ],
)
def test_params_are_read_as_yaml_1_2_booleans(tmp_path: Path, written: str, loaded) -> None:
    text = (PROJECT_ROOT / "params.yaml").read_text()
    original = next(line for line in text.splitlines() if "tensorboard: true" in line)
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(original, f"  {written}"))
    if loaded is None:
        with pytest.raises(ConfigError, match=r"train.tensorboard = '(no|off)': must be true"):
            load_config(path)
    else:
        assert load_config(path).train.tensorboard is loaded


def test_values_dvc_exp_run_set_param_writes_still_load(tmp_path: Path) -> None:
    """`dvc exp run -S key=value` rewrites params.yaml through Hydra and ruamel (YAML 1.2):
    `1e-5` is written `1e-05`, which PyYAML alone would read as text; an int goes into a float
    key; a list replaces a list. Each still loads, as the value meant."""
    from dvc.utils.hydra import apply_overrides

    cases = {
        "train.scratch.learning_rate=1e-5": ("train.scratch.learning_rate", 1e-5),
        "train.fine_tune.learning_rate=1e-10": ("train.fine_tune.learning_rate", 1e-10),
        "train.scratch.learning_rate=1": ("train.scratch.learning_rate", 1.0),
        "train.scratch.epochs=5": ("train.scratch.epochs", 5),
        "train.tensorboard=false": ("train.tensorboard", False),
        "train.scratch.conv_filters=[16,32,64]": ("train.scratch.conv_filters", [16, 32, 64]),
        "data.max_images=null": ("data.max_images", None),
        "data.max_images=300": ("data.max_images", 300),
        "train.scratch.augmentation.enabled=true": ("train.scratch.augmentation.enabled", True),
        "train.scratch.augmentation.enabled=auto": ("train.scratch.augmentation.enabled", "auto"),
        "validate.max_class_imbalance=20": ("validate.max_class_imbalance", 20.0),
        "validate.label_conflicts=drop": ("validate.label_conflicts", "drop"),
        "data.val_fraction=.1": ("data.val_fraction", 0.1),
        "promote.min_accuracy=1": ("promote.min_accuracy", 1.0),
        "data.sources={}": ("data.sources", {}),
        "evaluate.patterns.step_size=20": ("evaluate.patterns.step_size", 20.0),
    }
    path = tmp_path / "params.yaml"
    for override, (key, expected) in cases.items():
        path.write_text((PROJECT_ROOT / "params.yaml").read_text())
        apply_overrides(path, [override])
        loaded = load_config(path).model_dump(by_alias=True)
        for part in key.split("."):
            loaded = loaded[part]
        assert loaded == expected and type(loaded) is type(expected), (override, loaded)


def test_check_params_warns_naming_a_key_the_chosen_architecture_ignores(params: dict) -> None:
    """The README's old example set train.scratch.dropout_rate, which digits_convnet (auto for
    digits) never reads: 3.5 minutes for an identical model. check_params says so by name."""
    from pipeline.stages.check_params import ignored_keys

    assert ignored_keys(PipelineConfig.model_validate(params)) == []
    params["train"]["scratch"]["dropout_rate"] = 0.3
    params["train"]["fine_tune"]["reduce_lr"]["factor"] = 0.5
    (dropout, factor) = ignored_keys(PipelineConfig.model_validate(params))
    assert dropout.startswith("train.scratch.dropout_rate = 0.3 is ignored")
    assert "only architecture small_convnet reads it" in dropout
    assert "auto chooses digits_convnet for digits" in dropout
    assert factor.startswith("train.fine_tune.reduce_lr.factor = 0.5 is ignored")
    # The same key where small_convnet reads it: no warning.
    params["train"]["scratch"]["architecture"] = "small_convnet"
    params["train"]["fine_tune"]["reduce_lr"]["patience"] = 2
    assert ignored_keys(PipelineConfig.model_validate(params)) == []
