"""Explanations computed once per model: filter patterns come from the cache while the weights
they follow from and their params are unchanged, and are computed again as soon as either
changes (pipeline/explain/cache.py)."""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from keras import layers

from pipeline.config import EvaluateConfig, PatternsConfig
from pipeline.evaluation import explanations
from pipeline.evaluation.layout import PATTERNS_PNG
from pipeline.evaluation.report import evaluate_strategy
from pipeline.explain import cache as cache_module
from pipeline.explain.cache import ExplanationCache, explanation_cache, model_digest
from pipeline.models.backbones import BACKBONES
from pipeline.models.heads import (
    assemble_feature_extraction_model,
    build_feature_extractor,
    build_feature_head,
)
from pipeline.store import HISTORY_FILE, MODEL_FILE, open_split, write_store_from_arrays

CLASSES = [f"class_{label}" for label in range(3)]
BASE_LAYERS = ("b1_conv1", "b2_conv1")


def _images(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.integers(1, 256, size=(count, 8, 8, 1), dtype=np.uint8)
    return x, np.arange(count, dtype=np.int64) % len(CLASSES)


def _scratch() -> keras.Model:
    """Two conv layers on raw 8x8 gray images, as a scratch model takes them."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input(shape=(8, 8, 1), dtype="uint8")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")(x)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(len(CLASSES), activation="softmax")(x))


def _feature_extraction() -> keras.Model:
    """A feature-extraction model (preprocessing, base, head) around a tiny two-block base."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input(shape=(16, 16, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="b1_conv1")(inputs)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="b2_conv1")(x)
    base = keras.Model(inputs, x, name="tiny_base")
    extractor = build_feature_extractor((8, 8, 1), BACKBONES["vgg16"], base)
    head = build_feature_head(extractor.output_shape[1:], len(CLASSES), 4, 0.1)
    return assemble_feature_extraction_model(extractor, head)


def _save(model: keras.Model, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save(folder / MODEL_FILE)
    history = {"epoch": [0, 1], "loss": [2.0, 1.5], "val_loss": [2.1, 1.7]}
    pd.DataFrame(history).to_csv(folder / HISTORY_FILE, index=False)


def _shift(layer: keras.layers.Layer) -> None:
    """Retrain a layer, as far as a digest can tell: every weight moves."""
    layer.set_weights([weight + 0.05 for weight in layer.get_weights()])


@pytest.fixture
def project(tmp_path: Path):
    prepared = tmp_path / "prepared"
    splits = {"train": _images(6, 1), "val": _images(6, 2), "test": _images(12, 3)}
    write_store_from_arrays(prepared, splits, CLASSES)
    _save(_scratch(), tmp_path / "models" / "scratch")
    _save(_feature_extraction(), tmp_path / "models" / "feature_extraction")
    return tmp_path, open_split(prepared, "test")


def _evaluate_all(root: Path, test, options: EvaluateConfig, cache: ExplanationCache) -> None:
    """What `dvc repro` runs: evaluate@scratch and evaluate@feature_extraction."""
    for strategy, backbone_layers in (("scratch", ()), ("feature_extraction", BASE_LAYERS)):
        evaluate_strategy(
            strategy,
            root / "models" / strategy,
            root / "reports" / strategy,
            test,
            options,
            backbone_layers=backbone_layers,
            cache=cache,
        )


@pytest.mark.slow
def test_re_evaluating_recomputes_only_the_patterns_whose_weights_changed(
    project, monkeypatch
) -> None:
    root, test = project
    ascended: list[str] = []
    compute = explanations.filter_patterns

    def counted(submodel, *args, **kwargs):
        ascended.append(submodel.name)
        return compute(submodel, *args, **kwargs)

    monkeypatch.setattr(explanations, "filter_patterns", counted)
    options = EvaluateConfig(
        gradcam_images=2,
        gallery_images=4,
        mistakes=2,
        patterns=PatternsConfig(filters=2, size=16, steps=2),
    )
    cache = ExplanationCache(root / "cache")
    _evaluate_all(root, test, options, cache)
    first = sorted(name.rsplit("_to_", 1)[1] for name in ascended)
    assert first == sorted(["conv1", "conv2", *BASE_LAYERS])
    assert (cache.hits, cache.misses) == (0, 4)
    transfer_png = (root / "reports" / "feature_extraction" / PATTERNS_PNG).read_bytes()

    # Scratch retrained from conv2 on; feature extraction's head retrained on its frozen base;
    # an evaluate key the patterns do not read changed.
    scratch = keras.saving.load_model(root / "models" / "scratch" / MODEL_FILE)
    _shift(scratch.get_layer("conv2"))
    _save(scratch, root / "models" / "scratch")
    transfer = keras.saving.load_model(root / "models" / "feature_extraction" / MODEL_FILE)
    _shift(transfer.get_layer("head").layers[-1])
    _save(transfer, root / "models" / "feature_extraction")
    ascended.clear()
    _evaluate_all(root, test, options.model_copy(update={"gallery_images": 6}), cache)

    # Only the changed model's changed layer ran gradient ascent again; the backbone's
    # patterns, and the figure drawn from them, are the first run's.
    assert [name.rsplit("_to_", 1)[1] for name in ascended] == ["conv2"]
    assert (cache.hits, cache.misses) == (3, 5)
    assert (root / "reports" / "feature_extraction" / PATTERNS_PNG).read_bytes() == transfer_png

    # A param the patterns follow from is a miss for every layer.
    ascended.clear()
    steps = options.model_copy(update={"patterns": PatternsConfig(filters=2, size=16, steps=3)})
    _evaluate_all(root, test, steps, cache)
    assert len(ascended) == 4


def test_the_digest_follows_every_weight_and_the_input_size(tmp_path: Path) -> None:
    model = _scratch()
    digest = model_digest(model)
    model.save(tmp_path / MODEL_FILE)
    # Saved and loaded in another evaluation: the same layers and weights, the same digest.
    assert model_digest(keras.saving.load_model(tmp_path / MODEL_FILE)) == digest
    bigger = keras.Model(*_rebuilt(model, (12, 12, 1)))
    assert model_digest(bigger) != digest
    _shift(model.get_layer("conv1"))
    assert model_digest(model) != digest


def _rebuilt(model: keras.Model, shape: tuple[int, ...]):
    inputs = keras.Input(shape=shape, dtype="uint8")
    x = inputs
    for layer in model.layers[1:]:
        x = layer(x)
    return inputs, x


def test_an_unreadable_entry_is_computed_again_and_replaced(tmp_path: Path) -> None:
    cache = ExplanationCache(tmp_path)
    model = _scratch()
    value = np.arange(6, dtype="uint8").reshape(2, 3)
    assert cache.fetch("patterns", model, {"steps": 1}, [cache_module], lambda: value) is value
    (entry,) = tmp_path.glob("patterns-*.npy")
    entry.write_bytes(b"not an array")
    again = cache.fetch("patterns", model, {"steps": 1}, [cache_module], lambda: value + 1)
    np.testing.assert_array_equal(again, value + 1)
    hit = cache.fetch("patterns", model, {"steps": 1}, [cache_module], lambda: value)
    np.testing.assert_array_equal(hit, value + 1)
    assert (cache.hits, cache.misses) == (1, 2)


def test_the_cache_lives_outside_dvc_outs_or_is_off(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv(cache_module.CACHE_ENV, raising=False)
    assert explanation_cache(tmp_path).folder == tmp_path / ".pipeline" / "explanations"
    monkeypatch.setenv(cache_module.CACHE_ENV, "off")
    disabled = explanation_cache(tmp_path)
    calls = []
    for _ in range(2):
        disabled.fetch("patterns", _scratch(), {}, [cache_module], lambda: calls.append(1))
    assert disabled.folder is None and len(calls) == 2
    # .pipeline/ is gitignored and no stage's out: DVC neither hashes nor deletes it.
    gitignore = (Path(__file__).resolve().parents[2] / ".gitignore").read_text().splitlines()
    assert "/.pipeline/" in gitignore


def test_old_entries_are_pruned(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(cache_module, "MAX_ENTRIES", 2)
    cache = ExplanationCache(tmp_path)
    model = _scratch()
    for steps in range(4):
        cache.fetch("patterns", model, {"steps": steps}, [cache_module], lambda: np.zeros(2))
    assert len(list(tmp_path.glob("patterns-*.npy"))) == 2
