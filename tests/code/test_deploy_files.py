"""The files that schedule `pipeline retrain` (cron, systemd, GitHub Actions) and the MLproject
entry points work as shipped, checked by what they run: each command is run against a dry
project whose `pipeline` is the real command line with the retraining cycle recorded instead
of run, so it must reach `pipeline retrain`'s cycle for that project, from the project, with
the project's virtualenv first on PATH. Their schedules are parsed (cron fields here,
OnCalendar= by systemd-analyze) and must fire once a day; DVC stages they name must exist."""

from __future__ import annotations

import configparser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from datetime import datetime, timedelta
from itertools import pairwise
from pathlib import Path

import pytest
import yaml

from tests.project import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
CRON_FILE = DEPLOY / "cron" / "retrain.cron"
SYSTEMD = DEPLOY / "systemd"
WORKFLOW_FILE = PROJECT_ROOT / ".github" / "workflows" / "retrain.yml"
VENV_BIN = ".venv/bin"
WORKFLOW_SECRETS = {
    "MLFLOW_TRACKING_URI",
    "DVC_REMOTE_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}

# A dry `pipeline`: the real command line (pipeline.cli), with the retraining cycle replaced by
# one that prints what it was asked to do, as JSON on the first line. DRY_OUTCOME=lock-held
# makes it find the lock taken, DRY_OUTCOME=failed makes a step fail.
DRY_PIPELINE = """#!{python}
import json, os, shutil, sys
from types import SimpleNamespace

sys.path.insert(0, {source!r})
import pipeline.retraining.cycle
import pipeline.serving.server
from pipeline.retraining.lock import LockHeld
from pipeline.cli import main
from pipeline.entry import run_entry
from pipeline.errors import PipelineError


def run_cycle(root, force=False):
    print(json.dumps({{"root": str(root), "force": force, "cwd": os.getcwd(),
                      "python": shutil.which("python")}}), flush=True)
    outcome = os.environ.get("DRY_OUTCOME")
    if outcome == "lock-held":
        raise LockHeld("another cycle holds the lock")
    if outcome == "failed":
        raise PipelineError("step dvc repro failed")
    return SimpleNamespace(outcome="no new data", data={{"summary": "no change"}}, decision=None)


pipeline.retraining.cycle.run_cycle = run_cycle


def serve(options):
    print(json.dumps({{"serve": json.loads(options.to_json()), "cwd": os.getcwd(),
                      "python": shutil.which("python")}}), flush=True)


pipeline.serving.server.serve = serve
run_entry(main, "pipeline")
"""
# `python`, as the project's virtualenv has it: `python -m pipeline ...` runs the dry pipeline.
DRY_PYTHON = """#!/bin/sh
if [ "$1" = "-m" ] && [ "$2" = "pipeline" ]; then
  shift 2
  exec "$(dirname "$0")/pipeline" "$@"
fi
echo "dry python: only -m pipeline, not $*" >&2
exit 99
"""


def _dry_project(project: Path) -> Path:
    """A project folder (dvc.yaml, reports/) whose `.venv/bin` holds a dry `pipeline` and
    `python`; returns that bin folder."""
    bin_dir = project / VENV_BIN
    bin_dir.mkdir(parents=True)
    (project / "reports").mkdir()
    shutil.copy(PROJECT_ROOT / "dvc.yaml", project / "dvc.yaml")
    shutil.copy(PROJECT_ROOT / "params.yaml", project / "params.yaml")
    source = DRY_PIPELINE.format(python=sys.executable, source=str(PROJECT_ROOT))
    for name, text in (("pipeline", source), ("python", DRY_PYTHON)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def _cycle(stdout: str) -> dict:
    """What the dry pipeline's retraining cycle was asked to do: its first line of output."""
    lines = stdout.splitlines()
    assert lines, "the command never reached `pipeline retrain`'s cycle"
    return json.loads(lines[0])


def _assert_one_cycle_in(project: Path, cycle: dict, force: bool = False) -> None:
    """The cycle ran on `project`, from it, with the project's virtualenv first on PATH."""
    assert Path(cycle["root"]) == project.resolve()
    assert Path(cycle["cwd"]).resolve() == project.resolve()
    assert cycle["python"] == str(project / VENV_BIN / "python"), "DVC would use another python"
    assert cycle["force"] is force


# --- cron -------------------------------------------------------------------------------------

CRON_NAMES = {
    3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def _cron_values(field: str, position: int) -> set[int]:
    """The values one of the five cron time fields matches (`*`, numbers, ranges, steps,
    lists, month and day names); a ValueError for what cron would refuse."""
    low, high = CRON_RANGES[position]
    names = CRON_NAMES.get(position, [])

    def number(token: str) -> int:
        if token.lower() in names:
            return names.index(token.lower()) + (1 if position == 3 else 0)
        if not token.isdigit() or not low <= int(token) <= high:
            raise ValueError(f"{token!r} is not in {low}-{high}")
        return int(token)

    values: set[int] = set()
    for item in field.split(","):
        base, _, step = item.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            raise ValueError(f"bad step in {item!r}")
        if base == "*":
            start, end = low, high
        else:
            first, _, last = base.partition("-")
            start = number(first)
            end = number(last) if last else (high if step else start)
        if start > end:
            raise ValueError(f"empty range {item!r}")
        values.update(range(start, end + 1, int(step or 1)))
    return values


def _fires_once_a_day(fields: list[str]) -> bool:
    """Five cron time fields that match one minute of every day."""
    minutes, hours, days, months, weekdays = map(_cron_values, fields, range(5))
    every_day = days == set(range(1, 32)) and months == set(range(1, 13))
    return len(minutes) == len(hours) == 1 and every_day and weekdays >= set(range(7))


def test_the_cron_field_parser_itself() -> None:
    assert _cron_values("*/15", 0) == {0, 15, 30, 45}
    assert _cron_values("0-30/10,59", 0) == {0, 10, 20, 30, 59}
    assert _cron_values("mon-fri", 4) == {1, 2, 3, 4, 5}
    assert _cron_values("7", 4) == {7} and _cron_values("dec", 3) == {12}
    for field, position in (("60", 0), ("*/0", 0), ("a", 0), ("", 0), ("5-1", 0), ("24", 1)):
        with pytest.raises(ValueError):
            _cron_values(field, position)
    assert _fires_once_a_day(["17", "3", "*", "*", "*"])
    assert not _fires_once_a_day(["17", "3", "*", "*", "mon"])
    assert not _fires_once_a_day(["*/30", "3", "*", "*", "*"])


def _cron_job_and_env() -> tuple[str, dict[str, str]]:
    lines = [line.strip() for line in CRON_FILE.read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    assignment = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
    env = {m[1]: m[2] for m in map(assignment.match, lines) if m}
    jobs = [line for line in lines if not assignment.match(line)]
    assert len(jobs) == 1, f"expected one job line in {CRON_FILE}, found {jobs}"
    return jobs[0], env


def test_the_cron_job_fires_once_a_day_as_a_user() -> None:
    assert CRON_FILE.read_text().endswith("\n"), "cron ignores a last line with no newline"
    line, _ = _cron_job_and_env()
    fields = line.split(None, 6)
    assert len(fields) == 7, "/etc/cron.d format: 5 time fields, the user, the command"
    *times, user, command = fields
    assert _fires_once_a_day(times), f"{times} does not fire once a day"
    assert re.fullmatch(r"[a-z_][a-z0-9_-]*", user), f"{user!r}: the user field is missing?"
    assert "%" not in command, "cron turns % into a newline"


def test_the_cron_command_runs_one_cycle_in_the_project_and_logs_it(tmp_path: Path) -> None:
    """Run as cron runs it (/bin/sh, cron's minimal PATH, the file's variables), with the
    project path pointed at a dry project: one `pipeline retrain` cycle of that project, with
    its virtualenv's python, its output appended to reports/retrain.log."""
    line, env = _cron_job_and_env()
    command = line.split(None, 6)[6]
    project_dir = re.match(r"cd (/\S+) && ", command)[1]
    project = tmp_path / "project"
    _dry_project(project)
    cron_env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", **env}
    for _ in range(2):
        result = subprocess.run(
            [cron_env["SHELL"], "-c", command.replace(project_dir, str(project))],
            env=cron_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
    log = (project / "reports" / "retrain.log").read_text()
    assert log.count("no new data: no change") == 2, "each cycle appends to the log"
    _assert_one_cycle_in(project, _cycle(log))


# --- systemd ----------------------------------------------------------------------------------


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    assert parser.read(SYSTEMD / name), f"no {SYSTEMD / name}"
    return parser


def _environment(service: configparser.SectionProxy) -> dict[str, str]:
    """The Environment= assignments (configparser keeps only the last Environment= line)."""
    return dict(item.split("=", 1) for item in shlex.split(service.get("Environment", "")))


def _run_service(service: configparser.SectionProxy, project: Path, outcome: str = "") -> tuple:
    """Run the service's ExecStart= as systemd would, in WorkingDirectory= with Environment=,
    the project path pointed at `project`: (exit status, stdout)."""
    shipped = service["WorkingDirectory"]
    executable, *arguments = shlex.split(service["ExecStart"].replace(shipped, str(project)))
    environment = {
        key: value.replace(shipped, str(project)) for key, value in _environment(service).items()
    }
    result = subprocess.run(
        [executable, *arguments],
        cwd=service["WorkingDirectory"].replace(shipped, str(project)),
        env={**environment, "DRY_OUTCOME": outcome},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return result.returncode, result.stdout


def test_the_systemd_service_runs_one_cycle_in_the_project(tmp_path: Path) -> None:
    service = _unit("pipeline-retrain.service")["Service"]
    project = tmp_path / "project"
    _dry_project(project)
    status, stdout = _run_service(service, project)
    assert status == 0
    _assert_one_cycle_in(project, _cycle(stdout))
    assert service["Type"] == "oneshot", "the timer must not start a cycle while one runs"


def test_the_service_counts_a_held_lock_as_success_and_a_failed_step_as_failure(
    tmp_path: Path,
) -> None:
    """A cycle that finds another one running did nothing wrong: its exit status is in
    SuccessExitStatus=. A failed step must leave the unit failed, for alerting."""
    service = _unit("pipeline-retrain.service")["Service"]
    project = tmp_path / "project"
    _dry_project(project)
    successes = {"0", *service.get("SuccessExitStatus", "").split()}
    status, _ = _run_service(service, project, outcome="lock-held")
    assert status != 0 and str(status) in successes
    status, _ = _run_service(service, project, outcome="failed")
    assert status != 0 and str(status) not in successes


@pytest.mark.parametrize("name", ["pipeline-retrain.service", "pipeline-serve.service"])
def test_the_service_hardening_leaves_the_project_writable(name: str) -> None:
    service = _unit(name)["Service"]
    project = service["WorkingDirectory"]
    assert service["EnvironmentFile"].startswith("-"), "the env file must be optional"
    assert service.get("User", "root") != "root"
    if service.get("ProtectSystem") == "strict":
        assert project in service.get("ReadWritePaths", "").split()
    if service.get("ProtectSystem") in ("yes", "true", "full"):
        assert not project.startswith(("/usr/", "/boot/", "/etc/"))
    assert service.get("ProtectHome", "no") in ("no", "false") or not project.startswith(
        ("/home/", "/root/")
    )
    assert service.get("ReadOnlyPaths") is None


def test_the_serve_unit_serves_the_projects_champion_and_restarts_on_failure(
    tmp_path: Path,
) -> None:
    """ExecStart= reaches `pipeline serve` in the project with its virtualenv, on loopback,
    recording into the project; a failed start (no champion yet) is tried again."""
    unit = _unit("pipeline-serve.service")
    service = unit["Service"]
    project = tmp_path / "project"
    _dry_project(project)
    status, stdout = _run_service(service, project)
    assert status == 0, stdout
    asked = _cycle(stdout)
    assert Path(asked["cwd"]).resolve() == project.resolve()
    assert asked["python"] == str(project / VENV_BIN / "python")
    options = asked["serve"]
    assert options["host"] == "127.0.0.1"
    assert options["registered_model"] == "digits-classifier"
    assert Path(options["predictions_dir"]) == project.resolve() / "monitoring" / "predictions"
    assert service["Type"] == "simple" and service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM", "SIGTERM flushes the prediction records"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    assert (
        service["WorkingDirectory"]
        == _unit("pipeline-retrain.service")["Service"]["WorkingDirectory"]
    ), "both units must name the same project"


def test_the_timer_starts_the_shipped_service() -> None:
    timer = _unit("pipeline-retrain.timer")
    assert (SYSTEMD / timer["Timer"].get("Unit", "pipeline-retrain.service")).is_file()
    assert timer["Install"]["WantedBy"] == "timers.target", "enable would not start the timer"


def _require_tools(*names: str) -> None:
    """Skip without the tools a deploy file runs (Debian: systemd, jq, git); a failure where
    CI installed them (.ci/run sets PIPELINE_TESTS_REQUIRE_DEPLOY_TOOLS=1)."""
    missing = [name for name in names if shutil.which(name) is None]
    if not missing:
        return
    reason = f"{', '.join(missing)} not installed; .ci/run installs them"
    if os.environ.get("PIPELINE_TESTS_REQUIRE_DEPLOY_TOOLS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def test_the_timer_fires_once_a_day() -> None:
    """systemd parses OnCalendar= and its next elapses are one day apart."""
    _require_tools("systemd-analyze")
    calendar = _unit("pipeline-retrain.timer")["Timer"]["OnCalendar"]
    result = subprocess.run(
        ["systemd-analyze", "calendar", "--iterations=3", calendar],
        capture_output=True,
        text=True,
        timeout=10,
        env={**os.environ, "TZ": "UTC"},
    )
    assert result.returncode == 0, result.stderr
    elapses = [
        datetime.strptime(" ".join(match.split()[1:3]), "%Y-%m-%d %H:%M:%S")
        for match in re.findall(r"(?:Next elapse|Iter\. #\d+): (.+)", result.stdout)
    ]
    assert len(elapses) == 3, result.stdout
    assert {later - earlier for earlier, later in pairwise(elapses)} == {timedelta(days=1)}


def test_systemd_analyze_verifies_the_units(tmp_path: Path) -> None:
    _require_tools("systemd-analyze")
    # verify checks that ExecStart= is executable: point the paths at a dry project.
    project = _unit("pipeline-retrain.service")["Service"]["WorkingDirectory"]
    dry_project = tmp_path / "project"
    _dry_project(dry_project)
    units = tmp_path / "units"
    units.mkdir()
    for source in sorted(SYSTEMD.glob("pipeline-*")):
        (units / source.name).write_text(source.read_text().replace(project, str(dry_project)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(map(str, units.iterdir()))],
        capture_output=True,
        text=True,
        timeout=20,
    )
    # Unknown keys and bad values are only warnings: any line about these units fails.
    complaints = [line for line in result.stderr.splitlines() if "pipeline-" in line]
    assert result.returncode == 0 and not complaints, result.stderr


# --- GitHub Actions ---------------------------------------------------------------------------


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW_FILE.read_text())


def _step_running(steps: list[dict], text: str) -> int:
    [index] = [i for i, step in enumerate(steps) if text in step.get("run", "")]
    return index


def test_the_workflow_fires_once_a_day_and_never_overlaps() -> None:
    workflow = _workflow()
    triggers = workflow.get("on", workflow.get(True))  # PyYAML reads the key `on` as True
    [schedule] = triggers["schedule"]
    assert _fires_once_a_day(schedule["cron"].split()), schedule["cron"]
    force = triggers["workflow_dispatch"]["inputs"]["force"]
    assert force["type"] == "boolean" and force["default"] is False
    # One group, and a run started during another waits instead of cancelling it.
    assert workflow["concurrency"]["group"]
    assert workflow["concurrency"]["cancel-in-progress"] is False
    assert workflow["permissions"]["contents"] == "write", "it commits dvc.lock"


def test_the_workflow_restores_dvc_retrains_pushes_and_commits() -> None:
    """The steps run in the order the cycle needs, the reports are uploaded even when a step
    failed, and the secrets it reads are the ones deploy/README.md tells you to set."""
    [job] = _workflow()["jobs"].values()
    assert job["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    steps = job["steps"]
    uses = {step["uses"].split("@")[0]: step for step in steps if "uses" in step}
    assert uses["actions/upload-artifact"]["with"]["path"].rstrip("/") == "reports"
    assert uses["actions/upload-artifact"].get("if") == "always()"
    install = _step_running(steps, "pip install -c constraints.txt -e .")
    remote = _step_running(steps, "dvc remote add")
    assert '"$DVC_REMOTE_URL"' in steps[remote]["run"]
    assert steps[remote]["env"]["DVC_REMOTE_URL"] == "${{ secrets.DVC_REMOTE_URL }}"
    pull = _step_running(steps, "dvc pull")
    retrain = _step_running(steps, "pipeline retrain")
    push = _step_running(steps, "dvc push")
    commit = _step_running(steps, "git commit")
    assert install < remote <= pull < retrain < push < commit
    used = set(re.findall(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)", WORKFLOW_FILE.read_text()))
    assert used == WORKFLOW_SECRETS
    readme = (DEPLOY / "README.md").read_text()
    assert all(f"`{secret}`" in readme for secret in WORKFLOW_SECRETS)


def test_the_workflow_scripts_parse_and_force_reaches_the_cycle(tmp_path: Path) -> None:
    steps = next(iter(_workflow()["jobs"].values()))["steps"]
    for step in steps:
        if "run" in step:
            script = re.sub(r"\$\{\{.*?\}\}", "EXPR", step["run"])
            result = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
            assert result.returncode == 0, f"{step.get('name')}: {result.stderr}"
    step = steps[_step_running(steps, "pipeline retrain")]
    assert re.fullmatch(r"\$\{\{\s*inputs\.force\s*\}\}", step["env"]["FORCE"])
    project = tmp_path / "project"
    bin_dir = _dry_project(project)
    # A scheduled run has no inputs: `${{ inputs.force }}` is empty there.
    for force, forced in (("true", True), ("false", False), ("", False)):
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FORCE": force}
        result = subprocess.run(
            ["bash", "-e", "-c", step["run"]], cwd=project, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        _assert_one_cycle_in(project, _cycle(result.stdout), force=forced)


def test_the_workflow_commits_the_cycle_record_only_after_training(tmp_path: Path) -> None:
    """Run the commit step in a scratch git repository, with `git push` a no-op: a night with
    no new data commits nothing; a cycle that trained commits dvc.lock and its record."""
    _require_tools("jq", "git")
    steps = next(iter(_workflow()["jobs"].values()))["steps"]
    script = steps[_step_running(steps, "git commit")]["run"]
    repo = tmp_path / "repo"
    (repo / "reports" / "retrain").mkdir(parents=True)
    remote = tmp_path / "remote.git"
    git = ["git", "-C", str(repo)]
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "remote", "add", "origin", str(remote)], check=True)
    (repo / "dvc.lock").write_text("stages: {}\n")
    (repo / "reports" / "retrain" / "trained_data.json").write_text("{}\n")
    env = {**os.environ, "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

    def commits() -> list[str]:
        log = subprocess.run([*git, "log", "--format=%s"], capture_output=True, text=True, env=env)
        return log.stdout.splitlines()

    for outcome in ("no new data", "promoted"):
        (repo / "reports" / "retrain.json").write_text(json.dumps({"outcome": outcome}))
        result = subprocess.run(
            ["bash", "-e", "-c", script.replace("git push", "git push -q origin HEAD")],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
    assert commits() == ["retrain: promoted"]
    files = subprocess.run(
        [*git, "show", "--name-only", "--format="], capture_output=True, text=True, env=env
    ).stdout.split()
    assert sorted(files) == [
        "dvc.lock",
        "reports/retrain.json",
        "reports/retrain/trained_data.json",
    ]


# --- MLproject --------------------------------------------------------------------------------


def _dvc_stages() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def test_mlproject_trains_one_strategy_through_its_dvc_stage() -> None:
    from mlflow.projects._project_spec import load_project

    from pipeline.config import STRATEGY_NAMES

    project = load_project(str(PROJECT_ROOT))
    assert shlex.split(project.get_entry_point("main").command) == ["dvc", "repro"]
    train = project.get_entry_point("train")
    stages = _dvc_stages()
    for strategy in STRATEGY_NAMES:
        command = shlex.split(train.compute_command({"strategy": strategy}, storage_dir=None))
        assert command[:2] == ["dvc", "repro"]
        assert command[2:] == [f"train_{strategy}"] and command[2] in stages
    default = shlex.split(train.compute_command({}, storage_dir=None))
    assert default[2] in stages


def test_mlproject_retrain_passes_force_as_the_flag(tmp_path: Path) -> None:
    from mlflow.projects._project_spec import load_project

    retrain = load_project(str(PROJECT_ROOT)).get_entry_point("retrain")
    project = tmp_path / "project"
    bin_dir = _dry_project(project)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(parameters: dict) -> subprocess.CompletedProcess:
        command = retrain.compute_command(parameters, storage_dir=None)
        # As MLflow's local backend runs it: `bash -c <command>`, from the project.
        return subprocess.run(
            ["bash", "-c", command], cwd=project, env=env, capture_output=True, text=True
        )

    for parameters, forced in (({}, False), ({"force": "false"}, False), ({"force": "true"}, True)):
        result = run(parameters)
        assert result.returncode == 0, result.stderr
        _assert_one_cycle_in(project, _cycle(result.stdout), force=forced)
    for bad in ("yes please", "x; touch pwned", ""):
        result = run({"force": bad})
        assert result.returncode == 2 and "force must be true or false" in result.stderr
        assert result.stdout == "" and not (project / "pwned").exists()
