"""The Makefile's commands for a newcomer (`make repro`, `make test`, `make ui`,
`make tensorboard`), run in a temporary folder against fake interpreters, pip, uv, dvc, mlflow
and tensorboard: never a real install (one test starts the real TensorBoard).

What they check: an interpreter that cannot make .venv stops the set-up with one line saying
what to install; uv is used when it is on PATH and pip otherwise, with the pins either way; the
stamp .venv/.installed makes a second run install nothing, and a failed install leaves no stamp;
the pipeline, the tests and the MLflow UI run from .venv/bin with nothing sourced.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from tests.project import PROJECT_ROOT

pytestmark = pytest.mark.integration

MAKE = shutil.which("make")
CHECK_SCRIPT = "tools/check_python.sh"
COPIED = ("Makefile", "pyproject.toml", "constraints.txt", CHECK_SCRIPT, "tools/show_results.py")
# The only commands the Makefile, its check and these fakes run from PATH; uv is not one of
# them, so a real uv on this machine never leaks in.
SYSTEM_COMMANDS = ("make", "sh", "awk", "rm", "touch", "mkdir", "cp", "dirname", "echo", "tail")
TARGETS = ("repro", "test", "ui", "plots", "tensorboard", "docs", "docs-build", "setup", "help")


def _require_make() -> None:
    if MAKE is not None:
        return
    message = "GNU make is not installed (Debian: apt-get install make)"
    if os.environ.get("PIPELINE_TESTS_REQUIRE_MAKE") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _fake_python(version: str, log: Path, *, has_venv: bool = True) -> str:
    """A shell script answering the check's questions as a Python `version` would, and making
    a .venv (bin/python: itself, bin/pip: the fake pip beside it) on `-m venv DIR`."""
    return f"""#!/bin/sh
echo "python $*" >> "{log}"
case "$*" in
    *version_info*) echo "{version}" ;;
    *"import venv, ensurepip"*) exit {0 if has_venv else 1} ;;
esac
if [ "$1" = -m ] && [ "$2" = venv ]; then
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && cp "$(dirname "$0")/pip" "$3/bin/pip"
fi
exit 0
"""


class Project:
    """A temporary copy of the Makefile and what it reads, with a folder of fake commands."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.log = root / "calls.log"
        self.fakes = root / "fakes"
        self.system = root / "system"
        for relative in COPIED:
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / relative, root / relative)
        self.fakes.mkdir()
        self.system.mkdir()
        for name in SYSTEM_COMMANDS:
            found = shutil.which(name)
            assert found, f"{name} is needed to run the Makefile"
            (self.system / name).symlink_to(found)
        # As chatty as pip (a line per package), and failing as pip fails when asked to.
        self.write_fake(
            "pip",
            f"""#!/bin/sh
echo "pip $*" >> "{self.log}"
i=0
while [ $i -lt 50 ]; do echo "Collecting package-$i"; i=$((i + 1)); done
if [ "${{FAKE_STATUS:-0}}" != 0 ]; then
    echo "ERROR: No matching distribution found for tensorflow==9.9" >&2
fi
exit ${{FAKE_STATUS:-0}}
""",
        )
        self.age_inputs()

    def write_fake(self, name: str, text: str, folder: Path | None = None) -> Path:
        path = (folder or self.fakes) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        path.chmod(0o755)
        return path

    def python(self, version: str = "3.11.7", *, has_venv: bool = True) -> str:
        """The path of a fake interpreter of `version`, for PYTHON=."""
        name = f"python{version}{'' if has_venv else '-novenv'}"
        return str(self.write_fake(name, _fake_python(version, self.log, has_venv=has_venv)))

    def add_uv(self, venv_python_version: str = "3.11.7") -> None:
        """A fake uv on PATH: `uv venv` makes .venv with a fake Python of the given version."""
        template = self.write_fake(
            "uv-python", _fake_python(venv_python_version, self.log), self.root / "uv-data"
        )
        self.write_fake(
            "uv",
            f"""#!/bin/sh
echo "uv $*" >> "{self.log}"
if [ "$1" = venv ]; then
    for last in "$@"; do :; done
    mkdir -p "$last/bin" && cp "{template}" "$last/bin/python"
fi
exit ${{FAKE_STATUS:-0}}
""",
        )

    def age_inputs(self, seconds_ago: float = 100) -> None:
        """Date pyproject.toml and constraints.txt in the past, so a stamp written now is newer."""
        then = time.time() - seconds_ago
        for name in ("pyproject.toml", "constraints.txt"):
            os.utime(self.root / name, (then, then))

    def edit(self, name: str) -> None:
        """Date the stamp in the past and `name` (pyproject.toml, constraints.txt) now."""
        self.age_inputs(seconds_ago=200)
        then = time.time() - 100
        os.utime(self.stamp, (then, then))
        (self.root / name).touch()

    def make(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`make ARGS` in the copy, with only the fakes and the few system commands on PATH (and
        none of the caller's make variables: these tests may run under `make test`)."""
        environment = {
            "PATH": f"{self.fakes}{os.pathsep}{self.system}",
            "HOME": str(self.root),
            "LC_ALL": "C",
            **env,
        }
        return subprocess.run(
            [MAKE, "--no-print-directory", *args],
            cwd=self.root,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []

    @property
    def stamp(self) -> Path:
        return self.root / ".venv" / ".installed"

    def installed_venv(self, version: str = "3.11.7") -> Path:
        """A .venv as a good set-up leaves it: a fake python, a stamp newer than the pins."""
        bin_folder = self.root / ".venv" / "bin"
        bin_folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(self.python(version), bin_folder / "python")
        self.stamp.touch()
        return bin_folder


@pytest.fixture
def project(tmp_path: Path) -> Project:
    _require_make()
    return Project(tmp_path)


def _one_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single line a failed check prints (make's `Makefile:N: *** ... Stop.`)."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


# --- help ------------------------------------------------------------------------------------


def test_make_alone_and_make_help_list_each_target_on_one_line(project: Project) -> None:
    alone, help_ = project.make(), project.make("help")

    assert alone.returncode == help_.returncode == 0, alone.stderr + help_.stderr
    assert alone.stdout == help_.stdout
    lines = help_.stdout.splitlines()
    for target in TARGETS:
        described = [line for line in lines if line.split()[:1] == [target]]
        assert len(described) == 1, (target, lines)
        assert len(described[0].split()) > 2, f"{target} has no description"
    assert not project.calls(), "help ran an interpreter"


# --- the interpreter check -------------------------------------------------------------------


@pytest.mark.parametrize("version", ["3.9.2", "3.10.12", "3.11.2", "3.11.3", "3.13.0", "2.7.18"])
@pytest.mark.parametrize("goal", ["setup", "repro", "test"])
def test_an_unsupported_python_stops_with_one_line(
    project: Project, version: str, goal: str
) -> None:
    python = project.python(version)

    line = _one_line(project.make(goal, f"PYTHON={python}"))

    assert (
        f"{python} is {version}; this project needs Python 3.11 (3.11.4 or later) or 3.12" in line
    )
    assert "apt-get install python3.12 python3.12-venv" in line
    assert f"`PYTHON=python3.12 make {goal}`" in line
    assert not (project.root / ".venv").exists()


def test_a_dry_run_checks_the_interpreter_too(project: Project) -> None:
    line = _one_line(project.make("-n", "repro", f"PYTHON={project.python('3.9.2')}"))

    assert "is 3.9.2" in line


@pytest.mark.parametrize("version", ["3.11.4", "3.11.9", "3.12.0", "3.12.7"])
def test_a_supported_python_passes(project: Project, version: str) -> None:
    result = project.make("-n", "setup", f"PYTHON={project.python(version)}")

    assert result.returncode == 0, result.stderr
    assert "-m venv .venv" in result.stdout


def test_a_missing_python_stops_with_one_line(project: Project) -> None:
    line = _one_line(project.make("repro", "PYTHON=python3.12"))

    assert "python3.12 not found; this project needs Python 3.11" in line
    assert "`PYTHON=python3.12 make repro`" in line


def test_the_default_python_is_python3(project: Project) -> None:
    line = _one_line(project.make("setup"))

    assert "python3 not found" in line


def test_a_python_without_venv_or_ensurepip_stops_with_one_line(project: Project) -> None:
    python = project.python("3.12.3", has_venv=False)

    line = _one_line(project.make("setup", f"PYTHON={python}"))

    assert f"{python} (3.12.3) has no venv module with ensurepip" in line
    assert "apt-get install python3.12-venv" in line
    assert not (project.root / ".venv").exists()


def test_uv_needs_no_venv_module(project: Project) -> None:
    project.add_uv()
    python = project.python("3.12.3", has_venv=False)

    result = project.make("-n", "setup", f"PYTHON={python}")

    assert result.returncode == 0, result.stderr
    assert f"uv venv --seed --python {python} .venv" in result.stdout


def test_with_uv_the_advice_is_a_version_uv_fetches(project: Project) -> None:
    project.add_uv()

    line = _one_line(project.make("setup", f"PYTHON={project.python('3.13.1')}"))

    assert "is 3.13.1" in line and "`PYTHON=3.12 make setup` (uv fetches Python 3.12)" in line


def test_an_existing_venv_of_an_unsupported_python_is_named(project: Project) -> None:
    project.installed_venv("3.10.12")
    project.edit("constraints.txt")  # newer than the stamp: the set-up runs

    line = _one_line(project.make("test", f"PYTHON={project.python()}"))

    assert ".venv has Python 3.10.12" in line and "rm -rf .venv" in line


def test_the_bounds_are_pyprojects_requires_python() -> None:
    """The check hard-codes the bounds (it runs before any Python can be trusted); the
    parametrized versions above pin its behaviour, this pins the source they come from."""
    pyproject = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
    requires = pyproject["project"]["requires-python"]

    assert requires == ">=3.11.4,<3.13"
    assert requires in (PROJECT_ROOT / CHECK_SCRIPT).read_text()


# --- uv or pip, with the pins ----------------------------------------------------------------


def test_without_uv_a_dry_run_shows_the_readmes_pip_commands(project: Project) -> None:
    python = project.python()

    result = project.make("-n", "repro", f"PYTHON={python}")

    assert result.returncode == 0, result.stderr
    assert f"{python} -m venv .venv" in result.stdout
    assert ".venv/bin/pip install --upgrade pip" in result.stdout
    assert '.venv/bin/pip install -c constraints.txt -e ".[dev]"' in result.stdout
    assert "uv " not in result.stdout
    assert not (project.root / ".venv").exists(), "a dry run made .venv"


def test_with_uv_a_dry_run_shows_uv_commands(project: Project) -> None:
    project.add_uv()
    python = project.python()

    result = project.make("-n", "repro", f"PYTHON={python}")

    assert result.returncode == 0, result.stderr
    assert f"uv venv --seed --python {python} .venv" in result.stdout
    assert (
        "uv pip install --compile-bytecode --python .venv/bin/python -c constraints.txt "
        '-e ".[dev]"' in result.stdout
    )
    assert "bin/pip install" not in result.stdout
    assert not [call for call in project.calls() if call.startswith("uv")]


def test_uv_can_be_turned_off(project: Project) -> None:
    project.add_uv()

    result = project.make("-n", "setup", "UV=", f"PYTHON={project.python()}")

    assert "uv " not in result.stdout and "-m venv .venv" in result.stdout


def test_set_up_with_pip_runs_the_readmes_commands_and_writes_the_stamp(project: Project) -> None:
    python = project.python()

    result = project.make("setup", f"PYTHON={python}")

    assert result.returncode == 0, result.stderr
    calls = project.calls()
    assert "python -m venv .venv" in calls
    assert calls[-2:] == [
        "pip install --upgrade pip",
        "pip install -c constraints.txt -e .[dev]",
    ]
    assert project.stamp.is_file()


def test_set_up_with_uv_runs_uvs_commands_and_writes_the_stamp(project: Project) -> None:
    project.add_uv()
    python = project.python()

    result = project.make("setup", f"PYTHON={python}")

    assert result.returncode == 0, result.stderr
    assert [call for call in project.calls() if call.startswith("uv")] == [
        f"uv venv --seed --python {python} .venv",
        "uv pip install --compile-bytecode --python .venv/bin/python -c constraints.txt -e .[dev]",
    ]
    assert project.stamp.is_file()


def test_uv_given_a_version_request_gets_its_venv_checked(project: Project) -> None:
    """`PYTHON=3.12` is no command: uv resolves it, and the Python it chose is checked after."""
    project.add_uv(venv_python_version="3.13.0")

    result = project.make("setup", "PYTHON=3.12")

    assert result.returncode != 0
    assert "make: .venv has Python 3.13.0" in result.stderr
    assert not [call for call in project.calls() if call.startswith("uv pip")]
    assert not project.stamp.exists()


# --- the stamp -------------------------------------------------------------------------------


def test_a_second_run_installs_nothing(project: Project) -> None:
    python = project.python()
    assert project.make("setup", f"PYTHON={python}").returncode == 0
    calls = project.calls()

    again = project.make("setup", f"PYTHON={python}")
    dry_repro = project.make("-n", "repro", f"PYTHON={python}")

    assert again.returncode == 0 and "Nothing to be done" in again.stdout
    assert project.calls() == calls
    assert dry_repro.returncode == 0, dry_repro.stderr
    assert "pip install" not in dry_repro.stdout and "venv .venv" not in dry_repro.stdout
    assert ".venv/bin/dvc repro" in dry_repro.stdout


def test_newer_pins_reinstall_into_the_same_venv(project: Project) -> None:
    python = project.python()
    assert project.make("setup", f"PYTHON={python}").returncode == 0
    project.edit("constraints.txt")
    before = len(project.calls())

    result = project.make("setup", f"PYTHON={python}")

    assert result.returncode == 0, result.stderr
    new_calls = project.calls()[before:]
    assert "pip install -c constraints.txt -e .[dev]" in new_calls
    assert not [call for call in new_calls if "-m venv" in call], "the venv was made again"


def test_a_set_up_prints_a_few_lines_and_a_failed_one_shows_pips_own_error(
    project: Project,
) -> None:
    """The installer's hundreds of lines go to .venv/setup.log: the set-up says what it does in
    a few lines, and a failure shows the end of that log, pip's own error included."""
    python = project.python()

    result = project.make("setup", f"PYTHON={python}")

    assert result.returncode == 0, result.stderr
    printed = (result.stdout + result.stderr).splitlines()
    assert len(printed) <= 10 and "Collecting" not in result.stdout, printed
    assert "Collecting package-49" in (project.root / ".venv" / "setup.log").read_text()

    project.edit("constraints.txt")
    failed = project.make("setup", f"PYTHON={python}", FAKE_STATUS="1")

    assert failed.returncode != 0
    assert "the set-up failed; the end of .venv/setup.log" in failed.stderr
    assert "ERROR: No matching distribution found for tensorflow==9.9" in failed.stderr


def test_a_failed_install_leaves_no_stamp(project: Project) -> None:
    python = project.python()

    failed = project.make("setup", f"PYTHON={python}", FAKE_STATUS="1")
    retried = project.make("-n", "setup", f"PYTHON={python}")

    assert failed.returncode != 0
    assert not project.stamp.exists()
    assert "pip install -c constraints.txt" in retried.stdout


def test_a_failed_reinstall_removes_the_old_stamp(project: Project) -> None:
    python = project.python()
    assert project.make("setup", f"PYTHON={python}").returncode == 0
    project.edit("pyproject.toml")

    failed = project.make("setup", f"PYTHON={python}", FAKE_STATUS="1")

    assert failed.returncode != 0
    assert not project.stamp.exists()


def test_a_venv_that_cannot_be_made_is_removed(project: Project) -> None:
    """Debian's `python3 -m venv` without ensurepip leaves a half-made .venv behind."""
    python = project.write_fake(
        "python-half",
        """#!/bin/sh
case "$*" in
    *version_info*) echo 3.11.7 ;;
    "-m venv .venv") mkdir -p .venv/bin && cp "$0" .venv/bin/python && exit 1 ;;
esac
exit 0
""",
    )

    result = project.make("setup", f"PYTHON={python}")

    assert result.returncode != 0
    assert not (project.root / ".venv").exists()


# --- what repro, test and ui run -------------------------------------------------------------


def test_repro_runs_dvc_from_the_venv_and_prints_the_results(project: Project) -> None:
    bin_folder = project.installed_venv()
    # A python that runs tools/show_results.py for real, and a dvc that says which python
    # its stage commands would find.
    project.write_fake("python", f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', bin_folder)
    project.write_fake(
        "dvc",
        f'#!/bin/sh\necho "dvc $* python=$(command -v python)" >> "{project.log}"\n',
        bin_folder,
    )
    reports = project.root / "reports"
    reports.mkdir()
    (reports / "comparison.csv").write_text(
        "strategy,test_accuracy,test_macro_f1,test_loss,total_params\n"
        "scratch,0.9777777777777777,0.9776,0.0712,58058\n"
        "fine_tune,0.95,0.9498,0.19,14789194\n"
    )
    (reports / "metrics.json").write_text(
        '{"scratch": {"backbone_weights": "none"}, "fine_tune": {"backbone_weights": "random"}}'
    )

    result = project.make("repro")

    assert result.returncode == 0, result.stderr
    assert project.calls() == [f"dvc repro python={bin_folder}/python"]
    lines = result.stdout.splitlines()
    assert any(
        line.split() == ["scratch", "0.9778", "0.9776", "0.0712", "58058", "none"] for line in lines
    )
    assert any(line.split()[:2] == ["fine_tune", "0.95"] for line in lines)
    assert "reports/index.html" in result.stdout
    assert "make ui" in result.stdout and "http://127.0.0.1:5000" in result.stdout


def test_test_passes_pytest_args_through(project: Project) -> None:
    bin_folder = project.installed_venv()
    project.write_fake(
        "python",
        f'#!/bin/sh\nfor arg in "$@"; do echo "[$arg]" >> "{project.log}"; done\n'
        f'echo "python=$(command -v python)" >> "{project.log}"\n',
        bin_folder,
    )

    result = project.make("test", 'PYTEST_ARGS=-m "not slow" -x')
    plain = project.make("test")

    assert result.returncode == plain.returncode == 0, result.stderr + plain.stderr
    assert project.calls() == [
        "[-m]", "[pytest]", "[-m]", "[not slow]", "[-x]", f"python={bin_folder}/python",
        "[-m]", "[pytest]", f"python={bin_folder}/python",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, "ui --backend-store-uri sqlite:///mlflow.db --host 127.0.0.1 --port 5000"),
        (("PORT=5001",), {"PORT": "8080"}, "--host 127.0.0.1 --port 5001"),
        ((), {"PORT": "8080"}, "--port 5000"),
        (
            (),
            {"MLFLOW_TRACKING_URI": "postgresql+psycopg://mlflow@db/mlflow"},
            "ui --backend-store-uri postgresql+psycopg://mlflow@db/mlflow --host 127.0.0.1",
        ),
    ],
)
def test_ui_starts_mlflow_on_the_projects_store(
    project: Project, args: tuple[str, ...], env: dict[str, str], expected: str
) -> None:
    bin_folder = project.installed_venv()
    project.write_fake("mlflow", f'#!/bin/sh\necho "$*" >> "{project.log}"\n', bin_folder)

    result = project.make("ui", *args, **env)

    assert result.returncode == 0, result.stderr
    assert len(project.calls()) == 1 and expected in project.calls()[0]


def test_ui_points_at_a_tracking_server_instead_of_starting_one(project: Project) -> None:
    bin_folder = project.installed_venv()
    project.write_fake("mlflow", f'#!/bin/sh\necho "$*" >> "{project.log}"\n', bin_folder)

    result = project.make("ui", MLFLOW_TRACKING_URI="https://mlflow.example.org")

    assert result.returncode == 0, result.stderr
    assert "https://mlflow.example.org" in result.stdout
    assert not project.calls()


def test_plots_draws_dvcs_plots_with_the_offline_template(project: Project) -> None:
    bin_folder = project.installed_venv()
    project.write_fake("dvc", f'#!/bin/sh\necho "$*" >> "{project.log}"\n', bin_folder)

    result = project.make("plots")

    assert result.returncode == 0, result.stderr
    assert project.calls() == ["plots show --html-template tools/dvc_plots/template.html"]


# --- tensorboard -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [((), "--logdir logs --host 127.0.0.1 --port 6006"), (("TB_PORT=6123",), "--port 6123")],
)
def test_tensorboard_serves_the_logs_folder_on_localhost(
    project: Project, args: tuple[str, ...], expected: str
) -> None:
    bin_folder = project.installed_venv()
    project.write_fake("tensorboard", f'#!/bin/sh\necho "$*" >> "{project.log}"\n', bin_folder)

    result = project.make("tensorboard", *args)

    assert result.returncode == 0, result.stderr
    assert len(project.calls()) == 1 and expected in project.calls()[0]


@pytest.mark.slow
def test_make_tensorboard_serves_a_trainings_scalars(project: Project) -> None:
    """The real TensorBoard, started by `make tensorboard`, lists a run under logs/ and serves
    its `loss` scalars on 127.0.0.1; stopping make stops it."""
    import json
    import signal
    import urllib.request

    import tensorflow as tf

    from tests.servers import free_port

    real = Path(sys.executable).parent / "tensorboard"
    if not real.exists():
        pytest.fail(f"tensorboard is not installed beside {sys.executable}: pip install -e .")
    bin_folder = project.installed_venv()
    (bin_folder / "tensorboard").symlink_to(real)
    with tf.summary.create_file_writer(
        str(project.root / "logs" / "scratch" / "run1")
    ).as_default():
        for epoch, loss in enumerate((0.9, 0.5, 0.3)):
            tf.summary.scalar("loss", loss, step=epoch)
    port = free_port()
    environment = {
        "PATH": f"{project.fakes}{os.pathsep}{project.system}",
        "HOME": str(project.root),
    }
    server = subprocess.Popen(
        [MAKE, "--no-print-directory", "tensorboard", f"TB_PORT={port}"],
        cwd=project.root,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        runs = None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                with urllib.request.urlopen(f"{base}/data/runs", timeout=5) as response:
                    runs = json.loads(response.read())
                if runs:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert runs == ["scratch/run1"], (runs, server.poll())
        query = f"{base}/data/plugin/scalars/scalars?run=scratch/run1&tag=loss"
        with urllib.request.urlopen(query, timeout=10) as response:
            points = json.loads(response.read())
        assert [point[1] for point in points] == [0, 1, 2]
        assert [round(point[2], 3) for point in points] == [0.9, 0.5, 0.3]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        output = server.communicate(timeout=30)[0]
    assert f"http://127.0.0.1:{port}" in output
