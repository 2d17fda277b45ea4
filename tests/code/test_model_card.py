"""The model card (pipeline.reporting.model_card), generated from the records on fixture data:
every section is there, HED weights are named as HED (never as ImageNet), random weights are a
limit, every figure equals the one in the record it comes from, old records without the newer
keys still give a card, and a card too long for MLflow's description column is cut with a
pointer to the whole one.

Pure: no MLflow, no Keras. The card as the promote stage registers it, and `pipeline card`,
are tested against a real SQLite registry in tests/integration/test_model_card.py.
"""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import yaml

from pipeline.errors import DataError
from pipeline.evaluation.metrics import metric_safe_names
from pipeline.models.weight_kinds import WEIGHTS_LABELS
from pipeline.reporting.model_card import (
    CRITERIA_NAMES,
    EXPORT_COLUMNS,
    MAX_DESCRIPTION_CHARS,
    METRIC_NAMES,
    CardRecords,
    Lineage,
    changed_params,
    default_params,
    fit_description,
    kept_epoch,
    read_label_issues,
    render_model_card,
)

CLASSES = ["cat", "dog", "bird"]
SECTIONS = ("## Intended use", "## Data", "## Training", "## Figures", "## Limits", "## Lineage")


def _evaluation(calibrated: bool = True) -> dict:
    per_class = {"cat": (0.91234, 0.88888, 0.90039), "dog": (0.8, 0.9, 0.84706)}
    per_class["bird"] = (0.75, 0.6, 0.66667)
    mlflow_metrics = {}
    for name, safe in zip(CLASSES, metric_safe_names(CLASSES), strict=True):
        for column, value in zip(("precision", "recall", "f1"), per_class[name], strict=True):
            mlflow_metrics[f"test_{column}_{safe}"] = value
    metrics = {
        "test_loss": 0.4123456,
        "test_accuracy": 0.8271604938,
        "test_macro_f1": 0.80470588,
        "test_images": 81,
        "test_top_3_accuracy": 1.0,
        "test_something_new": 0.123456,
    }
    if calibrated:
        metrics.update(
            test_ece=0.0312345,
            test_ece_uncalibrated=0.0876543,
            test_brier=0.2512,
            test_brier_uncalibrated=0.2987,
            test_loss_uncalibrated=0.5123,
        )
    return {
        "strategy": "feature_extraction",
        "model_sha256": "ab" * 32,
        "metrics": metrics,
        "mlflow_metrics": {**mlflow_metrics, "images_per_second": 1234.5678},
        "images_per_second": 1234.5678,
        "training_seconds": 12.5,
        "run_id": "train-run-1",
        "backbone_weights": "hed",
    }


def _run(weights: str = "hed", **extra) -> dict:
    params = {
        "data.dataset": "digits",
        "data.resize": "stretch",
        "data.seed": 42,
        "data.val_fraction": 0.15,
        "backbone.name": "vgg16",
        "backbone.weights": "auto",
        "backbone.image_size": 48,  # the default is 32
        "train.epochs": 30,
        "train.learning_rate": 2e-5,  # FeatureExtractionConfig's own default
        "train.dense_units": 128,  # the default is 256
        "train.early_stopping_patience": 2,
        "train.early_stopping_monitor": "val_loss",
        "train.class_weight": "balanced",
        "train.seed": 42,
        "train.augmentation.enabled": "auto",
    }
    return {
        "run_id": "train-run-1",
        "backbone_weights": weights,
        "tags": {"strategy": "feature_extraction", "precision": "float32"},
        "params": params,
        "training_seconds": 12.5,
        "phase_boundaries": [],
        **extra,
    }


HISTORY = [
    {"epoch": 0, "loss": 1.0, "val_loss": 0.9, "val_accuracy": 0.6},
    {"epoch": 1, "loss": 0.8, "val_loss": 0.7, "val_accuracy": 0.7},
    {"epoch": 2, "loss": 0.6, "val_loss": 0.75, "val_accuracy": 0.72},
    {"epoch": 3, "loss": 0.5, "val_loss": 0.8, "val_accuracy": 0.71},
]


def _decision(champion: bool = True) -> dict:
    criteria = {
        "accuracy_floor": {"passed": True, "observed": 0.8271604938, "threshold": 0.7},
        "class_recall_floor": {"passed": True, "observed": 0.6, "threshold": 0.5},
    }
    if champion:
        criteria["improvement"] = {"passed": True, "observed": 0.0987654, "threshold": 0.0}
        criteria["mcnemar"] = {
            "passed": True,
            "observed": 0.00123456,
            "threshold": 0.05,
            "challenger_only_correct": 11,
            "champion_only_correct": 3,
            "statistic": 3.0,
            "p_value": 0.00123456,
            "exact": True,
        }
    return {
        "passed": True,
        "registered_model": "digits-classifier",
        "strategy": "feature_extraction",
        "registered": True,
        "dvc_experiment": None,
        "challenger": {
            "version": 4,
            "run_id": "promotion-run-4",
            "source_run_id": "train-run-1",
            "model_sha256": "ab" * 32,
            "test_accuracy": 0.8271604938,
        },
        "champion": {"version": 3, "usable": True, "run_id": "r3", "test_accuracy": 0.7283950617}
        if champion
        else None,
        "train_test_overlap": 0,
        "criteria": criteria,
        "decided_at": "2025-01-02T03:04:05+00:00",
    }


LABEL_ISSUES = [
    {
        "path": f"data/images/cat/img_{index}.png",
        "digest": f"{index:032x}",
        "split": "train" if index % 3 else "val",
        "given": "cat",
        "suggested": "dog",
        "score": str(0.01 * index),
    }
    for index in range(7)
]


def _records(**changes) -> CardRecords:
    records = CardRecords(
        registered_model="digits-classifier",
        version="4",
        new_version=True,
        strategy="feature_extraction",
        dataset="digits",
        classes=list(CLASSES),
        image_shape=(8, 8, 1),
        class_counts={"train": [40, 42, 38], "val": [9, 8, 10], "test": [27, 30, 24]},
        run=_run(
            temperature=1.2345678,
            val_nll_before=0.51234,
            val_nll_after=0.43219,
            class_weights={"0": 1.0, "1": 0.95, "2": 1.05},
        ),
        history=HISTORY,
        evaluation=_evaluation(),
        decision=_decision(),
        lineage=Lineage(
            git_commit="c0ffee" * 6 + "beef",
            dvc_lock_sha256="12" * 32,
            training_run="train-run-1",
            evaluation_run="train-run-1",
            comparison_run="comparison-run-9",
            promotion_run="promotion-run-4",
        ),
        generated_at="2025-01-02T03:04:05+00:00",
        split_plan={
            "scheme": "stratified",
            "assignment": "content_hash",
            "seed": 42,
            "images": 268,
            "skipped": 0,
            "members": {"train": "aa" * 32, "val": "bb" * 32, "test": "cc" * 32},
            "data_version": "dd" * 32,
        },
        manifest_sha256="ee" * 32,
        label_issues=LABEL_ISSUES,
    )
    return replace(records, **changes)


def card_tables(card: str) -> list[tuple[tuple[str, ...], dict[str, list[str]]]]:
    """Every Markdown table of `card`: (its header cells, its rows: first cell -> the others)."""
    tables: list[tuple[tuple[str, ...], dict[str, list[str]]]] = []
    previous = ""
    for line in card.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            if not previous.startswith("|"):
                tables.append((tuple(cells), {}))
            else:
                tables[-1][1][cells[0]] = cells[1:]
        previous = line
    return tables


def table_figures(card: str, header: tuple[str, ...] | None = None) -> dict[str, list[str]]:
    """The rows of the card's tables (those whose header starts with `header`, if given):
    first cell -> the other cells."""
    rows: dict[str, list[str]] = {}
    for columns, table in card_tables(card):
        if header is None or columns[: len(header)] == header:
            rows.update(table)
    return rows


PER_CLASS = ("class", "train", "val", "test", "precision", "recall", "F1")


def test_every_section_is_there_and_says_what_the_records_say() -> None:
    card = render_model_card(_records())
    positions = [card.index(section) for section in SECTIONS]
    assert positions == sorted(positions), "the sections are in order"
    assert card.startswith("# Model card: digits-classifier version 4")
    assert "never written by hand" in card
    # Intended use and classes.
    assert "into 3 classes: `cat`, `dog`, `bird`" in card
    assert "to 8x8x1" in card and "Not for anything else" in card
    # Data: source, version, counts per class and split, digests, label issues.
    rows = table_figures(card)
    assert rows["Data version"] == ["`" + "dd" * 32 + "`"]
    counts = table_figures(card, PER_CLASS)
    assert counts["cat"][:3] == ["40", "9", "27"]
    assert counts["**all**"][:3] == ["**120**", "**27**", "**81**"]
    assert rows["Split"] == [
        "stratified by content hash, seed 42: train 120, val 27, test 81 (per class: see Figures)"
    ]
    assert rows["Training manifest SHA-256"] == ["`" + "ee" * 32 + "`"]
    assert rows["Model file SHA-256"] == ["`" + "ab" * 32 + "`"]
    assert "Label issues: 7 suspected in train and val (label_issues.csv)" in card
    assert "the worst 5:" in card and "data/images/cat/img_4.png" in card
    assert "img_5.png" not in card, "only the worst few are listed"
    # Training: strategy, backbone, the params that differ, the epoch kept, temperature, weights.
    assert rows["Strategy"] == ["`feature_extraction`"]
    assert rows["Epoch kept"] == ["2 of 4: the lowest val_loss (early stopping, patience 2)"]
    assert rows["Temperature"] == [
        "1.2346, fitted on val (val NLL 0.5123 -> 0.4322), inside the served model"
    ]
    assert rows["Class weights"] == ["`balanced`: cat 1.0000, dog 0.9500, bird 1.0500"]
    assert rows["`backbone.image_size`"] == ["`48`", "`32`"]
    assert rows["`train.dense_units`"] == ["`128`", "`256`"]
    assert rows["`train.epochs`"] == ["`30`", "(no default: always set)"]
    assert "`train.learning_rate`" not in rows, "a strategy's own default is no change"
    assert "`train.seed`" not in rows and "`data.seed`" not in rows
    # Figures: overall, calibration, per class, significance, speed.
    assert "McNemar's test (exact binomial)" in card and "p = 0.001235" in card
    assert rows["Inference speed (images/s)"] == ["1234.6"]
    # Limits: HED weights, the small test split, label issues, drift.
    limits = card[card.index("## Limits") : card.index("## Lineage")]
    assert "A small test split: 81 images, 24 of class `bird`" in limits
    assert "7 train and val images are suspected of wrong labels" in limits
    assert "not yet served" in limits
    # Lineage.
    assert rows["Git commit"] == ["`" + "c0ffee" * 6 + "beef`"]
    assert rows["dvc.lock SHA-256 (every stage but promote)"] == ["`" + "12" * 32 + "`"]
    for label, run in [
        ("Training run", "train-run-1"),
        ("Evaluation run", "train-run-1"),
        ("Comparison run", "comparison-run-9"),
        ("Promotion run", "promotion-run-4"),
    ]:
        assert rows[label] == [f"`{run}`"]


def test_label_issues_are_read_as_the_stage_writes_them(tmp_path) -> None:
    """Spreadsheet-safe cells are read back as they were; identical images under two classes
    are counted apart; a CSV without the columns is refused, naming them."""
    path = tmp_path / "label_issues.csv"
    path.write_text(
        "path,digest,split,given,suggested,score,issue\n"
        f"'=cmd.png,{'1' * 32},train,cat,dog,0.01,suspect\n"
        f"b.png,{'2' * 32},val,cat,dog | bird,0.0,label_conflict\n"
    )
    rows = read_label_issues(path)
    assert [row["path"] for row in rows] == ["=cmd.png", "b.png"]
    card = render_model_card(_records(label_issues=rows))
    assert (
        "Label issues: 2 suspected in train and val (1 by out-of-fold prediction, 1 identical "
        "images under two classes)" in card
    )
    assert "| b.png | val | cat | dog \\| bird | 0.0000 |" in card
    (tmp_path / "old.csv").write_text("path,digest,split,given\n")
    with pytest.raises(DataError, match="old.csv lacks the column.s. suggested, score: rerun"):
        read_label_issues(tmp_path / "old.csv")


def test_hed_weights_are_named_as_hed_never_as_imagenet() -> None:
    card = render_model_card(_records())
    (backbone,) = table_figures(card)["Backbone"]
    assert backbone == f"`vgg16`, weights `hed`: {WEIGHTS_LABELS['hed']}"
    assert "HED edge-detector" in backbone and "initialised from ImageNet" in backbone
    assert WEIGHTS_LABELS["imagenet"] not in card and "`imagenet`" not in card
    limits = card[card.index("## Limits") :]
    assert "HED edge-detector weights (VGG16" in limits
    assert "not ImageNet classifier weights" in limits


def test_random_weights_are_a_limit() -> None:
    card = render_model_card(_records(run=_run("random")))
    assert table_figures(card)["Backbone"] == [
        f"`vgg16`, weights `random`: {WEIGHTS_LABELS['random']}"
    ]
    limits = card[card.index("## Limits") :]
    assert "The backbone had random weights" in limits and "HED" not in limits


def _expected_figures(evaluation: dict, decision: dict) -> dict[str, str]:
    """Each figure the card must show, formatted as the logs print it, from the records."""
    metrics = evaluation["metrics"]
    # Every number of evaluation.json's `metrics`, under its name in the card.
    expected = {
        METRIC_NAMES.get(key, f"`{key}`"): f"{value:.4f}"
        for key, value in metrics.items()
        if key != "test_images"
    }
    expected["Inference speed (images/s)"] = f"{evaluation['images_per_second']:.1f}"
    return expected


def check_card_figures(card: str, evaluation: dict, decision: dict, classes: list[str]) -> int:
    """Assert that every figure of the card's tables equals its record's, and that every
    number the figures section prints is one of them; return how many were compared."""
    rows = table_figures(card)
    compared = 0
    for label, value in _expected_figures(evaluation, decision).items():
        assert rows[label] == [value], label
        compared += 1
    logged = evaluation["mlflow_metrics"]
    per_class = table_figures(card, PER_CLASS)
    for name, safe in zip(classes, metric_safe_names(classes), strict=True):
        shown = per_class[name][3:]
        for column, cell in zip(("precision", "recall", "f1"), shown, strict=True):
            assert cell == f"{logged[f'test_{column}_{safe}']:.4f}", (name, column)
            compared += 1
    for criterion, entry in decision["criteria"].items():
        observed, threshold, verdict = rows[CRITERIA_NAMES[criterion]]
        digits = ".4g" if criterion == "mcnemar" else ".4f"
        unmeasured = entry["observed"] is None
        assert observed == ("not recorded" if unmeasured else format(entry["observed"], digits))
        assert threshold == format(entry["threshold"], digits), criterion
        assert verdict == ("passed" if entry["passed"] else "failed")
        compared += 2
    assert rows["Accuracy floor"][0] == f"{decision['challenger']['test_accuracy']:.4f}"
    left_out = re.search(r"\((\d+) left out\)", card)
    assert left_out is not None and int(left_out[1]) == decision["train_test_overlap"]
    compared += 2
    champion = decision.get("champion")
    if champion is not None:
        shown = re.search(r"champion version (\d+) \(test accuracy (\S+) on them\)", card)
        assert shown is not None and int(shown[1]) == champion["version"]
        assert shown[2] == f"{champion['test_accuracy']:.4f}"
        compared += 1
    mcnemar = decision["criteria"].get("mcnemar")
    if mcnemar is not None:
        sentence = re.search(
            r"alone right on (\d+), the champion alone on (\d+), p = (\S+?)\.(?:\s|$)", card
        )
        assert sentence is not None
        assert int(sentence[1]) == mcnemar["challenger_only_correct"]
        assert int(sentence[2]) == mcnemar["champion_only_correct"]
        assert sentence[3] == format(mcnemar["p_value"], ".4g")
        compared += 3
    # No other figure hides in the figures section: each decimal number printed there is one
    # of the record's, as formatted above.
    after = "## Exports" if "## Exports" in card else "## Limits"
    section = card[card.index("## Figures") : card.index(after)]
    allowed = set(_expected_figures(evaluation, decision).values())
    if champion is not None:
        allowed.add(f"{champion['test_accuracy']:.4f}")
    allowed |= {f"{value:.4f}" for value in logged.values()}
    for entry in decision["criteria"].values():
        allowed |= {
            format(entry[key], f)
            for key in ("observed", "threshold")
            for f in (".4f", ".4g")
            if entry[key] is not None
        }
    allowed |= {format(mcnemar["p_value"], ".4g")} if mcnemar else set()
    printed = set(re.findall(r"(?<![\w.])\d+\.\d+(?![\w.])", section))
    assert printed <= allowed, sorted(printed - allowed)
    exports = table_figures(card, EXPORT_COLUMNS[:1])
    for name, figures in (decision.get("exports") or {}).items():
        row = exports[f"`{name}`"]
        if not figures["passed"]:
            assert row[0] == "refused", name
            continue
        assert row[1] == f"{figures['top1_agreement']:.4f}", name
        assert row[3] == f"{figures['export_accuracy']:.4f}", name
        compared += 2
    return compared


def test_every_figure_equals_the_one_in_its_record() -> None:
    records = _records()
    card = render_model_card(records)
    compared = check_card_figures(card, records.evaluation, records.decision, CLASSES)
    assert compared >= 30


@pytest.mark.parametrize(("ece", "shown"), [(0.0312345, "0.0312"), (None, "not recorded")])
def test_the_calibration_ceiling_of_the_gate_is_shown(ece, shown) -> None:
    decision = _decision()
    passed = ece is not None and ece <= 0.05
    decision["criteria"]["calibration"] = {"passed": passed, "observed": ece, "threshold": 0.05}
    decision["passed"] = passed
    card = render_model_card(_records(decision=decision))
    verdict = "passed" if passed else "failed"
    assert table_figures(card)["Test ECE (a ceiling)"] == [shown, "0.0500", verdict]
    assert f"It {verdict} on" in card
    check_card_figures(card, _evaluation(), decision, CLASSES)


def test_a_figure_that_differs_from_its_record_is_caught() -> None:
    """The check is not blind: a card made from other figures fails it."""
    records = _records()
    other = _evaluation()
    other["metrics"]["test_accuracy"] = 0.5
    card = render_model_card(replace(records, evaluation=other))
    with pytest.raises(AssertionError, match="Test accuracy"):
        check_card_figures(card, records.evaluation, records.decision, CLASSES)


def test_old_records_without_the_newer_keys_still_give_a_card() -> None:
    """A run.json without temperature or class weights, an evaluation.json without
    calibration, no label_issues.csv, no split.json, no champion: said, not guessed."""
    run = _run("none")
    run["params"] = {key: value for key, value in run["params"].items() if "backbone" not in key}
    del run["params"]["train.class_weight"]
    card = render_model_card(
        _records(
            run=run,
            evaluation=_evaluation(calibrated=False),
            decision=_decision(champion=False),
            label_issues=None,
            split_plan=None,
            manifest_sha256=None,
            lineage=Lineage(),
        )
    )
    rows = table_figures(card)
    assert all(section in card for section in SECTIONS)
    assert rows["Temperature"][0].startswith("not recorded")
    # The run record of a model trained without calibration says T = 1, none fitted.
    unfitted = render_model_card(_records(run={**_run(), "temperature": 1.0}))
    assert table_figures(unfitted)["Temperature"][0].startswith("1.0000: none fitted")
    assert rows["Class weights"] == ["not recorded"]
    assert rows["Backbone"] == ["none (trained from scratch)"]
    assert rows["Data version"] == ["not recorded"]
    assert rows["Split"][0].startswith("split.json not recorded: train 120, val 27, test 81")
    assert "Expected calibration error (ECE, 15 bins)" not in rows
    assert "Calibration (ECE, Brier, NLL): not measured" in card
    assert "with no champion to compare with: the floors alone decided" in card
    assert "Label issues: not looked for" in card
    assert "were not checked for errors" in card and "Calibration was not measured" in card
    assert rows["Git commit"] == ["not recorded"] and rows["Evaluation run"] == ["not recorded"]
    check_card_figures(card, _evaluation(calibrated=False), _decision(champion=False), CLASSES)


def test_a_dvc_experiment_card_says_nothing_was_registered() -> None:
    decision = {**_decision(), "registered": False, "dvc_experiment": "brisk-lark"}
    decision["challenger"] = {**decision["challenger"], "version": None}
    card = render_model_card(
        _records(version=None, decision=decision, lineage=Lineage(dvc_experiment="brisk-lark"))
    )
    assert card.startswith(
        "# Model card: digits-classifier (not registered: DVC experiment brisk-lark)"
    )
    assert "not registered (DVC experiment), so never served" in card
    assert table_figures(card)["DVC experiment"] == ["`brisk-lark`"]


def test_the_last_drift_verdict_is_shown_for_a_version_served_before() -> None:
    drift = {"drift": True, "fired": "confidence", "window": "last 24h", "window_end": "2025-01-01"}
    card = render_model_card(_records(new_version=False, drift=drift))
    assert (
        "verdict on this version was drift (confidence), window last 24h ending 2025-01-01" in card
    )
    quiet = render_model_card(_records(new_version=False))
    assert "no `pipeline monitor` verdict recorded for this version" in quiet


def test_class_names_cannot_break_the_tables() -> None:
    classes = ["a|b", "c`d", "e"]
    evaluation = _evaluation()
    evaluation["mlflow_metrics"] = {
        f"test_{column}_{safe}": 0.5
        for safe in metric_safe_names(classes)
        for column in ("precision", "recall", "f1")
    }
    card = render_model_card(_records(classes=classes, evaluation=evaluation))
    assert "| a\\|b | 40 | 9 | 27 | 0.5000 | 0.5000 | 0.5000 |" in card
    assert "| c'd | 42 |" in card
    for line in card.splitlines():
        if line.startswith("|"):
            assert len(re.split(r"(?<!\\)\|", line)) - 2 in (2, 3, 4, 5, 7), line


def test_per_class_figures_fall_back_to_the_classification_report() -> None:
    evaluation = _evaluation()
    evaluation["mlflow_metrics"] = {"images_per_second": 1.0}
    report = [
        {"class": name, "precision": "0.25", "recall": "0.5", "f1": "0.33333", "support": "3"}
        for name in CLASSES
    ]
    card = render_model_card(_records(evaluation=evaluation, classification_report=report))
    assert table_figures(card, PER_CLASS)["dog"] == ["42", "8", "30", "0.2500", "0.5000", "0.3333"]
    none = render_model_card(_records(evaluation=evaluation))
    assert "Per-class test figures: not recorded." in none
    assert table_figures(none, PER_CLASS)["dog"] == ["42", "8", "30", "?", "?", "?"]


@pytest.mark.parametrize(
    ("params", "phase_start", "expected"),
    [
        ({"train.early_stopping_patience": 0}, 0, (4, 4)),
        ({"train.early_stopping_patience": 2}, 0, (2, 4)),
        # val_accuracy: the highest, 0.72 at epoch 3.
        (
            {"train.early_stopping_patience": 2, "train.early_stopping_monitor": "val_accuracy"},
            0,
            (3, 4),
        ),
        # Fine-tuning: early stopping judges the second phase only (from epoch 3).
        ({"train.early_stopping_patience": 2}, 2, (3, 4)),
    ],
)
def test_the_epoch_kept_is_the_one_early_stopping_restores(params, phase_start, expected) -> None:
    epoch, total, _ = kept_epoch(HISTORY, params, phase_start)
    assert (epoch, total) == expected


def test_val_accuracy_ties_are_broken_by_the_lower_val_loss() -> None:
    history = [
        {"val_loss": 0.5, "val_accuracy": 0.9},
        {"val_loss": 0.4, "val_accuracy": 0.9},
        {"val_loss": 0.3, "val_accuracy": 0.8},
    ]
    params = {"train.early_stopping_patience": 1, "train.early_stopping_monitor": "val_accuracy"}
    assert kept_epoch(history, params, 0)[:2] == (2, 3)
    assert kept_epoch([], params, 0) is None


def test_params_at_their_defaults_are_not_listed() -> None:
    defaults = default_params("scratch")
    assert defaults["train.early_stopping_patience"] == 15  # ScratchConfig's, not the common 0
    assert defaults["train.reduce_lr.patience"] == 5 and defaults["data.image_size"] == 150
    at_defaults = {key: value for key, value in defaults.items() if repr(value) != "no default"}
    assert changed_params("scratch", at_defaults) == []
    changed = changed_params("scratch", {**at_defaults, "train.reduce_lr.factor": 0.5})
    assert [(key, value) for key, value, _ in changed] == [("train.reduce_lr.factor", 0.5)]
    # A bool is not the number 1, and an unknown key has no default to be equal to.
    keys = [key for key, *_ in changed_params("scratch", {"train.deterministic": 1, "x.y": 2})]
    assert keys == ["train.deterministic", "x.y"]


def test_a_card_that_fits_is_the_description_and_a_longer_one_is_cut_saying_where() -> None:
    card = render_model_card(_records())
    assert len(card) < MAX_DESCRIPTION_CHARS
    assert fit_description(card, "see the artifact") == card
    # Ten classes (digits, mnist, cifar10), calibrated, with label issues: whole.
    ten = [str(index) for index in range(10)]
    evaluation = _evaluation()
    evaluation["mlflow_metrics"] = {
        f"test_{column}_{name}": 0.9876 for name in ten for column in ("precision", "recall", "f1")
    }
    counts = {split: [1234] * len(ten) for split in ("train", "val", "test")}
    card = render_model_card(_records(classes=ten, evaluation=evaluation, class_counts=counts))
    assert len(card) <= MAX_DESCRIPTION_CHARS
    many = [f"class_{index:03d}" for index in range(150)]
    evaluation = _evaluation()
    evaluation["mlflow_metrics"] = {
        f"test_{column}_{name}": 0.5 for name in many for column in ("precision", "recall", "f1")
    }
    counts = {split: [10] * len(many) for split in ("train", "val", "test")}
    long_card = render_model_card(
        _records(classes=many, evaluation=evaluation, class_counts=counts)
    )
    assert len(long_card) > MAX_DESCRIPTION_CHARS
    cut = fit_description(long_card, "the whole card is model_card.md in run r")
    assert len(cut) <= MAX_DESCRIPTION_CHARS
    assert cut.endswith("_the whole card is model_card.md in run r_\n")
    assert long_card.startswith(cut.split("\n\n_the whole card")[0])


def test_an_old_run_json_read_as_the_promote_stage_reads_it_says_not_recorded(tmp_path) -> None:
    """Through RunRecord, as promotion reads it: a run.json written before calibration existed
    has no temperature, and the card does not pass it off as "none fitted"."""
    from pipeline.store import write_json
    from pipeline.tracking.record import RunRecord

    old = {
        **_run(),
        "experiment_id": "1",
        "experiment_name": "image-classifiers",
        "run_name": "digits-feature_extraction",
        "tracked": True,
        "validation_summary": {},
    }
    write_json(tmp_path / "run.json", old)
    run = RunRecord.read(tmp_path).model_dump(mode="json")
    card = render_model_card(_records(run=run))
    assert table_figures(card)["Temperature"][0].startswith("not recorded")


def test_the_lock_digest_is_of_the_stages_the_model_came_from(tmp_path) -> None:
    """DVC rewrites the promote stage's own lock entry after the card is written: the digest
    leaves it out, so the card's figure is the one the committed dvc.lock gives, and any change
    upstream (code, params, data) changes it."""
    from pipeline.promotion import upstream_lock_digest

    lock = tmp_path / "dvc.lock"
    entry = {"cmd": "python -m x", "outs": [{"path": "models/scratch", "md5": "a" * 32}]}
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train": entry}}))
    digest = upstream_lock_digest(lock)
    promoted = {"cmd": "python -m promote", "outs": [{"path": "p.json", "md5": "b" * 32}]}
    lock.write_text(
        yaml.safe_dump({"schema": "2.0", "stages": {"train": entry, "promote": promoted}})
    )
    assert upstream_lock_digest(lock) == digest
    changed = {**entry, "outs": [{"path": "models/scratch", "md5": "c" * 32}]}
    lock.write_text(yaml.safe_dump({"schema": "2.0", "stages": {"train": changed}}))
    assert upstream_lock_digest(lock) != digest
    lock.write_text("not: [a lock")
    assert upstream_lock_digest(lock) is None


def test_the_exports_the_version_carries_are_listed_with_their_parity_and_refusals() -> None:
    from pipeline.export.parity import measure_parity

    keras = np.array([[0.9, 0.05, 0.05], [0.2, 0.7, 0.1]])
    onnx = measure_parity(
        keras,
        keras + np.array([[-3e-6, 2e-6, 1e-6], [0.0, 0.0, 0.0]]),
        np.array([0, 1]),
        format_name="onnx",
        quantize="none",
        runtime="onnxruntime",
        runtime_version="1.32.0",
        size_bytes=300,
        keras_size_bytes=1000,
    )
    exports = {
        "onnx": onnx.to_dict(),
        "tflite-int8": {"passed": False, "refused": "accuracy_drop_points 2.50 is over 1"},
    }
    card = render_model_card(_records(decision={**_decision(), "exports": exports}))
    assert "## Exports" in card
    rows = table_figures(card, EXPORT_COLUMNS[:1])
    expected = ["onnxruntime 1.32.0", "1.0000", "3e-06", "1.0000", "0.30x"]
    assert rows["`onnx`"] == expected
    assert rows["`tflite-int8`"][0] == "refused"
    assert "accuracy_drop_points 2.50" in rows["`tflite-int8`"][-1]
    # Read back from an older version's tags, a figure may be missing: it says so.
    partial = {"onnx": {"passed": True, "runtime": "onnxruntime", "max_abs_diff": None}}
    card = render_model_card(_records(decision={**_decision(), "exports": partial}))
    assert table_figures(card, EXPORT_COLUMNS[:1])["`onnx`"][2] == "not recorded"
    # A DVC experiment, or a version registered before: no exports were made, no section.
    assert "## Exports" not in render_model_card(_records(decision={**_decision(), "exports": {}}))
