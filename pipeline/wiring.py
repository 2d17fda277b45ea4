"""The map between dvc.yaml and the code: each stage's entry module, the package modules it
imports, and the paths it is given.

A stage's code dependencies are the import closure of its entry module, read from the source
with `ast` (no module is imported, so no Keras): every `import pipeline...` and
`from pipeline... import ...`, at module level or inside a function, and the `__init__.py` of
every package on the way, since Python runs those too; plus the files a module names in its
`DATA_FILES` (a template it reads). `pipeline deps` prints them and checks
them against dvc.yaml; the tests do the same.
"""

from __future__ import annotations

import ast
import shlex
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError

PACKAGE = "pipeline"


@dataclass(frozen=True)
class StageWiring:
    """One stage of dvc.yaml as DVC resolves it (variables interpolated)."""

    name: str
    module: str
    arguments: tuple[str, ...]
    code_deps: frozenset[str]
    """Declared deps inside the package folder, as project-relative paths."""
    path_deps: frozenset[str]
    outs: frozenset[str]
    reads_params: bool
    persisted_outs: frozenset[str] = frozenset()
    """The outs marked `persist: true`: DVC leaves them in place while the stage runs, so a
    stage that fails (and writes them atomically) leaves them as they were."""

    @property
    def path_arguments(self) -> tuple[str, ...]:
        """The values given to `--options`: the paths the stage reads and writes."""
        values, option = [], False
        for argument in self.arguments:
            if argument.startswith("--"):
                option = True
            elif option:
                values.append(argument)
        return tuple(values)


def is_path_under(path: str, declared: set[str] | frozenset[str]) -> bool:
    """Whether the project-relative `path` is one of `declared` or inside one of them."""
    return any(path == item or path.startswith(f"{item}/") for item in declared)


def project_paths(root: Path) -> dict[str, str]:
    """The `paths` block of dvc.yaml's vars: where each stage's inputs and outputs live, for
    the verbs that run outside DVC (`pipeline retrain`, `pipeline sync-mlflow`)."""
    import yaml

    from pipeline.errors import PipelineError

    try:
        document = yaml.safe_load((root / "dvc.yaml").read_text())
        return next(item["paths"] for item in document["vars"] if "paths" in item)
    except FileNotFoundError:
        raise PipelineError(f"{root} has no dvc.yaml: run from the project root") from None
    except (KeyError, TypeError, StopIteration, yaml.YAMLError):
        raise PipelineError(f"{root / 'dvc.yaml'} has no `vars: - paths:` block") from None


def load_stages(root: Path) -> list[StageWiring]:
    """Every stage of `root`/dvc.yaml, in file order, through DVC's own parser."""
    from dvc.repo import Repo

    # Reading dvc.yaml needs no git: the map is the same in a bare copy of the project.
    with Repo(str(root), config={"core": {"no_scm": True}}) as repo:
        stages = list(repo.index.stages)
        result = []
        for stage in stages:
            words = shlex.split(stage.cmd)
            if "-m" not in words:
                raise ValueError(f"stage {stage.name}: cmd must run `python -m <module>`")
            position = words.index("-m")
            deps = [str(dep.def_path) for dep in stage.deps]
            result.append(
                StageWiring(
                    name=stage.name,
                    module=words[position + 1],
                    arguments=tuple(words[position + 2 :]),
                    code_deps=frozenset(d for d in deps if d.startswith(f"{PACKAGE}/")),
                    path_deps=frozenset(
                        d for d in deps if not d.startswith(f"{PACKAGE}/") and d != "params.yaml"
                    ),
                    outs=frozenset(str(out.def_path) for out in stage.outs),
                    reads_params=bool(stage.params),
                    persisted_outs=frozenset(
                        str(out.def_path) for out in stage.outs if out.persist
                    ),
                )
            )
    return result


def module_path(module: str, root: Path) -> Path | None:
    """`pipeline.a.b` -> pipeline/a/b.py or pipeline/a/b/__init__.py under `root`, if it exists."""
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path, module: str, root: Path) -> set[str]:
    """The package modules that `path` (the module `module`) imports, anywhere in its body."""
    found = imported_names(path, module, root)
    return {name for name in found if name == PACKAGE or name.startswith(f"{PACKAGE}.")}


def imported_names(path: Path, module: str, root: Path) -> set[str]:
    """Every module that `path` (the module `module`) imports, anywhere in its body, as an
    absolute dotted name: the package's own and third-party ones (`mlflow.pyfunc`) alike."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            origin = _absolute(node, module, is_package)
            found.add(origin)
            # `from pipeline.models import builders` imports the submodule builders.
            found.update(
                f"{origin}.{alias.name}"
                for alias in node.names
                if module_path(f"{origin}.{alias.name}", root) is not None
            )
    return found


def modules_under(folder: str, root: Path) -> dict[str, Path]:
    """Every Python module in `root`/`folder`, by dotted name (a package by its own name)."""
    modules = {}
    for path in sorted((root / folder).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    parts = module.split(".")
    anchor = parts if is_package else parts[:-1]
    anchor = anchor[: len(anchor) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def import_closure(module: str, root: Path) -> set[str]:
    """Project-relative paths of every package file that running `module` imports."""
    seen: set[str] = set()
    files: set[str] = set()
    pending = [module]
    while pending:
        current = pending.pop()
        # Importing a.b.c runs a/__init__.py and a/b/__init__.py first.
        parts = current.split(".")
        for end in range(1, len(parts) + 1):
            name = ".".join(parts[:end])
            if name in seen:
                continue
            seen.add(name)
            path = module_path(name, root)
            if path is None:
                continue
            files.add(path.relative_to(root).as_posix())
            files.update(
                (path.parent / data).relative_to(root).as_posix() for data in data_files(path)
            )
            pending.extend(imported_modules(path, name, root))
    return files


DATA_FILES = "DATA_FILES"
"""A module-level tuple of file names, beside the module, that it reads at run time (a
template): they are part of the code of every stage that imports the module."""


def data_files(path: Path) -> tuple[str, ...]:
    """The names in `path`'s module-level `DATA_FILES = ("...", ...)`, if it has one."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
        if any(isinstance(t, ast.Name) and t.id == DATA_FILES for t in targets):
            try:
                return tuple(str(name) for name in ast.literal_eval(node.value))
            except ValueError as exc:
                raise PipelineError(
                    f"{path}: {DATA_FILES} must be a literal tuple of file names ({exc})"
                ) from None
    return ()


@dataclass(frozen=True)
class DepsReport:
    stage: str
    missing: tuple[str, ...]
    """Imported by the stage but not listed: editing them leaves its outputs stale."""
    unused: tuple[str, ...]
    """Listed but never imported: editing them re-runs the stage for nothing."""


def check_code_deps(root: Path) -> list[DepsReport]:
    """For each stage, the code deps dvc.yaml lacks and those it lists in vain."""
    reports = []
    for stage in load_stages(root):
        closure = import_closure(stage.module, root)
        reports.append(
            DepsReport(
                stage=stage.name,
                missing=tuple(sorted(closure - stage.code_deps)),
                unused=tuple(sorted(stage.code_deps - closure)),
            )
        )
    return reports
