"""Run every stage of a project's dvc.yaml in this one process, in the file's order (which is
the order the stages depend on each other), with the arguments dvc.yaml gives each, and record
the files each stage opens, renames and creates.

    python tests/trace_stages.py PROJECT_DIR TRACE.json

Python's audit hooks see every `open` made from Python (builtins.open, io.open, os.open),
`os.rename`/`os.replace` and `sqlite3.connect`, wherever they happen: in the pipeline or in Keras,
MLflow, Great Expectations. Files opened by C code (h5py's HDF5 reads) are not seen.

The trace lists, per stage, the project-relative paths read and written, so a test
can compare them with what the stage declares. Running in-process (no DVC, no subprocess per
stage) keeps this cheap enough for the fast suite.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def main(project: Path, trace_file: Path) -> int:
    project = project.resolve()
    os.chdir(project)
    sys.path.insert(0, str(project))
    from pipeline.wiring import load_stages

    stages = load_stages(project)
    current: dict = {"stage": None}
    trace: dict[str, dict] = {}

    def relative(path) -> str | None:
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str | os.PathLike):
            return None
        absolute = Path(os.path.abspath(path))
        try:
            return absolute.relative_to(project).as_posix()
        except ValueError:
            return None

    def hook(event: str, args: tuple) -> None:
        stage = current["stage"]
        if stage is None:
            return
        record = trace[stage]
        if event == "open":
            path, mode, flags = args
            name = relative(path)
            if name is None:
                return
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & WRITE_FLAGS
            )
            record["writes" if writes else "reads"].add(name)
        elif event == "os.rename":
            name = relative(args[1])
            if name is not None:
                record["writes"].add(name)
        elif event == "sqlite3.connect":
            name = relative(args[0])
            if name is not None:
                record["writes"].add(name)

    sys.addaudithook(hook)
    for stage in stages:
        trace[stage.name] = {"reads": set(), "writes": set()}
        current["stage"] = stage.name
        start = time.perf_counter()
        try:
            module = importlib.import_module(stage.module)
            module.main(list(stage.arguments))
        finally:
            current["stage"] = None
        # What a stage wrote and then removed or renamed away (temporary files, staging
        # folders) is not an output; what is left must be declared.
        record = trace[stage.name]
        # Reading back what the stage itself wrote (a temporary file it hashes) is not an
        # input, and neither is a name that is no file (Keras probes a relative "assets"
        # while saving; MLflow opens the folder "data" of a model it logs).
        record["reads"] = {
            path for path in record["reads"] - record["writes"] if (project / path).is_file()
        }
        record["writes"] = {path for path in record["writes"] if (project / path).exists()}
        record["seconds"] = round(time.perf_counter() - start, 2)
    trace_file.write_text(
        json.dumps(
            {
                name: {
                    "reads": sorted(record["reads"]),
                    "writes": sorted(record["writes"]),
                    "seconds": record["seconds"],
                }
                for name, record in trace.items()
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
