"""Every function in its layer: the import graph of pipeline/ and bench/ keeps the layers apart.

- Stages are entry points: no module outside `pipeline/stages/` imports one, `bench/` included.
- No two packages import each other (the `evaluation` <-> `tracking` loop of issue 20), and the
  pure layers never import `tracking` or `registry`, which sit above them.
- MLflow stays out of the pure layers: its calls live in `tracking/` and `registry.py`.

Read from the source with `ast` (pipeline.wiring), so nothing is imported and no TensorFlow
loads: this runs in the fast suite.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

from pipeline.wiring import imported_names, modules_under
from tests.project import PROJECT_ROOT

SCANNED = ("pipeline", "bench")
STAGES = "pipeline.stages"
PURE_LAYERS = (
    "pipeline.evaluation",
    "pipeline.models",
    "pipeline.explain",
    "pipeline.datasets",
    "pipeline.validation",
)
ABOVE_PURE_LAYERS = ("pipeline.tracking", "pipeline.registry")

STAGE_RULE = "only a stage may import a stage (stages are thin entry points; move the function)"
UPWARD_RULE = "a pure layer must not import tracking or registry, the layers above it"
MLFLOW_RULE = "a pure layer must not import mlflow (MLflow calls live in tracking/ and registry.py)"
LOOP_RULE = "packages {a} and {b} import each other ({back}): an import loop between layers"


@dataclass(frozen=True, order=True)
class Violation:
    importer: str
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.importer} imports {self.imported}: {self.rule}"


def _under(name: str, prefixes: str | Iterable[str]) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else tuple(prefixes)
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in prefixes)


def _package(module: str) -> str | None:
    """The layer a package module belongs to: `pipeline.<sub>` (a subpackage, or a top-level
    module); None for the package's own __init__ and for modules outside it."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "pipeline" and len(parts) > 1 else None


def layer_violations(root: Path) -> list[Violation]:
    """Every import under `root`/pipeline and `root`/bench that breaks a layer rule."""
    imports = {
        module: imported_names(path, module, root)
        for folder in SCANNED
        if (root / folder).is_dir()
        for module, path in modules_under(folder, root).items()
    }
    found = set()
    for importer, names in imports.items():
        for name in names:
            if _under(name, STAGES) and not _under(importer, STAGES):
                found.add(Violation(importer, name, STAGE_RULE))
            if _under(importer, PURE_LAYERS) and _under(name, ABOVE_PURE_LAYERS):
                found.add(Violation(importer, name, UPWARD_RULE))
            if _under(importer, PURE_LAYERS) and _under(name, "mlflow"):
                found.add(Violation(importer, name, MLFLOW_RULE))
    return sorted(found | _package_loops(imports))


def _package_loops(imports: dict[str, set[str]]) -> set[Violation]:
    """Each import from package A into package B where B also imports A, directly or through
    other packages: the edges of the package graph that lie on a cycle."""
    edges: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for importer, names in imports.items():
        for name in names:
            a, b = _package(importer), _package(name)
            if a and b and a != b:
                edges.setdefault((a, b), []).append((importer, name))
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
    found = set()
    for (a, b), witnesses in edges.items():
        path = _path(graph, b, a)
        if path is None:
            continue
        back = ", ".join(" imports ".join(min(edges[step])) for step in pairwise(path))
        rule = LOOP_RULE.format(a=a, b=b, back=back)
        found.update(Violation(importer, name, rule) for importer, name in witnesses)
    return found


def _path(graph: dict[str, set[str]], start: str, goal: str) -> list[str] | None:
    """The shortest chain of packages from `start` to `goal`, if the imports reach it."""
    chains, seen = [[start]], {start}
    while chains:
        chain = chains.pop(0)
        if chain[-1] == goal:
            return chain
        for following in sorted(graph.get(chain[-1], ())):
            if following not in seen:
                seen.add(following)
                chains.append([*chain, following])
    return None


def test_every_import_of_pipeline_and_bench_respects_the_layers() -> None:
    violations = layer_violations(PROJECT_ROOT)
    assert not violations, "imports that break a layer rule:\n" + "\n".join(map(str, violations))


def test_the_scan_sees_the_whole_package() -> None:
    """The checker is not blind: it reads pipeline/ and bench/, stages and pure layers alike."""
    modules = {module for folder in SCANNED for module in modules_under(folder, PROJECT_ROOT)}
    assert {"pipeline.stages.promote", "pipeline.evaluation.promotion", "pipeline.registry"} <= (
        modules
    )
    assert any(module.startswith("bench.") for module in modules)
    path = PROJECT_ROOT / "pipeline" / "registry.py"
    assert "mlflow" in imported_names(path, "pipeline.registry", PROJECT_ROOT)


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


BASE = {
    "pipeline/__init__.py": "",
    "pipeline/errors.py": "",
    "pipeline/stages/__init__.py": "",
    "pipeline/stages/train.py": "from pipeline.models import heads\nimport pipeline.registry\n",
    "pipeline/stages/promote.py": "from pipeline.stages import train\n",
    "pipeline/models/__init__.py": "",
    "pipeline/models/heads.py": "import numpy\nfrom ..errors import *\n",
    "pipeline/evaluation/__init__.py": "",
    "pipeline/evaluation/metrics.py": "from pipeline.models.heads import build\n",
    "pipeline/tracking/__init__.py": "",
    "pipeline/tracking/runs.py": "import mlflow\nfrom pipeline.evaluation import metrics\n",
    "pipeline/registry.py": "import mlflow\nfrom pipeline.tracking.runs import log\n",
    "bench/bench_fit.py": "from pipeline.models.heads import build\n",
}


def test_a_clean_tree_passes(tmp_path: Path) -> None:
    """Downward imports, stages importing the layers (and, for test_wiring to judge, each
    other), and MLflow in tracking and registry are all allowed."""
    _write(tmp_path, BASE)
    assert layer_violations(tmp_path) == []


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        pytest.param(
            # A lazy import, as predict.py once took choose_strategy from the promote stage.
            {"pipeline/predict.py": "def best():\n    from pipeline.stages.promote import x\n"},
            [("pipeline.predict", "pipeline.stages.promote", STAGE_RULE)],
            id="a module imports a stage",
        ),
        pytest.param(
            {"bench/bench_io.py": "from pipeline.stages import train\n"},
            [
                ("bench.bench_io", "pipeline.stages", STAGE_RULE),
                ("bench.bench_io", "pipeline.stages.train", STAGE_RULE),
            ],
            id="a benchmark imports a stage",
        ),
        pytest.param(
            {"pipeline/explain/__init__.py": "", "pipeline/explain/log.py": "import mlflow.keras"},
            [("pipeline.explain.log", "mlflow.keras", MLFLOW_RULE)],
            id="a pure layer imports mlflow",
        ),
        pytest.param(
            {
                "pipeline/datasets/__init__.py": "",
                "pipeline/datasets/s.py": "import pipeline.registry",
            },
            [("pipeline.datasets.s", "pipeline.registry", UPWARD_RULE)],
            id="a pure layer imports the registry",
        ),
    ],
)
def test_each_rule_catches_its_violation(tmp_path: Path, files: dict, expected: list) -> None:
    _write(tmp_path, {**BASE, **files})
    found = [(v.importer, v.imported, v.rule) for v in layer_violations(tmp_path)]
    assert found == expected


def test_the_evaluation_tracking_loop_is_caught_and_named(tmp_path: Path) -> None:
    """evaluation importing tracking, which imports evaluation back: both edges of the loop
    are reported, each naming the importer, the imported module and the way back."""
    loop = {"pipeline/evaluation/report.py": "def log():\n    from pipeline.tracking import runs\n"}
    _write(tmp_path, {**BASE, **loop})
    violations = layer_violations(tmp_path)
    found = {(v.importer, v.imported) for v in violations}
    assert found == {
        ("pipeline.evaluation.report", "pipeline.tracking"),
        ("pipeline.evaluation.report", "pipeline.tracking.runs"),
        ("pipeline.tracking.runs", "pipeline.evaluation"),
        ("pipeline.tracking.runs", "pipeline.evaluation.metrics"),
    }
    messages = "\n".join(map(str, violations))
    assert (
        "pipeline.evaluation.report imports pipeline.tracking.runs: packages pipeline.evaluation "
        "and pipeline.tracking import each other (pipeline.tracking.runs imports "
        "pipeline.evaluation" in messages
    )
    assert f"pipeline.evaluation.report imports pipeline.tracking.runs: {UPWARD_RULE}" in messages


def test_a_loop_through_a_third_package_is_caught(tmp_path: Path) -> None:
    cycle = {"pipeline/models/heads.py": "from pipeline.tracking import runs\n"}
    _write(tmp_path, {**BASE, **cycle})
    loops = [v for v in layer_violations(tmp_path) if "import loop" in v.rule]
    assert {(v.importer, v.imported) for v in loops} >= {
        ("pipeline.models.heads", "pipeline.tracking.runs"),
        ("pipeline.tracking.runs", "pipeline.evaluation.metrics"),
        ("pipeline.evaluation.metrics", "pipeline.models.heads"),
    }
