"""The HTML report: self-contained (every image an embedded PNG, no network address but the
MLflow links given), escaped, one comparison row per strategy with its val and test accuracy,
significant differences marked, missing figures left out, written atomically; its first screen
says which model was registered and whether it became the champion, and why (the gate's
criteria), or that nothing was, and the data gate's warnings are explained."""

from __future__ import annotations

import base64
import io
import subprocess
import sys
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.errors import DataError  # noqa: E402
from pipeline.evaluation.promotion import GateThresholds, decide_promotion  # noqa: E402
from pipeline.evaluation.significance import PAIRWISE_COLUMNS  # noqa: E402
from pipeline.reporting import content as report_content  # noqa: E402
from pipeline.reporting.content import (  # noqa: E402
    DatasetCard,
    ReportContent,
    StrategySection,
    build_dataset_card,
    collect_strategy_figures,
    mlflow_run_url,
    read_classification_report,
)
from pipeline.reporting.html import render_report, write_report  # noqa: E402
from pipeline.store import open_splits, write_store_from_arrays  # noqa: E402
from tests.project import PROJECT_ROOT  # noqa: E402

HOSTILE = '<script>alert("x")</script>'
STRATEGIES = ("scratch", "feature_extraction", "fine_tune")
BASE = "http://127.0.0.1:5000"


class _Page(HTMLParser):
    """The parts of a page the tests look at: images, links, table rows and all text."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.links: list[str] = []
        self.scripts = 0
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._section: str | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes)
        elif tag == "a" and "href" in attributes:
            self.links.append(attributes["href"])
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self._table = attributes.get("class", "")
            self.tables.setdefault(self._table, [])
        elif tag in ("thead", "tbody", "tfoot"):
            self._section = tag
        elif tag == "tr" and self._table is not None and self._section == "tbody":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.tables[self._table].append(self._row)
            self._row = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)


def _parse(page: str) -> _Page:
    parser = _Page()
    parser.feed(page)
    parser.close()
    return parser


def _png(path: Path, title: str) -> Path:
    """A tiny real matplotlib figure."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure, axes = plt.subplots(figsize=(1.5, 1.2))
    axes.plot([0, 1, 2], [0, 1, 0.5])
    axes.set_title(title, fontsize=6)
    figure.savefig(path, dpi=40)
    plt.close(figure)
    return path


def _report_folder(root: Path, strategy: str, classes: list[str]) -> Path:
    """A strategy's report folder as the evaluate stage leaves it: no ROC (more than two
    classes), no Grad-CAM or filters for feature_extraction, two activation grids."""
    folder = root / strategy
    names = [
        report_content.CONFUSION_PNG,
        report_content.CONFUSION_NORMALIZED_PNG,
        report_content.CURVES_PNG,
        report_content.MOSAIC_PNG,
        report_content.MISTAKES_PNG,
    ]
    if strategy != "feature_extraction":
        names += [report_content.GRADCAM_PNG, report_content.FILTERS_PNG]
        for layer in ("02_conv2d_1", "01_conv2d"):
            _png(folder / report_content.ACTIVATIONS_DIR / f"{layer}.png", layer)
    for name in names:
        _png(folder / name, f"{strategy} {name}")
    rows = [[0.9, 0.8, 0.85, 5] for _ in classes] + [[0.9, 0.8, 0.85, 15]] * 2
    pd.DataFrame(
        rows,
        index=pd.Index([*classes, "macro avg", "weighted avg"], name="class"),
        columns=["precision", "recall", "f1", "support"],
    ).to_csv(folder / report_content.CLASSIFICATION_REPORT)
    return folder


def _comparison() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "test_accuracy": [0.81234, 0.9, 0.95],
            "test_macro_f1": [0.8, 0.89, 0.94],
            "test_loss": [0.6, 0.3, 0.2],
            "total_params": [52138, 14982474, 14982474],
            "trainable_params": [51866, 267786, 7347210],
            "training_seconds": [41.27, 12.0, float("nan")],
            "images_per_second": [9412.3, 311.8, 305.2],
        },
        index=pd.Index(STRATEGIES, name="strategy"),
    )


def _significance() -> pd.DataFrame:
    return pd.DataFrame(
        [
            ["scratch", "feature_extraction", 2, 9, 2.0, 0.0654, True, False, ""],
            ["scratch", "fine_tune", 1, 15, 1.0, 0.003, True, True, "fine_tune"],
            ["feature_extraction", "fine_tune", 3, 8, 3.0, 0.227, True, False, ""],
        ],
        columns=PAIRWISE_COLUMNS,
    )


CLASSES = ["cat", HOSTILE, "dog"]
VAL_ACCURACY = {"scratch": 0.8, "feature_extraction": 0.91111, "fine_tune": 0.96}


@pytest.fixture(scope="module")
def reports_root(tmp_path_factory) -> Path:
    """The three strategies' report folders, drawn once for the module (tests that delete
    files make their own)."""
    root = tmp_path_factory.mktemp("reports")
    for strategy in STRATEGIES:
        _report_folder(root, strategy, CLASSES)
    return root


@pytest.fixture
def content(reports_root: Path) -> ReportContent:
    return _content(reports_root)


def _content(reports_root: Path) -> ReportContent:
    classes = CLASSES
    rng = np.random.default_rng(0)
    examples = {
        "cat": rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8),
        HOSTILE: rng.integers(0, 256, (2, 8, 8, 3), dtype=np.uint8),
        "dog": rng.integers(0, 256, (1, 200, 150, 3), dtype=np.uint8),
    }
    counts = {split: {name: 5 for name in classes} for split in ("train", "val", "test")}
    validation = {
        "passed": False,
        "rows": 45,
        "rows_per_split": {"train": 15, "val": 15, "test": 15},
        "failures": 1,
        "warnings": 2,
        "near_duplicates": 2,
        "blank_images": 0,
        "exact_duplicates_across_splits": 0,
        "failed_expectations": [f"split 'train', column 'label': {HOSTILE}"],
    }
    sections = []
    for number, strategy in enumerate(STRATEGIES):
        folder = reports_root / strategy
        sections.append(
            StrategySection(
                name=strategy,
                run_id=f"run{number}abc",
                metrics={
                    "val_accuracy": VAL_ACCURACY[strategy],
                    "test_accuracy": float(_comparison().loc[strategy, "test_accuracy"]),
                },
                classification_report=read_classification_report(folder),
                figures=collect_strategy_figures(folder),
            )
        )
    return ReportContent(
        title=f"Report {HOSTILE}",
        generated=datetime(2025, 1, 2, 3, 4, tzinfo=UTC),
        dataset=DatasetCard("tiny", classes, counts, examples, validation),
        comparison=_comparison(),
        significance=_significance(),
        alpha=0.05,
        strategies=sections,
        mlflow_url=BASE,
    )


def test_every_image_is_an_embedded_png(content: ReportContent) -> None:
    page = _parse(render_report(content))
    # 5 examples; 7 + 7 + 5 figures (activations are two each for two strategies).
    assert len(page.images) == 5 + 9 + 5 + 9
    prefix = "data:image/png;base64,"
    for image in page.images:
        assert image["src"].startswith(prefix)
        data = base64.b64decode(image["src"][len(prefix) :], validate=True)
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.verify()
            assert decoded.format == "PNG"
        assert int(image["width"]) > 0 and int(image["height"]) > 0


def test_tiny_examples_are_enlarged_and_large_ones_shrunk(content: ReportContent) -> None:
    page = _parse(render_report(content))
    sizes = [(int(image["width"]), int(image["height"])) for image in page.images[:5]]
    # 8 x 8 digits become 64 x 64 (nearest neighbour); 200 x 150 shrinks to 128 on its long side.
    assert sizes[:4] == [(64, 64)] * 4
    assert sizes[4] == (96, 128)


def test_comparison_has_one_row_per_strategy_formatted(content: ReportContent) -> None:
    page = _parse(render_report(content))
    rows = page.tables["comparison"]
    assert [row[0].split()[0] for row in rows] == list(STRATEGIES)
    scratch = rows[0]
    # Val accuracy (metrics.json, by strategy) beside the test accuracy.
    assert scratch[1] == "0.8000" and rows[1][1] == "0.9111"
    assert "0.8123" in scratch[2]
    assert scratch[5] == "52,138" and scratch[6] == "51,866"
    assert scratch[7] == "41.3" and scratch[8] == "9,412"
    # A missing training time reads as a dash, not "nan".
    assert rows[2][7] == "\u2014"
    assert "nan" not in " ".join(" ".join(row) for row in rows).lower()


def test_significant_difference_is_marked_on_the_better_strategy(content: ReportContent) -> None:
    page_text = render_report(content)
    page = _parse(page_text)
    rows = {row[0].split()[0]: row for row in page.tables["comparison"]}
    # The best accuracy carries the marker; the others none.
    assert "\u2020" in rows["fine_tune"][2]
    assert "best" in rows["fine_tune"][0]
    assert "\u2020" not in rows["scratch"][2] and "\u2020" not in rows["feature_extraction"][2]
    text = " ".join(" ".join(page.text).split())
    assert "fine_tune is significantly better than scratch (McNemar p=0.003, alpha 0.05)" in text
    assert 'id="note-1"' in page_text and 'href="#note-1"' in page_text
    # The pairwise table: every pair, the significant one with its verdict.
    pairs = page.tables["significance"]
    assert len(pairs) == 3
    assert pairs[1][5] == "0.003" and "fine_tune better" in pairs[1][7]
    assert "no significant difference" in pairs[0][7]


def test_significance_read_back_from_csv_is_handled(content: ReportContent, tmp_path) -> None:
    """significance.csv read with pandas: `better` is NaN where no model is better."""
    path = tmp_path / "significance.csv"
    _significance().to_csv(path, index=False)
    from dataclasses import replace

    page = _parse(render_report(replace(content, significance=pd.read_csv(path))))
    assert len(page.tables["significance"]) == 3
    assert "nan" not in " ".join(page.text).lower()


def test_data_from_users_is_escaped(content: ReportContent) -> None:
    page_text = render_report(content)
    assert "<script" not in page_text.lower()
    assert page_text.count("&lt;script&gt;") >= 4  # title, counts, examples, report, gate
    assert _parse(page_text).scripts == 0


def test_no_network_address_but_the_mlflow_links(content: ReportContent) -> None:
    page_text = render_report(content)
    page = _parse(page_text)
    run_links = [link for link in page.links if link.startswith("http")]
    assert run_links == [mlflow_run_url(BASE, f"run{number}abc") for number in range(3)]
    remainder = page_text
    for link in run_links:
        remainder = remainder.replace(f'href="{link}"', "")
    assert "http://" not in remainder and "https://" not in remainder
    # No protocol-relative address either (a CDN's "//fonts...", a "url(//...)" in the CSS).
    assert 'src="//' not in remainder and "url(" not in remainder


def test_run_id_is_text_without_a_base_and_a_link_with_one(content: ReportContent) -> None:
    from dataclasses import replace

    plain = render_report(replace(content, mlflow_url=None))
    assert "run0abc" in plain and "open in MLflow" not in plain
    assert "http" not in plain
    linked = render_report(content)
    assert f'href="{BASE}/#/runs/run0abc"' in linked
    assert linked.count("open in MLflow") == 3
    # An explicit run URL wins, and a non-http one is never made a link.
    sections = list(content.strategies)
    sections[0] = replace(sections[0], run_url="javascript:alert(1)")
    sections[1] = replace(sections[1], run_url="https://mlflow.example.org/#/runs/x")
    chosen = render_report(replace(content, strategies=sections))
    assert "javascript:" not in chosen
    assert 'href="https://mlflow.example.org/#/runs/x"' in chosen


def test_mlflow_run_url_with_and_without_experiment() -> None:
    assert mlflow_run_url(BASE + "/", "abc") == f"{BASE}/#/runs/abc"
    assert mlflow_run_url(BASE, "abc", "7") == f"{BASE}/#/experiments/7/runs/abc"


def test_missing_figures_are_omitted(tmp_path: Path) -> None:
    for strategy in STRATEGIES:
        _report_folder(tmp_path, strategy, CLASSES)
    content = _content(tmp_path)
    folder = tmp_path / "feature_extraction"
    groups = collect_strategy_figures(folder)
    titles = [group.title for group in groups]
    assert titles == ["Confusion matrices", "Training curves", "Predictions and mistakes"]
    # A figure listed but deleted before rendering is left out, without an error.
    (folder / report_content.MISTAKES_PNG).unlink()
    page = render_report(content)
    assert page.count("<figcaption>The most confident mistakes</figcaption>") == 2
    # No figure at all: the section has its tables but no figure groups.
    empty = collect_strategy_figures(tmp_path / "nowhere")
    assert empty == []
    assert read_classification_report(tmp_path / "nowhere") is None


def test_activations_are_sorted_and_captioned_by_layer(tmp_path: Path) -> None:
    folder = _report_folder(tmp_path, "scratch", ["a", "b"])
    inside = {group.title: group for group in collect_strategy_figures(folder)}[
        "Inside the network"
    ]
    captions = [figure.caption for figure in inside.figures]
    assert captions[0].startswith("First-layer filters")
    assert captions[1:] == ["Activations: conv2d", "Activations: conv2d_1"]


def test_classification_report_keeps_numeric_class_names(tmp_path: Path) -> None:
    folder = _report_folder(tmp_path, "scratch", ["0", "1"])
    frame = read_classification_report(folder)
    assert list(frame.index) == ["0", "1", "macro avg", "weighted avg"]


def test_gate_summary_is_shown(content: ReportContent) -> None:
    text = " ".join(" ".join(_parse(render_report(content)).text).split())
    assert "Data gate failed" in text
    assert "1 failed expectation" in text
    assert "2 near-duplicate images" in text
    assert "data gate FAILED, 2 warnings explained below" in text


def test_near_duplicate_warnings_are_collapsed_below_and_explained(content) -> None:
    from dataclasses import replace

    validation = {
        **content.dataset.validation,
        "rows_per_split": {"train": 1257, "val": 270, "test": 270},
        "near_duplicates": 151,
        "warnings": 151,
    }
    dataset = replace(content.dataset, validation=validation, near_duplicate_distance=2)
    page = render_report(replace(content, dataset=dataset))
    text = " ".join(" ".join(_parse(page).text).split())
    # Counted, collapsed, and said what they are: no error unless many.
    warnings = page[page.index('<details class="warnings">') :]
    warnings = warnings[: warnings.index("</details>")]
    assert "151 near-duplicate images" in _text(warnings)
    assert (
        "Val and test images within 2 bits (dHash: a 64-bit fingerprint of a shrunken gray "
        "copy) of a train image, exact copies left out: a near copy the model may have seen in "
        "training, so its test answer may flatter the model. Not an error unless many." in text
    )
    assert "Here 151 of the 540 val and test images (28%)." in text
    # Below the first screen: after the comparison, inside the dataset's gate box.
    assert page.index('id="comparison"') < page.index('id="data-gate"') < page.index("151 near")
    assert "<details open" not in warnings


def test_the_first_screen_has_no_headline_cards(content: ReportContent) -> None:
    """The best accuracy, the fastest inference and "fewest trained parameters" (as if a win)
    were cards above the comparison: gone, their figures are the comparison's columns."""
    page = render_report(content)
    assert "Fewest trained parameters" not in page
    assert "Fastest inference" not in page and 'class="highlight' not in page
    top = page[: page.index('<nav class="toc"')]
    assert top.index('id="promotion"') < top.index('id="comparison"')
    assert 'id="dataset"' not in top


def test_render_is_deterministic(content: ReportContent) -> None:
    assert render_report(content) == render_report(content)


def test_write_report_is_atomic(content: ReportContent, tmp_path: Path) -> None:
    target = tmp_path / "out" / "index.html"
    assert write_report(content, target) == target
    assert target.read_text(encoding="utf-8") == render_report(content)
    assert [path.name for path in target.parent.iterdir()] == ["index.html"]


def test_build_dataset_card_counts_from_labels_and_reads_only_the_example_rows(
    tmp_path: Path,
) -> None:
    classes = ["a", "b"]
    # Image i is filled with the value i, so each example names the row it was read from.
    x = np.arange(5, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 1), np.uint8)
    arrays = {
        "train": (x, np.array([0, 0, 1, 0, 1])),
        "val": (x[:2], np.array([1, 1])),
        "test": (x[:1], np.array([0])),
    }
    write_store_from_arrays(tmp_path / "prepared", arrays, classes)
    splits = open_splits(tmp_path / "prepared")
    reads: list[tuple[str, list[int]]] = []
    for name, split in splits.items():

        def recorded(rows, name=name, read=split.read):
            reads.append((name, sorted(np.asarray(rows).tolist())))
            return read(rows)

        split.read = recorded
    card = build_dataset_card("tiny", splits, examples_per_class=2)
    assert card.counts == {
        "train": {"a": 3, "b": 2},
        "val": {"a": 0, "b": 2},
        "test": {"a": 1, "b": 0},
    }
    assert {name: images[:, 0, 0, 0].tolist() for name, images in card.examples.items()} == {
        "a": [0, 1],
        "b": [2, 4],
    }
    # The counts come from the labels: the only images read are the train examples.
    assert reads == [("train", [0, 1, 2, 4])]


def test_bad_example_images_name_the_class(content: ReportContent) -> None:
    from dataclasses import replace

    dataset = replace(content.dataset, examples={"cat": np.zeros((1, 4, 4, 1), dtype=np.float32)})
    with pytest.raises(ValueError, match="examples\\['cat'\\] must be uint8"):
        render_report(replace(content, dataset=dataset))
    dataset = replace(content.dataset, examples={"cat": np.zeros((1, 4, 4, 2), dtype=np.uint8)})
    with pytest.raises(ValueError, match="examples\\['cat'\\] must have shape"):
        render_report(replace(content, dataset=dataset))


def test_gray_examples_with_or_without_a_channel_axis_embed_alike(content: ReportContent) -> None:
    from dataclasses import replace

    def page(examples: dict) -> str:
        return render_report(replace(content, dataset=replace(content.dataset, examples=examples)))

    gray = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8)
    assert page({"cat": gray}) == page({"cat": gray[..., None]})
    assert page({"cat": gray}).count("data:image/png") == page({}).count("data:image/png") + 2


def test_the_report_reads_the_evaluate_stage_file_names_without_keras() -> None:
    """Both stages take the folder's file names from pipeline/evaluation/layout.py, which
    imports nothing: the report stays a light process."""
    code = (
        "import sys, pipeline.reporting, pipeline.reporting.content as c,"
        " pipeline.evaluation.layout as l;"
        "assert c.GRADCAM_PNG is l.GRADCAM_PNG;"
        "print(sorted(m for m in ('keras', 'tensorflow', 'mlflow') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- label issues -------------------------------------------------------------------------------


def _label_issues_csv(path: Path, rows: list[tuple]) -> Path:
    from pipeline.evaluation.label_issues import COLUMNS
    from pipeline.store import write_csv

    write_csv(path, COLUMNS, rows)
    return path


def _label_issue_store(root: Path):
    """Train and val of three classes; image i of a split is filled with 10 * split + i."""
    from pipeline.store import image_digests

    train = np.arange(4, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 1), np.uint8)
    val = train[:2] + 10
    test = train[:1] + 20
    write_store_from_arrays(
        root,
        {
            "train": (train, np.array([0, 1, 2, 0])),
            "val": (val, np.array([1, 2])),
            "test": (test, np.array([0])),
        },
        CLASSES,
    )
    return image_digests(train), image_digests(val), image_digests(test)


def test_label_issues_are_read_with_their_images_by_digest_never_from_test(tmp_path) -> None:
    train, val, test = _label_issue_store(tmp_path / "prepared")
    csv_path = _label_issues_csv(
        tmp_path / "label_issues.csv",
        [
            ("dog/x.png", val[1], "val", "dog", "cat", "0", "label_conflict"),
            ("=cat/y.png", train[2], "train", "dog", "cat", "0.01", "suspect"),
            ("", "0" * 32, "train", "cat", "dog", "0.2", "suspect"),  # no longer stored
            ("cat/z.png", train[3], "train", "cat", HOSTILE, "0.3", "suspect"),
        ],
    )
    splits = open_splits(tmp_path / "prepared")
    reads: list[str] = []
    for name, split in splits.items():

        def recorded(rows, name=name, read=split.read):
            reads.append(name)
            return read(rows)

        split.read = recorded
    card = report_content.read_label_issues(csv_path, splits, limit=3)
    assert (card.count, card.conflicts, card.checked) == (4, 1, 6)
    assert [example.path for example in card.examples] == ["dog/x.png", "=cat/y.png", ""]
    assert card.examples[0].conflict and not card.examples[1].conflict
    assert card.examples[0].image[0, 0, 0] == 11 and card.examples[1].image[0, 0, 0] == 2
    assert card.examples[2].image is None and card.examples[1].score == pytest.approx(0.01)
    assert "test" not in reads


def test_label_issue_gallery_shows_the_worst_with_labels_and_files(content, tmp_path) -> None:
    from dataclasses import replace

    from pipeline.reporting.content import LabelIssueExample, LabelIssuesCard

    image = np.full((8, 8, 1), 7, np.uint8)
    examples = [
        LabelIssueExample("dog/0001.png", "val", "dog", "cat", 0.0, conflict=True, image=image),
        LabelIssueExample(f"cat/{HOSTILE}.png", "train", "cat", HOSTILE, 0.012, image=image),
        LabelIssueExample("", "train", "cat", "dog", 0.2, image=None),
    ]
    card = LabelIssuesCard(40, 1, 1000, examples, "reports/label_issues.csv")
    without = render_report(content)
    page_text = render_report(replace(content, label_issues=card))
    page = _parse(page_text)
    text = " ".join(page.text)
    assert 'id="label-issues"' in page_text and 'id="label-issues"' not in without
    assert "40 suspected among 1,000 train and val images" in text
    assert "move the file into the subfolder of its right class" in text
    assert "dvc repro" in text and "reports/label_issues.csv" in text
    # Two embedded thumbnails (the third image is no longer stored), captioned given -> suggested.
    assert len(page.images) == len(_parse(without).images) + 2
    assert "dog \u2192 cat" in text and f"cat \u2192 {HOSTILE}" in text
    assert "dog/0001.png" in text and "same image, other class" in text
    assert "score 0.012" in text and "not in the store" in text
    assert "<script" not in page_text.lower()
    assert 'href="#label-issues"' in page_text


def test_label_issue_section_for_a_bundled_dataset_and_for_none(content) -> None:
    from dataclasses import replace

    from pipeline.reporting.content import LabelIssuesCard

    bundled = LabelIssuesCard(3, 0, 50, [], "label_issues.csv", folder=False)
    text = " ".join(_parse(render_report(replace(content, label_issues=bundled))).text)
    assert "correct its label where the dataset comes from" in text
    empty = LabelIssuesCard(0, 0, 50, [], "label_issues.csv")
    text = " ".join(_parse(render_report(replace(content, label_issues=empty))).text)
    assert "No suspected label error" in text and "To fix one" not in text


def test_the_report_reads_label_issues_without_cleanlab_or_scikit_learn() -> None:
    code = (
        "import sys, pipeline.reporting.content;"
        "print(sorted(m for m in ('cleanlab', 'sklearn') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# --- the promotion outcome ----------------------------------------------------------------------

DIGITS = [str(digit) for digit in range(10)]
THRESHOLDS = GateThresholds(
    min_accuracy=0.9, min_improvement=0.005, alpha=0.05, min_class_recall=0.8, max_ece=0.05
)


def promotion_record(outcome: str, strategy: str = "scratch") -> dict:
    """promotion.json as pipeline.promotion writes it, its criteria decided by the real gate on
    270 digits test labels against champion version 3: `champion` (version 4 passes and
    replaces it), `kept` (version 5 is better, but not significantly: 3 stays) or
    `experiment` (inside a DVC experiment: the gate passes, nothing is registered)."""
    y_true = np.repeat(np.arange(10), 27)

    def wrong_on(rows) -> np.ndarray:
        predictions = y_true.copy()
        predictions[rows] = (y_true[rows] + 1) % 10
        return predictions

    # The challenger makes 2 mistakes; the champion 13, or 5 (then McNemar's test fails).
    champion_wrong = range(5, 270, 22) if outcome != "kept" else range(5, 100, 22)
    decision = decide_promotion(
        y_true,
        wrong_on([0, 30]),
        wrong_on(list(champion_wrong)),
        DIGITS,
        THRESHOLDS,
        challenger_ece=0.0213,
    )
    version = {"champion": 4, "kept": 5}.get(outcome)
    return {
        "passed": decision.passed,
        "registered_model": "digits-classifier",
        "strategy": strategy,
        "registered": version is not None,
        "dvc_experiment": "sober-yawl" if outcome == "experiment" else None,
        "challenger": {
            "version": version,
            "run_id": "promotion-run",
            "source_run_id": "train-run",
            "model_sha256": "ab" * 32,
            "test_accuracy": decision.challenger_accuracy,
        },
        "champion": {
            "version": 3,
            "usable": True,
            "run_id": "r3",
            "test_accuracy": decision.champion_accuracy,
            "has_training_manifest": True,
        },
        "train_test_overlap": 0,
        "exports": {},
        "overlap": {
            "test_images": 270,
            "in_challenger_training": 0,
            "in_champion_training": 0,
            "excluded": 0,
            "scored": 270,
        },
        **{key: value for key, value in decision.to_dict().items() if key != "passed"},
        "reasons": decision.reasons(),
        "data_version": "d" * 12,
        "decided_at": "2025-01-02T03:04:05+00:00",
        "champion_after": 4 if outcome == "champion" else 3,
    }


def _text(html: str) -> str:
    """The visible text of an HTML fragment, whitespace collapsed."""
    parser = _parse(html)
    return " ".join(" ".join(parser.text).split())


def _outcome(page: str) -> str:
    """The promotion outcome box's text."""
    start = page.index('id="promotion"')
    return _text(page[start : page.index("</section>", start)])


def _criteria(page: str) -> list[list[str]]:
    return _parse(page).tables["criteria"]


def test_a_promoted_challenger_is_named_as_the_champion_with_every_criterion(content) -> None:
    from dataclasses import replace

    record = promotion_record("champion")
    assert record["passed"]
    page = render_report(replace(content, promotion=record))
    box = _outcome(page)
    assert "Promotion \u00b7 gate passed" in box
    assert "scratch is the champion: digits-classifier version 4" in box
    assert "It passed every criterion of the gate against version 3" in box
    assert "Registered model digits-classifier" in box and "Version 4" in box
    assert "Champion v3 \u2192 v4" in box
    assert "Test accuracy 0.9926 vs champion v3: 0.9519 (all 270 test images)" in box
    assert _criteria(page) == [
        ["Accuracy floor", "0.9926", "\u2265 0.9000", "pass"],
        ["Lowest class recall", "0.9630", "\u2265 0.8000", "pass"],
        ["Calibration (test ECE)", "0.0213", "\u2264 0.0500", "pass"],
        ["Gain over the champion", "+0.0407", "\u2265 +0.0050", "pass"],
        [
            "McNemar's test vs the champion",
            "p=0.007; right alone 13 vs 2",
            "p < 0.05, in its favour",
            "pass",
        ],
    ]
    # The comparison marks the strategy that went through the gate.
    rows = {row[0].split()[0]: row[0] for row in _parse(page).tables["comparison"]}
    assert "champion v4" in rows["scratch"] and "champion" not in rows["fine_tune"]


def test_a_failed_gate_says_the_champion_was_kept_and_why(content) -> None:
    from dataclasses import replace

    record = promotion_record("kept")
    assert not record["passed"]
    page = render_report(replace(content, promotion=record))
    box = _outcome(page)
    assert "scratch registered as digits-classifier version 5, not the champion" in box
    assert "The gate failed: version 5 is the challenger, and the champion stays version 3." in box
    assert "Champion v3" in box and "\u2192" not in box
    verdicts = {row[0]: row[3] for row in _criteria(page)}
    assert verdicts["McNemar's test vs the champion"] == "fail"
    assert verdicts["Accuracy floor"] == "pass"
    # The failed criterion's own sentence, as the gate wrote it.
    mcnemar = next(line for line in record["explanations"] if line.startswith("McNemar"))
    assert mcnemar in box
    assert "challenger v5" in _parse(page).tables["comparison"][0][0]


def test_inside_a_dvc_experiment_nothing_is_registered(content) -> None:
    from dataclasses import replace

    page = render_report(replace(content, promotion=promotion_record("experiment")))
    box = _outcome(page)
    assert "scratch: gate passed, nothing registered (DVC experiment sober-yawl)" in box
    assert "Inside a DVC experiment the gate is computed and nothing is registered" in box
    assert (
        "would have become the champion of digits-classifier, whose champion stays version 3" in box
    )
    assert "Version none (nothing registered)" in box
    assert "is the champion" not in box
    assert [row[3] for row in _criteria(page)] == ["pass"] * 5
    assert "gate only" in _parse(page).tables["comparison"][0][0]


def test_without_promotion_json_the_page_says_not_promoted_yet(content) -> None:
    page = render_report(content)
    box = _outcome(page)
    assert "Not promoted yet: no model has been through the registry gate" in box
    assert "reports/promotion.json is not there" in box
    assert "criteria" not in _parse(page).tables
    assert all("champion" not in row[0] for row in _parse(page).tables["comparison"])


def test_read_promotion_reads_the_record_and_names_what_a_bad_one_lacks(tmp_path) -> None:
    import json

    from pipeline.reporting.content import read_promotion

    path = tmp_path / "promotion.json"
    assert read_promotion(path) is None
    record = promotion_record("champion")
    path.write_text(json.dumps(record))
    assert read_promotion(path) == json.loads(json.dumps(record))
    path.write_text("{not json")
    with pytest.raises(DataError, match="promotion.json is not valid JSON.*dvc repro promote"):
        read_promotion(path)
    path.write_text("[1, 2]")
    with pytest.raises(DataError, match="holds a list"):
        read_promotion(path)
    path.write_text(json.dumps({"strategy": "scratch", "challenger": {}}))
    with pytest.raises(DataError, match="lacks passed, registered.*dvc repro promote"):
        read_promotion(path)


def test_a_first_champion_an_unchanged_one_and_a_partial_test_split_are_said_so(content):
    from dataclasses import replace

    first = {
        **promotion_record("champion"),
        "champion": None,
        "champion_after": 4,
        "overlap": {"test_images": 270, "excluded": 20, "scored": 250},
    }
    box = _outcome(render_report(replace(content, promotion=first)))
    assert "scratch is the champion: digits-classifier version 4" in box
    assert "there was no champion to compare with" in box and "the first champion" in box
    assert "(the 250 of 270 test images neither model trained on)" in box
    assert "Champion v4" in box
    # The same model file met the gate again: it is the champion already, nothing moved.
    again = {
        **promotion_record("kept"),
        "challenger": {**promotion_record("kept")["challenger"], "version": 3},
        "champion_after": 3,
    }
    box = _outcome(render_report(replace(content, promotion=again)))
    assert "scratch is the champion: digits-classifier version 3 (already was)" in box
    assert "Version 3 was already the champion: nothing to promote." in box
