"""One pass of the promotion gate against the registry: score, decide, register, record.

The walk has three steps, each in its own layer: the registry scores the challenger (a model
file) and the current champion on the test split; the pure gate (pipeline.evaluation.promotion)
decides; the registry then registers the challenger, tags its version with the verdict, and,
last of all, moves `champion` when the gate passed. A failure at any step leaves `champion`
where it was. Inside a DVC experiment the decision is computed and returned, and nothing is
registered: only the main line (`dvc repro` in the workspace, `pipeline retrain`) moves the
registry.

After the decision, and before `champion` moves, the version gets its model card
(pipeline.reporting.model_card): written to the stage's card file always, logged into the
promotion's run as model_card.md, and set as the version's description (refreshed when the
same model file meets the gate again). Its sources are read before anything is registered, so
a missing record fails the stage with the registry untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from pipeline import registry
from pipeline.errors import DataError, ExportError
from pipeline.evaluation.layout import CLASSIFICATION_REPORT, EVALUATION_JSON
from pipeline.evaluation.promotion import (
    Decision,
    GateThresholds,
    ScoredVersion,
    TestOverlap,
    UnusableChampion,
    judge_challenger,
)
from pipeline.export.exporter import ExportSource, export_model
from pipeline.export.formats import parse_export_name
from pipeline.export.parity import Parity
from pipeline.export.sources import recorded_temperature
from pipeline.reporting.model_card import (
    CARD_FILE,
    MAX_DESCRIPTION_CHARS,
    CardRecords,
    Lineage,
    count_classes,
    fit_description,
    read_csv_rows,
    read_history,
    read_label_issues,
    render_model_card,
)
from pipeline.store import (
    HISTORY_FILE,
    MANIFEST_FILE,
    MODEL_FILE,
    PLAN_FILE,
    SPLITS,
    data_version,
    open_split,
    read_json,
    sha256_of,
    write_text,
)
from pipeline.tracking.context import execution_tags
from pipeline.tracking.record import RunRecord
from pipeline.tracking.runs import configure_tracking
from pipeline.tracking.strategy_runs import input_example

logger = logging.getLogger(__name__)

T = TypeVar("T")

DVC_LOCK = "dvc.lock"
"""At the project root: its SHA-256 goes into the card's lineage."""


@dataclass(frozen=True)
class CardInputs:
    """Where the model card's records are, beside what the gate itself reads, and where the
    card goes (the promote stage's out, written on every run)."""

    out: Path
    evaluation_dir: Path
    """The promoted strategy's report folder (evaluation.json, classification_report.csv)."""
    label_issues: Path | None = None
    """label_issues.csv; None, or a file that is not there, when label issues were not looked
    for."""
    comparison_run: Path | None = None
    """comparison_run.json: the comparison's MLflow run."""


def promote_challenger(
    *,
    registered_model: str,
    experiment_name: str,
    dataset: str,
    strategy: str,
    model_dir: Path,
    source_run_id: str,
    prepared: Path,
    thresholds: GateThresholds,
    project_root: Path,
    dvc_experiment: str | None,
    resize: str = "stretch",
    max_pixels: int | None = None,
    challenger_ece: float | None = None,
    card: CardInputs | None = None,
    exports: tuple[str, ...] = (),
) -> dict:
    """Run the gate on `strategy`'s model (`model_dir`, trained in run `source_run_id`) against
    the champion of `registered_model`, on the test split in `prepared`; return the decision
    record that reports/promotion.json holds. `dvc_experiment` is the DVC experiment this runs
    in (None on the main line), `project_root` the project whose MLflow store is used, and
    `resize` and `max_pixels` the split's `data.resize` and `data.max_pixels`, with which the
    registered model decodes image files. `challenger_ece` is the challenger's test ECE
    (metrics.json's test_ece; None when not measured), judged against `thresholds.max_ece`;
    with `card` the version gets its model card (see publish_model_card)."""
    model_file = model_dir / MODEL_FILE
    manifest_file = model_dir / MANIFEST_FILE
    # Labels and digests are held; the images are read a batch at a time, once per model
    # (its files close with it, when this returns).
    test = open_split(prepared, "test")
    if not len(test):
        raise DataError(f"{prepared}: the test split is empty; rerun the split stage")
    main_line = dvc_experiment is None
    # Read before anything is registered: a missing record fails with the registry untouched.
    sources = read_card_sources(card, model_dir, prepared, project_root) if card else None
    experiment_id = configure_tracking(project_root, experiment_name)
    version_of_data = data_version(prepared)
    model_sha256 = sha256_of(model_file)
    tags = {
        "dataset": dataset,
        "strategy": strategy,
        **execution_tags(project_root),
        "data_version": version_of_data,
        "pipeline.kind": "promotion",
        "source_run_id": str(source_run_id),
        registry.MODEL_SHA_TAG: model_sha256,
    }
    with (
        registry.decision_run(experiment_id, f"{dataset}-promote", tags) as run_id,
        ExportsMade() as made,
    ):
        # Outside the main line nothing is registered, so which version already holds the
        # model file does not matter there.
        challenger, champion, unusable = registry.score_contenders(
            registered_model,
            model_file,
            manifest_file,
            test,
            test.classes,
            model_sha256 if main_line else None,
        )
        _warn_without_manifest(champion)
        rolled_back = registry.rolled_back_versions(registered_model) if main_line else frozenset()
        outcome = judge_challenger(
            test.y,
            test.digests(),
            challenger,
            champion,
            test.classes,
            thresholds,
            rolled_back,
            unusable,
            challenger_ece=challenger_ece,
        )
        decision = outcome.decision
        if decision.champion_unusable:
            logger.error("%s", decision.champion_unusable)
        _warn_about_overlap(outcome.overlap)
        version, new = None, False
        if main_line:
            version, new = registry.enter_challenger(
                registered_model,
                challenger,
                model_file,
                manifest_file,
                test.classes,
                input_example(test),
                {**tags, "promotion_run_id": run_id},
                resize=resize,
                monitoring_splits=(open_split(prepared, "train"), test),
                **({} if max_pixels is None else {"max_pixels": max_pixels}),
                exports=lambda: made.make(
                    exports,
                    ExportSource(
                        model_file,
                        list(test.classes),
                        f"{model_dir} (run {source_run_id})",
                        resize=resize,
                        temperature=recorded_temperature(model_dir),
                    ),
                    test,
                    open_split(prepared, "train"),
                ),
            )
            if new:
                registry.tag_exports(registered_model, version, made.tags())
            else:
                # The version keeps the exports it was registered with: its card says so.
                made.figures = registry.version_exports(registered_model, version)
            if new:
                logger.info(
                    "registered %s version %s (%s) as challenger",
                    registered_model,
                    version,
                    strategy,
                )
            else:
                logger.info(
                    "%s's model is already %s version %s: not registered again",
                    strategy,
                    registered_model,
                    version,
                )
        else:
            logger.info(
                "inside DVC experiment %s: the gate is computed and written to promotion.json; "
                "nothing is registered and no alias moves",
                dvc_experiment,
            )
        record = {
            "passed": decision.passed,
            "registered_model": registered_model,
            "strategy": strategy,
            # Registration happens on the main line only (dvc repro, pipeline retrain).
            "registered": version is not None,
            "dvc_experiment": dvc_experiment,
            "challenger": {
                "version": int(version) if version is not None else None,
                "run_id": run_id,
                "source_run_id": source_run_id,
                "model_sha256": model_sha256,
                "test_accuracy": decision.challenger_accuracy,
            },
            "champion": _champion_entry(champion, decision, unusable),
            # Test images either model trained on, excluded from the scores: 0 when fair.
            "train_test_overlap": outcome.overlap.excluded,
            # The version's exports and their parity figures: made now for a new version, read
            # from the tags of one registered before; none inside a DVC experiment.
            "exports": made.figures,
            "overlap": outcome.overlap.to_dict(),
            **{key: value for key, value in decision.to_dict().items() if key != "passed"},
            "reasons": decision.reasons(),
            "data_version": version_of_data,
            "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        if sources is not None:
            publish_model_card(card, sources, record, tags, experiment_id, new)
        # An unusable champion still holds the alias: it is what a rollback moves away from.
        champion_version = champion.version if champion else (unusable and unusable.version)
        if registry.record_outcome(registered_model, version, decision, champion_version, record):
            record["champion_after"] = int(version)
            logger.info("promoted %s version %s to champion", registered_model, version)
        else:
            record["champion_after"] = int(champion_version) if champion_version else None
            _log_kept(decision, champion_version, main_line)
    return record


class ExportsMade:
    """The exports of a version being registered: made on demand (registry.enter_challenger
    calls `make` only when it registers a new version), kept in a scratch folder until this
    object is closed, with each export's parity figures or the reason it was refused."""

    def __init__(self) -> None:
        self.figures: dict[str, dict] = {}
        self.digests: dict[str, str] = {}
        """name -> the SHA-256 of the export's model file (saved_model: saved_model.pb),
        which a server checks before it answers with the export."""
        self._scratch: tempfile.TemporaryDirectory | None = None

    def make(self, names: tuple[str, ...], source: ExportSource, test, train) -> dict[str, Path]:
        """Export `source` as each of `names`; return name -> folder of those that passed."""
        if not names:
            return {}
        self._scratch = tempfile.TemporaryDirectory(prefix="pipeline-exports-")
        folders: dict[str, Path] = {}
        for name in names:
            format_name, quantize = parse_export_name(name)
            try:
                exported = export_model(
                    source, format_name, quantize, test, train, Path(self._scratch.name)
                )
            except ExportError as error:
                # The staging folder it names is gone with this process: the reason is kept.
                reason = str(error).split(f". {self._scratch.name}")[0]
                logger.error("registering without the %s export: %s", name, reason)
                self.figures[name] = {"passed": False, "refused": reason}
                continue
            folders[name] = exported.folder
            self.figures[name] = exported.parity.to_dict()
            self.digests[name] = sha256_of(exported.digest_file)
        return folders

    def tags(self) -> dict[str, str]:
        """The version's tags: `exports` (the formats it carries) and each one's figures."""
        carried = [name for name, figures in self.figures.items() if figures.get("passed")]
        tags = {"exports": ",".join(carried) or "none"}
        for name, figures in self.figures.items():
            prefix = f"export.{name}"
            if not figures.get("passed"):
                tags[f"{prefix}.refused"] = figures["refused"][: registry.MAX_TAG_TEXT]
                continue
            tags.update(Parity(**_parity_fields(figures)).tags(prefix))
            if name in self.digests:
                tags[f"{prefix}.sha256"] = self.digests[name]
        return tags

    def __enter__(self) -> ExportsMade:
        return self

    def __exit__(self, *_) -> None:
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None


def _parity_fields(figures: dict) -> dict:
    return {key: value for key, value in figures.items() if key != "passed"}


@dataclass(frozen=True)
class CardSources:
    """The model card's records read from files, before the gate runs (CardRecords without
    what the decision and MLflow add)."""

    run: dict
    history: list[dict]
    evaluation: dict
    classification_report: list[dict] | None
    split_plan: dict | None
    classes: list[str]
    image_shape: tuple[int, ...]
    class_counts: dict[str, list[int]]
    manifest_sha256: str | None
    label_issues: list[dict] | None
    comparison_run: str | None
    dvc_lock_sha256: str | None


def read_card_sources(
    card: CardInputs, model_dir: Path, prepared: Path, project_root: Path
) -> CardSources:
    """Read what the card is made of: the strategy's run record and history, its evaluation
    (which must be of this very model file), the split's plan and class counts, the label
    issues, the comparison's run and dvc.lock's hash. A DataError names a missing or stale
    record and what to rerun."""
    evaluation_file = card.evaluation_dir / EVALUATION_JSON
    if not evaluation_file.is_file():
        raise DataError(
            f"{evaluation_file} is missing: the model card needs the promoted strategy's "
            f"evaluation; run `dvc repro evaluate@{model_dir.name}`"
        )
    evaluation = read_json(evaluation_file)
    model_sha256 = sha256_of(model_dir / MODEL_FILE)
    if evaluation.get("model_sha256") not in (None, model_sha256):
        raise DataError(
            f"{evaluation_file} evaluates another model file (SHA-256 "
            f"{evaluation['model_sha256'][:12]}..., {model_dir / MODEL_FILE} has "
            f"{model_sha256[:12]}...): rerun `dvc repro evaluate@{model_dir.name}`"
        )
    splits = {name: open_split(prepared, name) for name in SPLITS}
    try:
        test = splits["test"]
        classes, image_shape = list(test.classes), tuple(test.image_shape)
        counts = {name: count_classes(split.y, len(classes)) for name, split in splits.items()}
    finally:
        for split in splits.values():
            split.close()
    return CardSources(
        run=RunRecord.read(model_dir).model_dump(mode="json"),
        history=_if_file(model_dir / HISTORY_FILE, read_history) or [],
        evaluation=evaluation,
        classification_report=_if_file(card.evaluation_dir / CLASSIFICATION_REPORT, read_csv_rows),
        split_plan=_if_file(prepared / PLAN_FILE, read_json),
        classes=classes,
        image_shape=image_shape,
        class_counts=counts,
        manifest_sha256=_if_file(model_dir / MANIFEST_FILE, sha256_of),
        label_issues=_label_issues(card.label_issues),
        comparison_run=(_if_file(card.comparison_run, read_json) or {}).get("run_id")
        if card.comparison_run
        else None,
        dvc_lock_sha256=_if_file(project_root / DVC_LOCK, upstream_lock_digest),
    )


def upstream_lock_digest(lock_file: Path) -> str | None:
    """The SHA-256 of what dvc.lock records of every stage but promote (canonical JSON, keys
    sorted): the code, params, data and outs the promoted model came from. The promote stage's
    own entry is left out, since DVC rewrites it after this stage, and its decision changes on
    every run; the other stages' entries are final by the time promote runs. None when the
    file is not a lock DVC wrote (no `stages` mapping)."""
    import yaml

    try:
        lock = yaml.safe_load(lock_file.read_text())
    except (OSError, yaml.YAMLError) as error:
        logger.warning(
            "%s cannot be read (%s): the model card leaves its digest out", lock_file, error
        )
        return None
    if not isinstance(lock, dict) or not isinstance(lock.get("stages"), dict):
        return None
    stages = {name: entry for name, entry in lock["stages"].items() if name != "promote"}
    canonical = json.dumps({**lock, "stages": stages}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _if_file(path: Path, read: Callable[[Path], T]) -> T | None:
    """`read(path)` when `path` is a file, else None."""
    return read(path) if path.is_file() else None


def _label_issues(path: Path | None) -> list[dict] | None:
    if path is None:
        return None
    if not path.is_file():
        logger.warning("%s is not there: the model card says the labels were not checked", path)
        return None
    return read_label_issues(path)


def publish_model_card(
    card: CardInputs,
    sources: CardSources,
    record: dict,
    tags: dict[str, str],
    experiment_id: str,
    new_version: bool,
) -> str:
    """Generate the model card of the promotion `record` (its challenger's version, or none
    inside a DVC experiment), write it to `card.out`, log it into the active promotion run as
    model_card.md and make it the version's description; return it."""
    name = record["registered_model"]
    challenger = record["challenger"]
    version = None if challenger["version"] is None else str(challenger["version"])
    drift = None
    if version is not None and not new_version:
        drift = registry.last_drift_verdict(experiment_id, name, version)
    lineage = Lineage(
        git_commit=tags.get("git_commit"),
        dvc_lock_sha256=sources.dvc_lock_sha256,
        training_run=challenger["source_run_id"],
        evaluation_run=registry.evaluation_run_of(challenger["source_run_id"]),
        comparison_run=sources.comparison_run,
        promotion_run=challenger["run_id"],
        dvc_experiment=record.get("dvc_experiment"),
    )
    records = CardRecords(
        registered_model=name,
        version=version,
        new_version=new_version,
        strategy=record["strategy"],
        dataset=tags.get("dataset", ""),
        classes=sources.classes,
        image_shape=sources.image_shape,
        class_counts=sources.class_counts,
        run=sources.run,
        history=sources.history,
        evaluation=sources.evaluation,
        decision=record,
        lineage=lineage,
        generated_at=record["decided_at"],
        split_plan=sources.split_plan,
        manifest_sha256=sources.manifest_sha256,
        classification_report=sources.classification_report,
        label_issues=sources.label_issues,
        drift=drift,
    )
    text = render_model_card(records)
    write_text(card.out, text)
    description = fit_description(
        text,
        f"Cut to MLflow's {MAX_DESCRIPTION_CHARS}-character description: the whole card is "
        f"{CARD_FILE} in promotion run {challenger['run_id']} (`pipeline card` prints it).",
        MAX_DESCRIPTION_CHARS,
    )
    # Met again as the champion itself, a version keeps the card of its promotion: today's
    # "already the champion, nothing to promote" would replace the page that says why it
    # serves. The new card is still written and logged into this promotion's run.
    describe = "new_model" not in record.get("criteria", {})
    registry.record_model_card(name, version, text, description, CARD_FILE, describe)
    if version is not None and not describe:
        logger.info(
            "version %s is the champion: its description keeps its promotion's card", version
        )
        version = None
    where = f"version {version}'s description and " if version is not None else ""
    logger.info("model card: %s%s, %s in run %s", where, card.out, CARD_FILE, challenger["run_id"])
    return text


def _champion_entry(
    champion: ScoredVersion | None, decision: Decision, unusable: UnusableChampion | None
) -> dict | None:
    if unusable is not None:
        return {
            "version": int(unusable.version),
            "usable": False,
            "unusable_reason": unusable.reason,
            "test_accuracy": None,
        }
    if champion is None:
        return None
    return {
        "version": int(champion.version),
        "usable": True,
        "run_id": champion.run_id,
        "test_accuracy": decision.champion_accuracy,
        "has_training_manifest": champion.training_manifest is not None,
    }


def _warn_without_manifest(champion: ScoredVersion | None) -> None:
    if champion is not None and champion.training_manifest is None:
        logger.warning(
            "champion version %s was registered without a training manifest: the gate "
            "cannot check that it never trained on today's test images",
            champion.version,
        )


def _warn_about_overlap(overlap: TestOverlap) -> None:
    # The gate is fair by proof: test images either model trained on are left out.
    if overlap.excluded:
        logger.warning(
            "%d of %d test images are in a model's training manifest (challenger %d, "
            "champion %s): the gate leaves them out",
            overlap.excluded,
            overlap.test_images,
            overlap.in_challenger_training,
            overlap.in_champion_training,
        )


def _log_kept(decision: Decision, champion: str | None, main_line: bool) -> None:
    reasons = "; ".join(decision.reasons())
    if main_line:
        kept = f"version {champion}" if champion else "none yet"
        logger.warning("kept the champion (%s): %s", kept, reasons)
    else:
        verb = "promote" if decision.passed else "keep the champion"
        logger.info("the gate would %s: %s", verb, reasons)
