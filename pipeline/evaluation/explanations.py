"""What each network sees, for one strategy's report folder: Grad-CAM on test images (mistakes
first), the activation maps of every conv layer for one test image, the first-layer filters
before and after training (scratch), and the patterns that maximize chosen filters (scratch's
conv layers; the backbone's `pattern_layers`, as loaded, for feature extraction).

Each figure is optional: an explanation that cannot be drawn for a model (a backbone whose
graph is not a chain, say) is logged as a warning and left out, never a failed evaluation.
"""

from __future__ import annotations

import logging
from pathlib import Path

import keras
import numpy as np

from pipeline.config import EvaluateConfig
from pipeline.evaluation.layout import ACTIVATIONS_DIR, FILTERS_PNG, GRADCAM_PNG, PATTERNS_PNG
from pipeline.explain import gradients as gradients_module
from pipeline.explain import patterns as patterns_module
from pipeline.explain.activations import activation_maps
from pipeline.explain.cache import ExplanationCache
from pipeline.explain.figures import (
    plot_activation_grid,
    plot_filters,
    plot_gradcam_gallery,
    plot_patterns,
)
from pipeline.explain.filters import first_conv_kernel
from pipeline.explain.gradcam import grad_cam
from pipeline.explain.graph import (
    ExplainError,
    activation_model,
    conv_layer_names,
    find_layer,
    owner_of,
)
from pipeline.explain.patterns import filter_patterns
from pipeline.store import FIRST_KERNEL_FILE, ImageSplit

logger = logging.getLogger(__name__)

GRADCAM_STRATEGIES = ("scratch", "fine_tune", "feature_extraction")
"""Strategies whose models get Grad-CAM heatmaps: every one (a nested base works)."""
PATTERN_STRATEGIES = {"scratch": "own", "feature_extraction": "backbone"}
"""Whose filter patterns each strategy's folder shows: the scratch model's own conv layers, and
the backbone's chosen layers as loaded (feature extraction keeps them frozen)."""


def write_explanations(
    strategy: str,
    model: keras.Model,
    model_dir: Path,
    test: ImageSplit,
    probabilities: np.ndarray,
    output: Path,
    options: EvaluateConfig,
    backbone_layers: tuple[str, ...] = (),
    cache: ExplanationCache | None = None,
) -> list[Path]:
    """Write the strategy's explanation figures into `output`; return the files written.
    `probabilities` are the test split's, predicted once by the caller: only the few images a
    figure shows are read from `test`. Filter patterns come from `cache` when it holds them for
    the same weights and params (None: always computed)."""
    written: list[Path] = []
    predicted = probabilities.argmax(axis=1)
    confidence = probabilities.max(axis=1)
    steps = [
        ("Grad-CAM", lambda: _gradcam(model, test, predicted, confidence, output, options)),
        ("activation maps", lambda: _activations(model, test, predicted, output, options)),
    ]
    if strategy == "scratch":
        steps.append(("first-layer filters", lambda: _filters(model, model_dir, output)))
    mode = PATTERN_STRATEGIES.get(strategy)
    if mode is not None and options.patterns.filters > 0:
        own = mode == "own"
        layers = conv_layer_names(model) if own else list(backbone_layers)
        cache = cache or ExplanationCache(None)
        steps.append(
            ("filter patterns", lambda: _patterns(model, layers, output, options, own, cache))
        )
    for what, step in steps:
        if what == "Grad-CAM" and (
            strategy not in GRADCAM_STRATEGIES or not options.gradcam_images
        ):
            continue
        try:
            written.extend(step())
        except (ValueError, KeyError, NotImplementedError) as exc:
            logger.warning("%s: no %s figure for this model: %s", strategy, what, exc)
    return written


def _gradcam(model, test, predicted, confidence, output, options) -> list[Path]:
    """Heatmaps of the predicted class at the last conv layer: mistakes first, then correct
    predictions, spread over the test set."""
    wrong = np.flatnonzero(predicted != test.y)
    wrong = wrong[np.argsort(-confidence[wrong], kind="stable")]
    right = np.flatnonzero(predicted == test.y)
    count = options.gradcam_images
    chosen = np.concatenate([wrong[: count // 2], right])[:count]
    if len(chosen) < count:
        chosen = np.concatenate([chosen, wrong[count // 2 :]])[:count]
    images = test.read(chosen)
    heatmaps = grad_cam(model, images, class_indices=predicted[chosen])
    path = output / GRADCAM_PNG
    plot_gradcam_gallery(
        images,
        heatmaps,
        [test.classes[int(i)] for i in test.y[chosen]],
        [test.classes[int(i)] for i in predicted[chosen]],
        confidence[chosen],
        path,
    )
    return [path]


def _activations(model, test, predicted, output, options) -> list[Path]:
    """One grid per conv layer for the first correctly classified test image."""
    right = np.flatnonzero(predicted == test.y)
    index = int(right[0]) if len(right) else 0
    image = test.read([index])[0]
    maps = activation_maps(model, image, max_channels=options.activation_channels)
    folder = output / ACTIVATIONS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for number, (layer, values) in enumerate(maps.items(), start=1):
        path = folder / f"{number:02d}_{layer}.png"
        plot_activation_grid(layer, values, path)
        written.append(path)
    return written


def _filters(model, model_dir: Path, output: Path) -> list[Path]:
    before_path = model_dir / FIRST_KERNEL_FILE
    if not before_path.exists():
        raise ValueError(f"{before_path} is missing (a model trained before it was recorded)")
    path = output / FILTERS_PNG
    plot_filters(np.load(before_path), first_conv_kernel(model), path)
    return [path]


def _patterns(
    model,
    layers: list[str],
    output: Path,
    options: EvaluateConfig,
    own: bool,
    cache: ExplanationCache,
) -> list[Path]:
    """Gradient ascent in input space for the first `filters` filters of each layer.

    The model's own layers are drawn in its own input space (raw pixels, its channels); a
    backbone's in the backbone's input space (three channels, after its preprocessing), at
    `patterns.size` pixels: conv layers do not care about the size they are given. Each
    layer's patterns are cached by the weights up to it (a feature-extraction backbone's are
    the same whatever its head) and the params.
    """
    settings = options.patterns
    # The evaluate stage resolves auto for the devices at hand (pipeline.training.precision.
    # explanation_precision); called directly with auto, the ascent runs in float32.
    precision = "float32" if settings.precision == "auto" else settings.precision
    patterns = {}
    for name in layers:
        layer = find_layer(model, name)
        owner = model if own else owner_of(model, name)
        channels = 3 if not own else int(model.input_shape[-1])
        try:
            submodel = activation_model(
                owner,
                name,
                input_shape=(settings.size, settings.size, channels),
                input_dtype="float32",
            )
        except ExplainError:
            # Not a chain (ResNet's shortcuts): the base's own graph, at its own input size.
            submodel = activation_model(owner, name)
        indices = list(range(min(settings.filters, int(layer.output.shape[-1]))))
        params = {
            "filters": indices,
            "steps": settings.steps,
            "step_size": settings.step_size,
            "precision": precision,
        }
        patterns[name] = cache.fetch(
            "patterns",
            submodel,
            params,
            (patterns_module, gradients_module),
            lambda submodel=submodel, indices=indices: filter_patterns(
                submodel,
                indices,
                steps=settings.steps,
                step_size=settings.step_size,
                precision=precision,
            ),
        )
    logger.debug(
        "filter patterns (%s): %d hit(s), %d computed, cache %s",
        precision,
        cache.hits,
        cache.misses,
        cache.folder,
    )
    path = output / PATTERNS_PNG
    plot_patterns(patterns, path)
    return [path]
