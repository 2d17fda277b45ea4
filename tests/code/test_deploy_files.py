"""The files that schedule `pipeline retrain` (cron, systemd, GitHub Actions) and the MLproject
entry points work as shipped: they parse, run `pipeline retrain` the way the verb expects
(from the project root, with the project's virtualenv first on PATH, exit 75 not a failure),
and name DVC stages that exist. Their commands are run against stub executables, never for
real."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.project import PROJECT_ROOT

DEPLOY = PROJECT_ROOT / "deploy"
CRON_FILE = DEPLOY / "cron" / "retrain.cron"
SYSTEMD = DEPLOY / "systemd"
WORKFLOW_FILE = PROJECT_ROOT / ".github" / "workflows" / "retrain.yml"
VENV_PIPELINE = "/.venv/bin/pipeline"
LOCK_HELD_STATUS = "75"  # `pipeline retrain`'s status when another cycle holds the lock
WORKFLOW_SECRETS = {
    "MLFLOW_TRACKING_URI",
    "DVC_REMOTE_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
}

# A stub for `pipeline` (or `python`): prints its arguments and the `python` it would find.
STUB = '#!/bin/sh\necho "args: $*"\necho "python: $(command -v python)"\n'


def _stub_venv(project: Path) -> Path:
    """`project/.venv/bin` with stub `pipeline` and `python` executables."""
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("pipeline", "python"):
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    return bin_dir


# --- cron -------------------------------------------------------------------------------------

CRON_NAMES = {
    3: ["jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"],
    4: ["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
}
CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def _valid_cron_field(field: str, position: int) -> bool:
    """One of the five time fields: `*`, numbers, ranges, steps, lists, month and day names."""
    low, high = CRON_RANGES[position]
    names = CRON_NAMES.get(position, [])

    def number(token: str) -> int | None:
        if token.lower() in names:
            return names.index(token.lower()) + (1 if position == 3 else 0)
        return int(token) if token.isdigit() else None

    for item in field.split(","):
        base, _, step = item.partition("/")
        if step and not (step.isdigit() and int(step) > 0):
            return False
        if base == "*":
            continue
        start, _, end = base.partition("-")
        bounds = [number(start)] + ([number(end)] if end else [])
        if any(value is None or not low <= value <= high for value in bounds):
            return False
        if len(bounds) == 2 and bounds[0] > bounds[1]:
            return False
    return True


def test_cron_field_validation_itself() -> None:
    assert all(_valid_cron_field(f, 0) for f in ("17", "*/15", "0-30/5", "1,31"))
    assert all(_valid_cron_field(f, 4) for f in ("*", "mon-fri", "0", "7"))
    assert not any(_valid_cron_field(f, 0) for f in ("60", "*/0", "a", "", "5-1"))
    assert not _valid_cron_field("24", 1) and not _valid_cron_field("13", 3)


def _cron_job_and_env() -> tuple[str, dict[str, str]]:
    lines = [line.strip() for line in CRON_FILE.read_text().splitlines()]
    lines = [line for line in lines if line and not line.startswith("#")]
    assignment = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")
    env = {m[1]: m[2] for m in map(assignment.match, lines) if m}
    jobs = [line for line in lines if not assignment.match(line)]
    assert len(jobs) == 1, f"expected one job line in {CRON_FILE}, found {jobs}"
    return jobs[0], env


def test_the_cron_line_runs_one_cycle_nightly_from_the_project() -> None:
    assert CRON_FILE.read_text().endswith("\n"), "cron ignores a last line with no newline"
    line, _ = _cron_job_and_env()
    fields = line.split(None, 6)
    assert len(fields) == 7, "/etc/cron.d format: 5 time fields, the user, the command"
    *times, user, command = fields
    for position, field in enumerate(times):
        assert _valid_cron_field(field, position), f"bad cron time field {field!r} in {line!r}"
    assert times[2:] == ["*", "*", "*"] and times[1].isdigit(), "once a day"
    assert re.fullmatch(r"[a-z_][a-z0-9_-]*", user), f"{user!r}: the user field is missing?"
    assert "%" not in command, "cron turns % into a newline"
    assert re.match(r"cd /\S+ && ", command), "the cycle runs in the project directory"
    assert f"{VENV_PIPELINE.lstrip('/')} retrain" in command
    assert ">> reports/retrain.log 2>&1" in command


def test_the_cron_command_runs_pipeline_retrain_with_the_venv_python(tmp_path: Path) -> None:
    line, env = _cron_job_and_env()
    command = line.split(None, 6)[6]
    project_dir = re.match(r"cd (/\S+) && ", command)[1]
    project = tmp_path / "project"
    (project / "reports").mkdir(parents=True)
    bin_dir = _stub_venv(project)
    # As cron runs it: /bin/sh, cron's minimal PATH, the file's variables.
    cron_env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "SHELL": "/bin/sh", **env}
    result = subprocess.run(
        [cron_env["SHELL"], "-c", command.replace(project_dir, str(project))],
        env=cron_env,
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 0, result.stderr
    log = (project / "reports" / "retrain.log").read_text().splitlines()
    assert log == ["args: retrain", f"python: {bin_dir / 'python'}"]


# --- systemd ----------------------------------------------------------------------------------


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # systemd keys are case-sensitive
    assert parser.read(SYSTEMD / name), f"no {SYSTEMD / name}"
    return parser


def _environment(service: configparser.SectionProxy) -> dict[str, str]:
    """The Environment= assignments (configparser keeps only the last Environment= line)."""
    return dict(item.split("=", 1) for item in shlex.split(service.get("Environment", "")))


def test_the_systemd_service_runs_one_cycle_in_the_project() -> None:
    service = _unit("pipeline-retrain.service")["Service"]
    assert service["Type"] == "oneshot"
    executable, *arguments = shlex.split(service["ExecStart"])
    assert executable.endswith(VENV_PIPELINE) and arguments == ["retrain"]
    project = executable.removesuffix(VENV_PIPELINE)
    assert service["WorkingDirectory"] == project
    assert _environment(service)["PATH"].split(":")[0] == f"{project}/.venv/bin"
    assert LOCK_HELD_STATUS in service["SuccessExitStatus"].split()
    assert service["EnvironmentFile"].startswith("-"), "the env file must be optional"
    assert service.get("User", "root") != "root"
    # Hardening must leave the project directory writable.
    if service.get("ProtectSystem") == "strict":
        assert project in service.get("ReadWritePaths", "").split()
    if service.get("ProtectSystem") in ("yes", "true", "full"):
        assert not project.startswith(("/usr/", "/boot/", "/etc/"))
    assert service.get("ProtectHome", "no") in ("no", "false") or not project.startswith(
        ("/home/", "/root/")
    )
    assert service.get("ReadOnlyPaths") is None


def test_the_systemd_timer_starts_the_service_daily() -> None:
    timer = _unit("pipeline-retrain.timer")
    assert timer["Timer"]["Unit"] == "pipeline-retrain.service"
    assert (SYSTEMD / timer["Timer"]["Unit"]).is_file()
    assert timer["Timer"]["OnCalendar"]
    assert timer["Timer"]["Persistent"] == "true"
    assert timer["Timer"]["RandomizedDelaySec"]
    assert timer["Install"]["WantedBy"] == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_accepts_the_units(tmp_path: Path) -> None:
    calendar = _unit("pipeline-retrain.timer")["Timer"]["OnCalendar"]
    result = subprocess.run(
        ["systemd-analyze", "calendar", calendar], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    # verify checks that ExecStart= is executable: point the paths at a stub project.
    project = _unit("pipeline-retrain.service")["Service"]["WorkingDirectory"]
    stub_project = tmp_path / "project"
    _stub_venv(stub_project)
    units = tmp_path / "units"
    units.mkdir()
    for source in sorted(SYSTEMD.glob("pipeline-retrain.*")):
        (units / source.name).write_text(source.read_text().replace(project, str(stub_project)))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *sorted(map(str, units.iterdir()))],
        capture_output=True,
        text=True,
        timeout=20,
    )
    # Unknown keys and bad values are only warnings: any line about these units fails.
    complaints = [line for line in result.stderr.splitlines() if "pipeline-retrain" in line]
    assert result.returncode == 0 and not complaints, result.stderr


# --- GitHub Actions ---------------------------------------------------------------------------


def _workflow() -> dict:
    return yaml.safe_load(WORKFLOW_FILE.read_text())


def _step_running(steps: list[dict], text: str) -> int:
    [index] = [i for i, step in enumerate(steps) if text in step.get("run", "")]
    return index


def test_the_workflow_is_scheduled_and_never_overlaps() -> None:
    workflow = _workflow()
    triggers = workflow.get("on", workflow.get(True))  # PyYAML reads the key `on` as True
    [schedule] = triggers["schedule"]
    fields = schedule["cron"].split()
    assert len(fields) == 5 and all(map(_valid_cron_field, fields, range(5)))
    force = triggers["workflow_dispatch"]["inputs"]["force"]
    assert force["type"] == "boolean" and force["default"] is False
    assert workflow["concurrency"]["group"]
    assert workflow["concurrency"]["cancel-in-progress"] is False
    assert workflow["permissions"]["contents"] == "write"


def test_the_workflow_restores_dvc_retrains_pushes_and_commits() -> None:
    workflow = _workflow()
    [job] = workflow["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest"
    assert job["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    steps = job["steps"]
    uses = {step["uses"].split("@")[0]: step for step in steps if "uses" in step}
    assert {"actions/checkout", "actions/setup-python", "actions/upload-artifact"} <= set(uses)
    assert all(re.search(r"@v\d+$", step["uses"]) for step in uses.values())
    python = uses["actions/setup-python"]["with"]
    assert str(python["python-version"]) == "3.11" and python["cache"] == "pip"
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
    committed = steps[commit]["run"]
    for file in ("dvc.lock", "reports/retrain.json", "reports/retrain/trained_data.json"):
        assert file in committed
    assert "git diff --cached --quiet" in committed and "git push" in committed
    used = set(re.findall(r"secrets\.([A-Za-z_][A-Za-z0-9_]*)", WORKFLOW_FILE.read_text()))
    assert used == WORKFLOW_SECRETS


def test_the_workflow_scripts_parse_and_force_reaches_the_cycle(tmp_path: Path) -> None:
    steps = next(iter(_workflow()["jobs"].values()))["steps"]
    for step in steps:
        if "run" in step:
            script = re.sub(r"\$\{\{.*?\}\}", "EXPR", step["run"])
            result = subprocess.run(["bash", "-n", "-c", script], capture_output=True, text=True)
            assert result.returncode == 0, f"{step.get('name')}: {result.stderr}"
    step = steps[_step_running(steps, "pipeline retrain")]
    assert re.fullmatch(r"\$\{\{\s*inputs\.force\s*\}\}", step["env"]["FORCE"])
    bin_dir = _stub_venv(tmp_path)
    # A scheduled run has no inputs: `${{ inputs.force }}` is empty there.
    for force, arguments in (("true", "retrain --force"), ("false", "retrain"), ("", "retrain")):
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "FORCE": force}
        result = subprocess.run(
            ["bash", "-e", "-c", step["run"]], env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == f"args: {arguments}"


# --- MLproject --------------------------------------------------------------------------------


def _dvc_stages() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"]


def test_mlproject_trains_one_strategy_through_its_dvc_stage() -> None:
    from mlflow.projects._project_spec import load_project

    from pipeline.config import STRATEGY_NAMES

    project = load_project(str(PROJECT_ROOT))
    assert project.get_entry_point("main").command == "dvc repro"
    train = project.get_entry_point("train")
    assert train.parameters["strategy"].default == "scratch"
    assert train.compute_command({}, storage_dir=None) == "dvc repro train_scratch"
    stages = _dvc_stages()
    assert {f"train_{strategy}" for strategy in STRATEGY_NAMES} <= set(stages)
    for strategy in STRATEGY_NAMES:
        command = train.compute_command({"strategy": strategy}, storage_dir=None)
        assert shlex.split(command) == ["dvc", "repro", f"train_{strategy}"]


def test_mlproject_retrain_passes_force_as_the_flag(tmp_path: Path) -> None:
    from mlflow.projects._project_spec import load_project

    retrain = load_project(str(PROJECT_ROOT)).get_entry_point("retrain")
    assert retrain.parameters["force"].type == "string"
    bin_dir = _stub_venv(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}

    def run(parameters: dict) -> subprocess.CompletedProcess:
        command = retrain.compute_command(parameters, storage_dir=None)
        # As MLflow's local backend runs it: `bash -c <command>`, here with `python` a stub.
        return subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)

    for parameters, arguments in (
        ({}, "-m pipeline retrain"),
        ({"force": "false"}, "-m pipeline retrain"),
        ({"force": "true"}, "-m pipeline retrain --force"),
    ):
        result = run(parameters)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines()[0] == f"args: {arguments}"
    for bad in ("yes please", "x; touch pwned", ""):
        result = run({"force": bad})
        assert result.returncode == 2 and "force must be true or false" in result.stderr
        assert "args:" not in result.stdout and not (tmp_path / "pwned").exists()
