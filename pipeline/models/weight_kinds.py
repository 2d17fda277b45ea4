"""What each kind of backbone weights is called (`backbone_weights` of runs, metrics and the
report), in words. No imports: the report stage reads it without the model code.
"""

from __future__ import annotations

WEIGHTS_LABELS: dict[str, str] = {
    "imagenet": "ImageNet (Keras' pretrained classifier weights)",
    "hed": "HED edge-detector VGG16 (BSDS500; initialised from ImageNet)",
    "random": "random initialisation (no pretraining: nothing to transfer)",
    "file": "a weights file named in backbone.weights",
    "none": "no backbone",
}
"""`backbone_weights` kind -> what it is, in words, for logs and the report."""


def describe_weights(kind: str | None) -> str:
    """The words for a `backbone_weights` kind; an unknown kind is shown as it is."""
    if kind is None:
        return WEIGHTS_LABELS["none"]
    return WEIGHTS_LABELS.get(kind, kind)
