"""The report says, in its headline, which weights each backbone had: random weights are called
out as no transfer (and so are the significance notes of pairs with them), HED weights are named
for what they are, and ImageNet weights raise no alarm."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pandas as pd
import pytest

from pipeline.evaluation.significance import PAIRWISE_COLUMNS
from pipeline.models.weight_kinds import WEIGHTS_LABELS
from pipeline.reporting.content import DatasetCard, ReportContent, StrategySection
from pipeline.reporting.html import render_report
from pipeline.reporting.weights import random_caveat, weights_headline

STRATEGIES = ("scratch", "feature_extraction", "fine_tune")
NOT_TRANSFER = "this is not a finding about transfer"


def _content(weights: str, significance: pd.DataFrame | None = None) -> ReportContent:
    """Three strategies, scratch without a backbone and the other two with `weights`."""
    comparison = pd.DataFrame(
        {"test_accuracy": [0.98, 0.387, 0.652]}, index=pd.Index(STRATEGIES, name="strategy")
    )
    if significance is None:
        significance = pd.DataFrame(
            [
                ["scratch", "feature_extraction", 220, 3, 210.0, 1e-40, False, True, "scratch"],
                ["scratch", "fine_tune", 120, 5, 104.0, 1e-20, False, True, "scratch"],
                ["feature_extraction", "fine_tune", 10, 12, 0.1, 0.83, True, False, ""],
            ],
            columns=PAIRWISE_COLUMNS,
        )
    sections = [
        StrategySection(name=name, backbone_weights="none" if name == "scratch" else weights)
        for name in STRATEGIES
    ]
    counts = {split: {"a": 3, "b": 3} for split in ("train", "val", "test")}
    return ReportContent(
        title="digits",
        generated=datetime(2025, 1, 2, 3, 4, tzinfo=UTC),
        dataset=DatasetCard("digits", ["a", "b"], counts),
        comparison=comparison,
        significance=significance,
        alpha=0.05,
        strategies=sections,
        backbone="vgg16",
    )


def _text(html: str) -> str:
    """The visible text of an HTML fragment, whitespace collapsed."""
    text = re.sub(r"<style.*?</style>", " ", html, flags=re.S)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"\s+", " ", text).replace("&#39;", "'").replace("&ndash;", "-")


def _headline(page: str) -> str:
    """The top of the page: everything before the table of contents."""
    return _text(page[page.index("<body") : page.index('<nav class="toc"')])


def _footnotes(page: str) -> list[str]:
    return [_text(note) for note in re.findall(r'<li id="note-\d+".*?</li>', page, flags=re.S)]


def test_headline_says_random_weights_mean_no_transfer() -> None:
    page = render_report(_content("random"))
    headline = _headline(page)
    assert (
        "feature_extraction and fine_tune: vgg16, weights random = random initialisation"
        in headline
    )
    assert "no transfer (random features)" in headline
    assert "say nothing about transfer learning" in headline
    assert 'class="weights bad"' in page


def test_significance_notes_of_random_pairs_say_it_is_not_about_transfer() -> None:
    page = render_report(_content("random"))
    notes = _footnotes(page)
    assert notes[0].startswith("scratch is significantly better than feature_extraction")
    assert f"feature_extraction's backbone had random weights: {NOT_TRANSFER}" in notes[0]
    assert f"fine_tune's backbone had random weights: {NOT_TRANSFER}" in notes[1]
    # The table's verdicts carry it too, on every pair with a random backbone.
    table = _text(page[page.index('<table class="significance">') :].split("</table>")[0])
    assert table.count(NOT_TRANSFER) == 3
    assert "feature_extraction's and fine_tune's backbones had random weights" in table


@pytest.mark.parametrize("weights", ["imagenet", "hed"])
def test_headline_does_not_mention_random_weights_when_they_were_not(weights: str) -> None:
    page = render_report(_content(weights))
    headline = _headline(page)
    assert "random" not in headline.lower()
    assert "no transfer" not in headline
    assert (
        f"feature_extraction and fine_tune: vgg16, weights {weights} = {WEIGHTS_LABELS[weights]}"
        in headline
    )
    assert NOT_TRANSFER not in page
    assert all("random" not in note for note in _footnotes(page))


def test_hed_is_named_as_what_it_is_never_as_imagenet() -> None:
    headline = _headline(render_report(_content("hed")))
    assert "HED edge-detector VGG16 (BSDS500; initialised from ImageNet)" in headline
    assert "trained for edge detection on BSDS500" in headline
    assert "Not the ImageNet classifier's weights" in headline
    assert "ImageNet (Keras' pretrained classifier weights)" not in headline


def test_strategy_sections_say_their_weights() -> None:
    page = render_report(_content("random"))
    section = _text(page[page.index('id="strategy-feature-extraction"') :])
    assert "vgg16 weights: random" in section
    assert "this section's figures show no transfer" in section
    scratch = _text(page[page.index('id="strategy-scratch"') :].split("</section>")[0])
    assert "weights:" not in scratch


def test_no_weights_box_without_a_backbone() -> None:
    content = _content("random")
    sections = [StrategySection(name="scratch", backbone_weights="none")]
    content = ReportContent(**{**content.__dict__, "strategies": sections})
    assert weights_headline(sections, "vgg16") is None
    assert 'id="weights"' not in render_report(content)


def test_mixed_weights_list_each_kind_and_tint_by_the_worst() -> None:
    sections = [
        StrategySection(name="feature_extraction", backbone_weights="imagenet"),
        StrategySection(name="fine_tune", backbone_weights="random"),
    ]
    headline = weights_headline(sections, "vgg16")
    assert headline["state"] == "bad"
    assert [(line["kind"], line["strategies"]) for line in headline["lines"]] == [
        ("imagenet", "feature_extraction"),
        ("random", "fine_tune"),
    ]
    assert headline["notes"][0]["meaning"].startswith("fine_tune had random weights: its figures")


def test_random_caveat_names_only_the_random_ones() -> None:
    weights = {"feature_extraction": "random", "fine_tune": "hed"}
    assert random_caveat(("scratch", "fine_tune"), weights) is None
    assert random_caveat(("scratch", "feature_extraction"), weights) == (
        f"feature_extraction's backbone had random weights: {NOT_TRANSFER}"
    )
