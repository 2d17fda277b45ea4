"""VGG16 weights resolution and batched feature extraction.

`backbone.weights` takes `imagenet`, `random`, a path to a notop `.h5` file, or `auto`: ImageNet
weights when they are cached or can be downloaded, otherwise random weights with a loud warning.
The resolved kind is recorded so runs and metrics say which weights they really used.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError

logger = logging.getLogger(__name__)

# The file Keras itself downloads for VGG16(include_top=False, weights="imagenet"), with the
# MD5 that keras.applications.vgg16 checks it against.
IMAGENET_NOTOP_FILENAME = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_NOTOP_URL = (
    "https://storage.googleapis.com/tensorflow/keras-applications/vgg16/" + IMAGENET_NOTOP_FILENAME
)
IMAGENET_NOTOP_MD5 = "6d6bbae143d832006294945121d1f1fc"


@dataclass(frozen=True)
class ResolvedWeights:
    """`kind` is what a run reports as `backbone_weights`: imagenet, random or file."""

    kind: str
    path: str | None

    def describe(self) -> str:
        return self.kind if self.path is None else f"{self.kind} ({self.path})"


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(home) / "models"


def resolve_weights(
    spec: str,
    cache_dir: Path | None = None,
    url: str = IMAGENET_NOTOP_URL,
    known_hash: str = f"md5:{IMAGENET_NOTOP_MD5}",
    timeout: float = 30.0,
) -> ResolvedWeights:
    """Turn `backbone.weights` into a weights file (or none, for random init).

    `url` and `known_hash` are the real ImageNet file's; a mirror can be given instead.
    """
    if spec == "random":
        return ResolvedWeights("random", None)
    if spec not in ("imagenet", "auto"):
        return ResolvedWeights("file", spec)
    cache_dir = cache_dir or keras_cache_dir()
    target = cache_dir / IMAGENET_NOTOP_FILENAME
    try:
        return ResolvedWeights("imagenet", str(_fetch_imagenet(target, url, known_hash, timeout)))
    except Exception as exc:  # noqa: BLE001 - any failure to get the file has the same remedy
        reason = f"{type(exc).__name__}: {exc}"
        if spec == "imagenet":
            raise PipelineError(
                f"backbone.weights=imagenet, but the ImageNet weights are not cached and could not "
                f"be downloaded ({reason}). Download {url} and put it at {target}, or set "
                "backbone.weights to the path of a notop VGG16 .h5 file, or to 'random'."
            ) from None
    banner = "!" * 78
    logger.warning(
        "\n%s\nbackbone.weights=auto: ImageNet weights for VGG16 are NOT available (%s).\n"
        "Falling back to RANDOM weights: feature extraction and fine-tuning will not transfer\n"
        "anything learnt on ImageNet. Put %s at %s to use them.\n%s",
        banner,
        reason,
        IMAGENET_NOTOP_FILENAME,
        target,
        banner,
    )
    return ResolvedWeights("random", None)


def _fetch_imagenet(target: Path, url: str, known_hash: str, timeout: float) -> Path:
    """The cached weights file, downloaded and checksum-verified on first use.

    pooch downloads to a temporary file and moves it into place only once verified.
    """
    import pooch

    target.parent.mkdir(parents=True, exist_ok=True)
    path = pooch.retrieve(
        url,
        known_hash=known_hash,
        fname=target.name,
        path=target.parent,
        downloader=pooch.HTTPDownloader(timeout=timeout, progressbar=True),
    )
    return Path(path)


def extract_features(extractor, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Run the conv base over `images` in batches, with Keras' progress bar."""
    features = extractor.predict(images, batch_size=batch_size, verbose=2)
    return np.asarray(features, dtype=np.float32)
