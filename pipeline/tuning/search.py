"""`pipeline tune`: the study, asked and told around DVC's queue.

One worker (this process) holds the project's tune lock and, until it has finished `--trials`
trials of its own: asks the study for up to `--jobs` trials, queues each as the DVC experiment
tune-<study>-<number>, starts the queue with `-j JOBS`, waits, and tells each trial its val
figure (or FAIL with the reason). Several workers, each in a clone of the project, may share
one study through a database storage; each seeds its TPE sampler differently, and TPE's
constant liar keeps them off each other's running trials. A proposal that repeats the params of
a finished or running trial is dropped (told FAIL as a duplicate) and asked again.

Resuming: trials this project left RUNNING (an interrupted worker; the lock says no live one
holds them) are settled first: told their experiment's value when it finished (after waiting
for it if DVC's queue still runs it), FAIL when it failed, and FAIL and enqueued again with the
same params when it is gone. A worker interrupted by Ctrl-C settles its own trials the same way
before it exits. The queue's workers are stopped on every way out.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import re
import signal
import socket
import sys
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import PipelineConfig, load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.tracking.context import tune_experiment_name
from pipeline.tuning.figures import MissingFigure, objective, reported_test_figures, val_figures
from pipeline.tuning.space import already_tried, distributions, set_arguments
from pipeline.tuning.trials import Dvc, Outcome, QueueError, project_lock

logger = logging.getLogger(__name__)

STUDY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]*$")
STORAGE_ATTEMPTS = 3
MAX_DUPLICATE_PROPOSALS = 10
"""Proposals in a row that repeat a tried param set before the space counts as exhausted."""
REPORTS = Path("reports") / "tune"

# The user attributes of a trial: who ran it, where, and as which experiment.
HOST, PID, PROJECT, WORKER, EXPERIMENT = "host", "pid", "project", "worker", "experiment"
STRATEGY, VAL, FAIL_REASON, DUPLICATE_OF, RETRY_OF = (
    "strategy", "val", "fail_reason", "duplicate_of", "retry_of",
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """Everything a search needs, resolved from the command line and params.yaml."""

    root: Path
    study: str
    storage: str
    metric: str
    strategy: str
    """`best` or a strategy's name: whose val figure is the trial's value."""
    direction: str
    space: dict[str, Any]
    trials: int
    jobs: int


@dataclass(frozen=True)
class Worker:
    host: str
    pid: int
    project: str

    @property
    def attrs(self) -> dict[str, Any]:
        return {HOST: self.host, PID: self.pid, PROJECT: self.project,
                WORKER: f"{self.host}:{self.pid} {self.project}"}  # fmt: skip

    def seed(self, trials_so_far: int) -> int:
        """A sampler seed of its own: two workers, or a worker and its resumption, never
        replay the same random proposals."""
        text = f"{self.host}:{self.project}:{self.pid}:{trials_so_far}"
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big")


def settings_from(args: argparse.Namespace, config: PipelineConfig, root: Path) -> Settings:
    tune = config.tune
    strategy = tune.resolved_strategy(config.promote.strategy)
    study = (
        args.study or tune.study or default_study_name(config.data.dataset, strategy, tune.metric)
    )
    if not STUDY_NAME.match(study):
        raise ConfigError(
            f"study name {study!r}: use letters, digits and _ only, starting with a letter or "
            f"digit (it names each trial's DVC experiment tune-<study>-<trial>), e.g. "
            f"{re.sub(r'[^A-Za-z0-9_]', '_', study).strip('_') or 'my_study'}"
        )
    storage = args.storage or tune.storage or f"sqlite:///{root / 'optuna.db'}"
    return Settings(
        root=root,
        study=study,
        storage=storage,
        metric=tune.metric,
        strategy=strategy,
        direction=tune.direction,
        space=distributions(tune.space),
        trials=args.trials,
        jobs=args.jobs,
    )


def default_study_name(dataset: str, strategy: str, metric: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", f"{dataset}_{strategy}_{metric}")


def masked(url: str) -> str:
    """`url` without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


def open_storage(url: str):
    """Optuna's storage at `url`; an unusable URL or an unreachable database is one clear
    error naming the URL (never its password) and what to check."""
    import optuna

    engine_kwargs: dict[str, Any] = {}
    if url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except Exception as error:  # sqlalchemy's, the driver's, a bad URL's: all say the same
            # Two workers creating the tables at once: one of them may lose a race, once.
            if _table_race(error) and attempt < STORAGE_ATTEMPTS - 1:
                time.sleep(1.0 + attempt)
                continue
            raise PipelineError(storage_problem(url, error)) from None
    raise AssertionError("unreachable")


def storage_problem(url: str, error: Exception) -> str:
    text = str(error).strip()
    detail = text.splitlines()[0] if text else type(error).__name__
    return (
        f"Optuna storage {masked(url)} cannot be opened ({type(error).__name__}: "
        f"{masked(detail)[:300]}). Check the URL (sqlite:///path/optuna.db, or "
        "postgresql+psycopg://user:password@host:5432/database), that the database server "
        "runs and this user may create tables there; set it with --storage or tune.storage"
    )


def _table_race(error: Exception) -> bool:
    """Whether `error` is a table or row another process created at the same moment."""
    import sqlalchemy.exc

    return isinstance(error, sqlalchemy.exc.IntegrityError | sqlalchemy.exc.ProgrammingError)


def open_study(settings: Settings, worker: Worker):
    import optuna

    storage = open_storage(settings.storage)
    try:
        study = optuna.create_study(
            storage=storage,
            study_name=settings.study,
            direction=settings.direction,
            load_if_exists=True,
        )
    except Exception as error:
        raise PipelineError(
            f"study {settings.study} in {masked(settings.storage)}: {error}"
        ) from None
    if study.direction.name.lower() != settings.direction:
        raise ConfigError(
            f"study {settings.study} {study.direction.name.lower()}s, but tune.metric "
            f"{settings.metric} is to {settings.direction}: name another study (--study)"
        )
    conflicts = space_conflicts(study.get_trials(deepcopy=False), settings.space)
    if conflicts:
        raise ConfigError(
            f"tune.space changed since study {settings.study} began: {'; '.join(conflicts)}. "
            "Optuna cannot mix both in one study: put tune.space back, or start a new study "
            "(--study NEW_NAME or tune.study)"
        )
    study.sampler = optuna.samplers.TPESampler(seed=worker.seed(len(study.trials)))
    return study


def space_conflicts(trials: Sequence, space: Mapping[str, Any]) -> list[str]:
    """Each key whose distribution the study's trials cannot share with tune.space's now."""
    from optuna.distributions import check_distribution_compatibility

    problems: dict[str, str] = {}
    for trial in trials:
        for key, old in trial.distributions.items():
            if key in space and key not in problems:
                try:
                    check_distribution_compatibility(old, space[key])
                except ValueError as error:
                    problems[key] = f"{key}: was {old}, now {space[key]} ({error})"
    return list(problems.values())


def stale_trials(trials: Sequence, worker: Worker) -> list:
    """This project's trials left RUNNING: with the project's tune lock held, no live worker
    runs them."""
    from optuna.trial import TrialState

    return [
        trial
        for trial in trials
        if trial.state == TrialState.RUNNING
        and trial.user_attrs.get(PROJECT) == worker.project
        and trial.user_attrs.get(HOST) == worker.host
    ]


# -- telling ------------------------------------------------------------------------------


def tell(study, number: int, outcome: Outcome, settings: Settings) -> str:
    """Tell trial `number` what its experiment came to; the line that says so."""
    handle = _trial(study, number)
    if outcome.state == "success":
        val = val_figures(outcome.metrics)  # the val_ figures only, before anything reads them
        try:
            value, strategy = objective(val, settings.strategy, settings.metric, settings.direction)
        except MissingFigure as error:
            return _fail(study, number, str(error))
        handle.set_user_attr(VAL, val)
        handle.set_user_attr(STRATEGY, strategy)
        study.tell(number, value)
        return f"trial {number}: {settings.metric} {value:.4f} ({strategy})"
    if outcome.state in ("queued", "running"):
        raise AssertionError(f"trial {number} told while its experiment is {outcome.state}")
    return _fail(study, number, outcome.reason or f"the experiment is {outcome.state}")


def _fail(study, number: int, reason: str) -> str:
    from optuna.trial import TrialState

    _trial(study, number).set_user_attr(FAIL_REASON, reason[:1000])
    study.tell(number, state=TrialState.FAIL)
    experiment = tune_experiment_name(study.study_name, number)
    return f"trial {number} FAILED: {reason} (dvc queue logs {experiment})"


def _trial(study, number: int):
    """A handle on trial `number` that can set its user attributes."""
    import optuna

    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    return optuna.Trial(study, frozen._trial_id)


def retry(study, trial, reason: str) -> str:
    """FAIL `trial` (its experiment is gone or was stopped) and enqueue its params again, for
    whichever worker asks next."""
    line = _fail(study, trial.number, reason)
    study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number})
    return f"{line}; its params are queued again"


# -- asking and running -------------------------------------------------------------------


def ask(study, settings: Settings, worker: Worker) -> tuple[Any | None, list[str]]:
    """A trial with params no other trial has (None when MAX_DUPLICATE_PROPOSALS proposals in
    a row repeated tried params), and the lines about the duplicates dropped."""
    from optuna.trial import TrialState

    lines = []
    for _ in range(MAX_DUPLICATE_PROPOSALS):
        trial = study.ask(fixed_distributions=settings.space)
        for key, value in worker.attrs.items():
            trial.set_user_attr(key, value)
        trial.set_user_attr(EXPERIMENT, tune_experiment_name(settings.study, trial.number))
        twin = _twin(study.get_trials(deepcopy=False), trial)
        if twin is None:
            return trial, lines
        trial.set_user_attr(DUPLICATE_OF, twin)
        trial.set_user_attr(FAIL_REASON, f"the params of trial {twin}; not run")
        study.tell(trial, state=TrialState.FAIL)
        lines.append(f"trial {trial.number}: the params of trial {twin} again; not run")
    return None, lines


def _twin(trials: Sequence, trial) -> int | None:
    """The number of another live trial with the same params, if any."""
    from optuna.trial import TrialState

    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
    for other in trials:
        if other.number == trial.number or other.state not in live or not other.params:
            continue
        if already_tried(trial.params, [other.params]):
            return other.number
    return None


def describe(params: Mapping[str, Any]) -> str:
    return " ".join(
        f"{key}={value:.4g}" if isinstance(value, float) else f"{key}={value}"
        for key, value in sorted(params.items())
    )


def run_batch(study, dvc: Dvc, settings: Settings, trials: list) -> None:
    """Queue each trial as its experiment, run the queue, wait, tell."""
    names = {}
    for trial in trials:
        name = tune_experiment_name(settings.study, trial.number)
        try:
            dvc.queue(name, set_arguments(trial.params))
        except QueueError as error:
            _say(_fail(study, trial.number, str(error)))
            continue
        names[name] = trial
        _say(f"trial {trial.number} queued as {name}: {describe(trial.params)}")
    if not names:
        return
    try:
        dvc.start(settings.jobs)
        dvc.wait(list(names), settings.jobs, on_change=_said_status)
        outcomes = dvc.outcomes(names)
    except BaseException:
        _settle_interrupted(study, dvc, settings, names)
        raise
    for name, trial in names.items():
        _say(tell(study, trial.number, outcomes[name], settings))


def _settle_interrupted(study, dvc: Dvc, settings: Settings, names: Mapping[str, Any]) -> None:
    """Ctrl-C (or any error) while the queue ran: stop this batch's experiments and the
    workers; a trial whose experiment finished all the same is told its value, the others are
    given back (FAIL, and their params enqueued again)."""
    outcomes: dict[str, Outcome] = {}
    with contextlib.suppress(Exception):
        dvc.cancel(list(names))
    with contextlib.suppress(Exception):
        dvc.stop_workers()
    with contextlib.suppress(Exception):
        outcomes = dvc.outcomes(names)
    for name, trial in names.items():
        with contextlib.suppress(Exception):
            outcome = outcomes.get(name)
            if outcome is not None and outcome.state == "success":
                _say(tell(study, trial.number, outcome, settings))
            else:
                _say(retry(study, trial, "interrupted before its experiment finished"))


def _said_status(name: str, status: str) -> None:
    if status in ("Running", "Failed", "Missing"):
        _say(f"  {name}: {status.lower()}")


def settle_stale(study, dvc: Dvc, settings: Settings, worker: Worker) -> None:
    """Settle the trials an interrupted worker of this project left RUNNING."""
    stale = stale_trials(study.get_trials(deepcopy=False), worker)
    if not stale:
        return
    _say(f"resuming: {len(stale)} trial(s) left running here before: "
         f"{', '.join(str(t.number) for t in stale)}")  # fmt: skip
    names = {tune_experiment_name(settings.study, t.number): t for t in stale}
    outcomes = dvc.outcomes(names)
    unfinished = [name for name, o in outcomes.items() if o.state in ("queued", "running")]
    if unfinished:
        _say(f"waiting for {', '.join(unfinished)}, still in DVC's queue")
        dvc.start(settings.jobs)
        dvc.wait(unfinished, settings.jobs, on_change=_said_status)
        outcomes.update(dvc.outcomes(unfinished))
    for name, trial in names.items():
        outcome = outcomes[name]
        if outcome.state == "missing":
            _say(retry(study, trial, f"its experiment {name} is gone"))
        else:
            _say(tell(study, trial.number, outcome, settings))


def _say(line: str) -> None:
    print(line, flush=True)


# -- the whole search ---------------------------------------------------------------------


@contextlib.contextmanager
def _interrupt_on_sigterm() -> Iterator[None]:
    """SIGTERM (systemd, a scheduler) stops the search as Ctrl-C does."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def run_search(args: argparse.Namespace) -> int:
    root = Path(args.root).resolve()
    if not (root / "dvc.yaml").is_file():
        raise PipelineError(f"{root} holds no dvc.yaml: run from the project root, or --root")
    config = load_config(root / "params.yaml")
    settings = settings_from(args, config, root)
    if not settings.space:
        raise ConfigError("tune.space is empty: name at least one params key to search")
    _quiet_optuna()
    worker = Worker(socket.gethostname(), os.getpid(), str(root))
    dvc = Dvc(root)
    with project_lock(root), _interrupt_on_sigterm():
        check_queue_is_ours(dvc.queue_status(), settings.study)
        study = open_study(settings, worker)
        _say(
            f"study {settings.study} in {masked(settings.storage)}: {len(study.trials)} "
            f"trial(s) so far; {settings.metric} of {settings.strategy}, {settings.direction}"
        )
        try:
            finished = search(study, dvc, settings, worker)
        except KeyboardInterrupt:
            print(
                "pipeline tune: interrupted; its unfinished trials are queued again in the "
                "study: run the same command to resume",
                file=sys.stderr,
            )
            return 130
        finally:
            stragglers = dvc.stop_workers()
            if stragglers:
                logger.warning("terminated queue workers that did not stop: %s", stragglers)
        return summarize(study, dvc, settings, worker, finished)


def check_queue_is_ours(status: Mapping[str, str], study: str) -> None:
    """Raise PipelineError when DVC's queue holds experiments of someone else's, queued or
    running: this search's queue workers would run them, and stopping the workers at the end
    would stop them too."""
    ours = f"tune-{study}-"
    foreign = sorted(
        name
        for name, state in status.items()
        if state in ("Queued", "Running") and not name.startswith(ours)
    )
    if foreign:
        raise PipelineError(
            f"DVC's queue holds experiments that are not this study's: "
            f"{', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}. pipeline tune runs "
            "and stops the queue's workers: let them finish (dvc queue status), or remove them "
            "(dvc queue remove NAME), then run it again"
        )


def search(study, dvc: Dvc, settings: Settings, worker: Worker) -> list[int]:
    """Settle stale trials, then run trials until this worker finished `settings.trials`;
    the numbers of those it finished."""
    settle_stale(study, dvc, settings, worker)
    finished: list[int] = []
    while len(finished) < settings.trials:
        batch = []
        for _ in range(min(settings.jobs, settings.trials - len(finished))):
            trial, lines = ask(study, settings, worker)
            for line in lines:
                _say(line)
            if trial is None:
                break
            batch.append(trial)
        if batch:
            run_batch(study, dvc, settings, batch)
            finished += [trial.number for trial in batch]
        if trial is None:
            _say(f"tune.space has no untried params left ({MAX_DUPLICATE_PROPOSALS} proposals "
                 "in a row repeated tried ones): widen it")  # fmt: skip
            break
    return finished


def best_record(study, dvc: Dvc, settings: Settings, worker: Worker) -> dict[str, Any] | None:
    """The best trial as reports/tune/best.json holds it. Its test figures are read here, once,
    for the record and the summary: the choice was made on val before they were read."""
    try:
        best = study.best_trial
    except ValueError:  # no complete trial
        return None
    experiment = best.user_attrs.get(EXPERIMENT) or tune_experiment_name(
        study.study_name, best.number
    )
    strategy = best.user_attrs.get(STRATEGY, settings.strategy)
    record: dict[str, Any] = {
        "study": study.study_name,
        "trial": best.number,
        "metric": settings.metric,
        "value": best.value,
        "strategy": strategy,
        "params": dict(best.params),
        "val": best.user_attrs.get(VAL, {}),
        "experiment": experiment,
        "worker": best.user_attrs.get(WORKER),
        "here": best.user_attrs.get(PROJECT) == worker.project
        and best.user_attrs.get(HOST) == worker.host,
        "test_reported_not_used": {},
        "apply": f"dvc exp apply {experiment}",
    }
    if record["here"]:
        outcome = dvc.outcomes([experiment])[experiment]
        if outcome.state == "success":
            record["test_reported_not_used"] = reported_test_figures(outcome.metrics, strategy)
    return record


def summarize(study, dvc: Dvc, settings: Settings, worker: Worker, finished: list[int]) -> int:
    """The closing lines: this run's trials, the best trial, its test figures (reported once,
    never used), the `dvc exp apply` command and the reports' paths."""
    from optuna.trial import TrialState

    from pipeline.tuning.plots import write_reports

    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    mine = [trials[number] for number in finished if number in trials]
    complete = [t for t in mine if t.state == TrialState.COMPLETE]
    everyone = sum(t.state == TrialState.COMPLETE for t in trials.values())
    failed = len(mine) - len(complete)
    _say(f"this run: {len(mine)} trial(s), {len(complete)} complete, {failed} failed; "
         f"the study: {everyone} complete of {len(trials)}")  # fmt: skip
    best = best_record(study, dvc, settings, worker)
    reports = write_reports(study, settings.root / REPORTS, best)
    if best is not None:
        _say(f"best: trial {best['trial']}, {settings.metric} {best['value']:.4f} "
             f"({best['strategy']}): {describe(best['params'])}")  # fmt: skip
        if best["test_reported_not_used"]:
            shown = ", ".join(
                f"{key} {value:.4f}"
                for key, value in sorted(best["test_reported_not_used"].items())
            )
            _say(f"  its test figures (reported once, never used to choose): {shown}")
        if best["here"]:
            _say(f"  bring it into the workspace: {best['apply']}")
        else:
            _say(
                f"  its experiment is in another clone ({best['worker']}): `{best['apply']}` there"
            )
    _say("  reports: " + " ".join(str(path.relative_to(settings.root)) for path in reports))
    if mine and not complete:
        reason = mine[0].user_attrs.get(FAIL_REASON, "see dvc queue logs")
        raise PipelineError(f"every trial of this run failed; the first: {reason}")
    return 0
