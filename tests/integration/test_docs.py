"""The documentation site (mkdocs.yml, docs/): it builds with `mkdocs build --strict`, a broken
link or anchor between pages fails that build, and every command the pages show is one that the
program it names accepts.

"Accepts" is checked without running anything, as far as each program lets that be done cheaply
and truthfully: a `pipeline` line is parsed by `pipeline.cli.build_parser()` and a `dvc` line by
DVC's own argument parser, exactly as written; an `mlflow` line is resolved and parsed by
MLflow's click commands; `make` must name a target of the Makefile, and a variable given to it a
variable of the Makefile (one set in the environment, `VAR=x make ...`, one that the environment
can set: `?=`); `python bench/x.py` and `python tools/x.py` must name a file that exists and
takes each `--option` given; `git` a git command; `systemctl` a unit under deploy/systemd/. A
program with no checker here fails the test, so a new kind of command is never waved through.

Fenced ```bash blocks are checked line by line, in full. Commands in inline code spans (the
prose's `dvc repro split`) are often names rather than whole commands (`pipeline serve`), so for
them the program, its subcommands and the options given must exist.

The site needs MkDocs and the Material theme (the dev extra); without them the build tests are
skipped, unless PIPELINE_TESTS_REQUIRE_DOCS=1 (CI) turns that skip into a failure.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import warnings
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.project import PROJECT_ROOT

pytestmark = pytest.mark.integration

DOCS = PROJECT_ROOT / "docs"
MAKEFILE = PROJECT_ROOT / "Makefile"
# Material prints a banner about MkDocs 2.0 on every build; it is no warning about these pages.
BUILD_ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
SHELL_BUILTINS = {"export", "printf", "cd"}
# Programs whose lines are run as written elsewhere (tests/integration/test_serving.py posts the
# `curl` command with its `base64` input): only their names are checked here.
RUN_ELSEWHERE = {"curl", "base64"}


@dataclass(frozen=True)
class Command:
    """One simple command from the docs: its words (env assignments first), where it stands."""

    words: tuple[str, ...]
    page: str
    line: int
    inline: bool

    def __str__(self) -> str:
        kind = "inline code" if self.inline else "bash block"
        return f"docs/{self.page}:{self.line} ({kind}): {shlex.join(self.words)}"


# --- finding the commands -------------------------------------------------------------------


def _pages() -> list[Path]:
    pages = sorted(DOCS.glob("*.md"))
    assert pages, f"no pages in {DOCS}"
    return pages


def _bash_blocks(text: str) -> Iterator[tuple[int, str]]:
    """(line number of the block's first line, its text) for each ```bash block."""
    for match in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.DOTALL | re.MULTILINE):
        yield text.count("\n", 0, match.start(1)) + 1, match.group(1)


def _logical_lines(block: str, first: int) -> Iterator[tuple[int, str]]:
    """Lines with their backslash continuations joined, numbered by their first line."""
    pending, start = "", first
    for number, line in enumerate(block.splitlines(), start=first):
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def _simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line: split at &&, ||, ;, | and grouping braces,
    comments dropped, quotes removed as the shell removes them."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands, words = [], []
    for token in lexer:
        if token in {"&&", "||", ";", "|", "&"}:
            commands.append(words)
            words = []
        elif token not in {"{", "}"}:
            words.append(token)
    commands.append(words)
    return [words for words in commands if words]


def _block_commands() -> list[Command]:
    found = []
    for page in _pages():
        for first, block in _bash_blocks(page.read_text()):
            for number, line in _logical_lines(block, first):
                for words in _simple_commands(line):
                    found.append(Command(tuple(words), page.name, number, inline=False))
    return found


INLINE_PROGRAMS = re.compile(
    r"^(\w+=\S+ )*(\.venv/bin/)?(make|dvc|pipeline|mlflow|git|systemctl|python3?)( |$)"
)


def _inline_commands() -> list[Command]:
    """Code spans in the prose that start with a program this test knows, outside any fence;
    a span of the program's name alone is a name, not a command."""
    found = []
    for page in _pages():
        text = re.sub(r"^```.*?^```", _blank_fence, page.read_text(), flags=re.S | re.M)
        for match in re.finditer(r"`([^`]+)`", text):
            span = " ".join(match.group(1).split())
            if not INLINE_PROGRAMS.match(span) or " " not in span:
                continue
            number = text.count("\n", 0, match.start()) + 1
            for words in _simple_commands(span):
                found.append(Command(tuple(words), page.name, number, inline=True))
    return found


def _blank_fence(match: re.Match) -> str:
    """A fenced block replaced by as many empty lines, so line numbers still count."""
    return "\n" * match.group(0).count("\n")


# --- checking one command -------------------------------------------------------------------


class Rejected(Exception):
    """The command is not one its program accepts; the message says why."""


def _split_env(words: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(the leading VAR=value assignments, the command)."""
    index = 0
    while index < len(words) and re.fullmatch(r"[A-Za-z_]\w*=.*", words[index]):
        index += 1
    return list(words[:index]), list(words[index:])


def _placeholder(word: str) -> bool:
    """A word the docs leave for the reader to fill in: <name>, ... ."""
    return "<" in word or word == "..."


class _Messages(logging.Handler):
    """Collects what a logger says: DVC's parser logs its error rather than printing it."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def _parse_argparse(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """Parse as the program would, turning argparse's exit (and DVC's error) into Rejected
    with the parser's own message."""
    printed, logged = io.StringIO(), _Messages()
    dvc_logger = logging.getLogger("dvc")
    dvc_logger.addHandler(logged)
    try:
        with redirect_stderr(printed), redirect_stdout(io.StringIO()):
            parser.parse_args(argv)
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            raise Rejected(printed.getvalue().strip().splitlines()[-1]) from None
    except Exception as error:  # DVC's parser logs its message, then raises DvcParserError
        said = [*printed.getvalue().strip().splitlines(), *logged.lines] or [repr(error)]
        raise Rejected(said[-1]) from None
    finally:
        dvc_logger.removeHandler(logged)


def _walk_argparse(parser: argparse.ArgumentParser, argv: list[str]) -> None:
    """For an inline span: each subcommand named must exist, and each option given must be one
    that the (sub)command takes. argparse has no public way to list them, so this reads its
    actions."""
    for word in argv:
        if _placeholder(word):
            continue
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            if option not in parser._option_string_actions:
                raise Rejected(f"{parser.prog} takes no option {option}")
            continue
        subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if subparsers and word in subparsers[0].choices:
            parser = subparsers[0].choices[word]
        elif subparsers and parser._actions and not _has_positional_values(parser):
            raise Rejected(f"{parser.prog} has no subcommand {word!r}")


def _has_positional_values(parser: argparse.ArgumentParser) -> bool:
    """Whether the parser takes positional values besides its subcommand."""
    return any(
        not action.option_strings and not isinstance(action, argparse._SubParsersAction)
        for action in parser._actions
    )


def _pipeline_parser() -> argparse.ArgumentParser:
    from pipeline.cli import build_parser

    return build_parser()


def _dvc_parser() -> argparse.ArgumentParser:
    from dvc.cli.parser import get_main_parser

    return get_main_parser()


def check_pipeline(argv: list[str], inline: bool) -> None:
    if inline:
        _walk_argparse(_pipeline_parser(), argv)
    else:
        _parse_argparse(_pipeline_parser(), argv)


def check_dvc(argv: list[str], inline: bool) -> None:
    if inline:
        _walk_argparse(_dvc_parser(), argv)
    else:
        _parse_argparse(_dvc_parser(), argv)


def check_mlflow(argv: list[str], inline: bool) -> None:
    """Resolve the click command group by group; a bash line is then parsed as click would
    (options, their types, required arguments), an inline span only has its options checked."""
    import click
    from mlflow.cli import cli

    command: click.Command = cli
    rest = list(argv)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        found = command.get_command(click.Context(command), name)
        if found is None:
            raise Rejected(f"mlflow has no command {name!r}")
        command = found
    if inline:
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for word in rest:
            if word.startswith("-") and word.split("=", 1)[0] not in options:
                raise Rejected(f"mlflow {command.name} takes no option {word}")
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            command.make_context(f"mlflow {command.name}", rest)
    except click.exceptions.Exit:
        pass
    except click.ClickException as error:
        raise Rejected(error.format_message()) from None


def makefile_targets(makefile: Path = MAKEFILE) -> set[str]:
    """The targets a rule line of the Makefile names (not .PHONY and the like, not a file rule
    written with a variable)."""
    targets = set()
    for line in makefile.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][\w.-]*(?: +[A-Za-z0-9][\w.-]*)*)\s*:(?!=)", line)
        if match:
            targets.update(match.group(1).split())
    return targets


def makefile_variables(makefile: Path = MAKEFILE) -> tuple[set[str], set[str]]:
    """(every variable the Makefile sets, those the environment can set: `?=`, or an
    `ifeq ($(origin VAR),undefined)`)."""
    text = makefile.read_text()
    assigned = set(re.findall(r"^([A-Za-z_]\w*)\s*(?:\?|:|\+)?=", text, flags=re.M))
    from_environment = set(re.findall(r"^([A-Za-z_]\w*)\s*\?=", text, flags=re.M))
    from_environment |= set(re.findall(r"\$\(origin ([A-Za-z_]\w*)\)", text))
    return assigned, from_environment


def check_make(argv: list[str], environment: list[str], makefile: Path = MAKEFILE) -> None:
    targets = makefile_targets(makefile)
    assigned, from_environment = makefile_variables(makefile)
    for assignment in environment:
        name = assignment.split("=", 1)[0]
        if name not in from_environment:
            raise Rejected(
                f"{name} is set in the environment, but the Makefile sets it with = or :=, "
                f"which the environment does not override: write `make ... {assignment}`"
            )
    for word in argv:
        if word.startswith("-"):
            raise Rejected(f"an option to make ({word}): the docs give targets and variables")
        if "=" in word:
            name = word.split("=", 1)[0]
            if name not in assigned:
                raise Rejected(f"the Makefile has no variable {name}")
        elif word not in targets:
            raise Rejected(f"the Makefile has no target {word!r} (it has {sorted(targets)})")


def check_python(argv: list[str]) -> None:
    """A script of the project (each --option given must be in its source), or a module that
    this environment has (python -m venv, python -m pytest, python -m pipeline ...)."""
    if argv[:2] == ["-m", "pipeline"]:
        _parse_argparse(_pipeline_parser(), argv[2:])
        return
    if argv and argv[0] == "-m":
        if len(argv) < 2 or importlib.util.find_spec(argv[1]) is None:
            raise Rejected(f"no module {argv[1:2]}")
        return
    if not argv or not re.fullmatch(r"(bench|tools)/[\w/]+\.py", argv[0]):
        raise Rejected("python runs a script under bench/ or tools/, or a module (-m)")
    script = PROJECT_ROOT / argv[0]
    if not script.is_file():
        raise Rejected(f"{argv[0]} does not exist")
    source = script.read_text()
    for word in argv[1:]:
        option = word.split("=", 1)[0]
        if option.startswith("--") and f'"{option}"' not in source:
            raise Rejected(f"{argv[0]} takes no option {option}")


def check_git(argv: list[str]) -> None:
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed")
    known = subprocess.run(
        [git, "--list-cmds=main,nohelpers"], capture_output=True, text=True, check=True
    ).stdout.split()
    if not argv or argv[0] not in known:
        raise Rejected(f"git has no command {argv[:1]}")


def check_systemctl(argv: list[str]) -> None:
    units = [word for word in argv[1:] if not word.startswith("-")]
    for unit in units:
        if not (PROJECT_ROOT / "deploy" / "systemd" / unit).is_file():
            raise Rejected(f"deploy/systemd/{unit} does not exist")


def check_pip(argv: list[str]) -> None:
    """pip install of the project with extras that pyproject.toml declares, and constraints
    files that exist."""
    if argv[:1] != ["install"]:
        raise Rejected("the docs run pip only to install")
    extras = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    words = iter(argv[1:])
    for word in words:
        if word == "-c":
            constraints = next(words, "")
            if not (PROJECT_ROOT / constraints).is_file():
                raise Rejected(f"no constraints file {constraints!r}")
        elif match := re.fullmatch(r"\.\[([\w,-]+)\]", word):
            unknown = set(match.group(1).split(",")) - set(extras)
            if unknown:
                raise Rejected(f"pyproject.toml has no extra {sorted(unknown)}")


def check_spark_submit(argv: list[str]) -> None:
    """spark-submit's options, then tools/spark_submit.py, which takes `pipeline`'s arguments."""
    words = list(argv)
    while words and words[0].startswith("--"):
        words = words[2:]
    if not words or words[0] != "tools/spark_submit.py":
        raise Rejected("spark-submit runs tools/spark_submit.py here")
    if not (PROJECT_ROOT / words[0]).is_file():
        raise Rejected(f"{words[0]} does not exist")
    _parse_argparse(_pipeline_parser(), words[1:])


def check_source(argv: list[str]) -> None:
    if argv != [".venv/bin/activate"]:
        raise Rejected("the docs source only .venv/bin/activate")


def check(command: Command) -> None:
    """Raise Rejected where the command's program would not accept it as written."""
    environment, words = _split_env(command.words)
    program, argv = Path(words[0]).name if words[0].startswith(".venv/") else words[0], words[1:]
    checkers: dict[str, Callable[[], None]] = {
        "pipeline": lambda: check_pipeline(argv, command.inline),
        "dvc": lambda: check_dvc(argv, command.inline),
        "mlflow": lambda: check_mlflow(argv, command.inline),
        "make": lambda: check_make(argv, environment),
        "python": lambda: check_python(argv),
        "python3": lambda: check_python(argv),
        "git": lambda: check_git(argv),
        "systemctl": lambda: check_systemctl(argv),
        "source": lambda: check_source(argv),
        "pip": lambda: check_pip(argv),
        "spark-submit": lambda: check_spark_submit(argv),
    }
    if program in checkers:
        checkers[program]()
    elif program not in SHELL_BUILTINS | RUN_ELSEWHERE:
        raise Rejected(f"no check for the program {program!r}: add one to {Path(__file__).name}")


def _failures(commands: list[Command]) -> list[str]:
    failures = []
    for command in commands:
        try:
            check(command)
        except Rejected as why:
            failures.append(f"{command}\n    {why}")
    return failures


# --- the tests ----------------------------------------------------------------------------


def test_every_command_in_the_docs_bash_blocks_is_accepted_as_written() -> None:
    commands = _block_commands()
    programs = {Path(_split_env(c.words)[1][0]).name for c in commands}
    # The docs' own commands, at least these: a sign that the extraction found them.
    assert {"make", "dvc", "pipeline", "mlflow", "git"} <= programs, programs
    failures = _failures(commands)
    assert not failures, "commands in the docs that their program rejects:\n" + "\n".join(failures)


def test_every_command_in_the_docs_prose_names_real_commands_and_options() -> None:
    commands = _inline_commands()
    assert len(commands) > 50, len(commands)
    failures = _failures(commands)
    assert not failures, "inline commands in the docs that do not exist:\n" + "\n".join(failures)


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("pipeline predict --modle scratch photo.jpg", "--modle"),
        ("pipeline tunes", "tunes"),
        ("dvc exp shw", "shw"),
        ("dvc exp show --only-changd", "--only-changd"),
        ("mlflow models serv -m x", "serv"),
        ("mlflow ui --prot 5000", "--prot"),
        ("make tensorbord", "tensorbord"),
        ("TB_PORT=6007 make tensorboard", "environment does not override"),
        ("make tensorboard TB_PROT=6007", "TB_PROT"),
        ("python bench/no_such_bench.py", "does not exist"),
        ("python bench/bench_sweep.py --no-such-option", "--no-such-option"),
        ("pip install -e '.[sprak]'", "sprak"),
        ("spark-submit tools/spark_submit.py predict --engine sprak x", "sprak"),
        ("kubectl apply -f x.yaml", "no check for the program"),
    ],
)
def test_a_wrong_command_is_rejected_naming_the_fault(line: str, why: str) -> None:
    """The checks would catch a stale line: each of these is one word away from a real one."""
    (words,) = _simple_commands(line)
    with pytest.raises(Rejected, match=re.escape(why)):
        check(Command(tuple(words), "test.md", 1, inline=False))


def test_shell_lines_split_into_their_commands() -> None:
    """What the extraction hands the checks: quotes, comments, chains and braces as bash sees
    them."""
    line = """git add dvc.lock '*.gitignore' && git commit -m "Baseline run"  # a comment"""
    assert _simple_commands(line) == [
        ["git", "add", "dvc.lock", "*.gitignore"],
        ["git", "commit", "-m", "Baseline run"],
    ]
    block = "dvc exp show --only-changed \\\n    --drop '^(?!Experiment$|x)'\nmake ui\n"
    assert list(_logical_lines(block, 10)) == [
        (10, "dvc exp show --only-changed      --drop '^(?!Experiment$|x)'"),
        (12, "make ui"),
    ]
    assert _simple_commands(list(_logical_lines(block, 10))[0][1]) == [
        ["dvc", "exp", "show", "--only-changed", "--drop", "^(?!Experiment$|x)"]
    ]
    assert _simple_commands("{ printf 'a'; base64 -w0 photo.jpg") == [
        ["printf", "a"],
        ["base64", "-w0", "photo.jpg"],
    ]


# --- the site -----------------------------------------------------------------------------


def _require_mkdocs() -> None:
    missing = [m for m in ("mkdocs", "material") if importlib.util.find_spec(m) is None]
    if not missing:
        return
    message = f"{' and '.join(missing)} not installed (the dev extra: pip install -e '.[dev]')"
    if os.environ.get("PIPELINE_TESTS_REQUIRE_DOCS") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _build(project: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=project,
        env=BUILD_ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _copy_docs(destination: Path) -> Path:
    destination.mkdir()
    shutil.copy2(PROJECT_ROOT / "mkdocs.yml", destination / "mkdocs.yml")
    shutil.copytree(DOCS, destination / "docs")
    return destination


def test_the_site_builds_strict_with_no_warning(tmp_path: Path) -> None:
    _require_mkdocs()
    built = _build(PROJECT_ROOT, tmp_path / "site")
    log = built.stdout + built.stderr
    assert built.returncode == 0, log
    assert "WARNING" not in log, log
    # Every page is in the site, and each links the way the nav says.
    pages = {page.stem for page in _pages()}
    built_pages = {path.parent.name for path in (tmp_path / "site").glob("*/index.html")}
    assert pages - {"index"} == built_pages, (pages, built_pages)
    home = (tmp_path / "site" / "index.html").read_text()
    assert 'href="datasets/"' in home


@pytest.mark.parametrize(
    ("page", "old", "new", "message"),
    [
        (
            "data-gate.md",
            "(datasets.md#splits-that-stay-put)",
            "(datasets.md#splits-that-move)",
            "does not contain an anchor '#splits-that-move'",
        ),
        (
            "data-gate.md",
            "(datasets.md#splits-that-stay-put)",
            "(dataset.md)",
            "contains a link 'dataset.md', but the target is not found",
        ),
        ("index.md", "(datasets.md)", "(#no-such-heading)", "there is no such anchor"),
        ("index.md", "(datasets.md)", "(../params.yaml)", "'../params.yaml'"),
    ],
)
def test_a_broken_link_fails_the_build(
    tmp_path: Path, page: str, old: str, new: str, message: str
) -> None:
    _require_mkdocs()
    project = _copy_docs(tmp_path / "project")
    path = project / "docs" / page
    text = path.read_text()
    assert old in text, f"docs/{page} no longer has {old}: pick another link to break"
    path.write_text(text.replace(old, new, 1))
    built = _build(project, tmp_path / "site")
    log = built.stdout + built.stderr
    assert built.returncode != 0, log
    assert message in log and page in log, log
