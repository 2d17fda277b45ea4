"""Peak memory of the split stage on CIFAR-10-shaped data.

Writes a CIFAR-10 binary raw folder with the real layout and size (5 x 10,000 training records
and 10,000 test records of 3,073 bytes), then runs `python -m pipeline.stages.split` on it as
DVC does, and reads the child's peak resident set size. Prints it, the uint8 size of the three
splits, and their ratio to the 2x bound (ratio <= 1.0 meets it). Never asserts.

    python bench/bench_split.py
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.store import open_splits  # noqa: E402
from tests.project import copy_project_files, stage_command  # noqa: E402

RECORD = 3073
BOUND = 2.0


def write_cifar_raw(folder: Path, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        records = rng.integers(0, 256, size=(10_000, RECORD), dtype=np.uint8)
        records[:, 0] = np.arange(10_000) % 10
        (folder / f"{name}.bin").write_bytes(records.tobytes())


def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        project = Path(directory)
        write_cifar_raw(project / "data" / "raw" / "cifar10" / "cifar-10-batches-bin")
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["data"]["dataset"] = "cifar10"
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        copy_project_files(project)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        # The stage's own command from dvc.yaml, with the paths DVC would give it.
        command = stage_command(project, "split")
        start = time.perf_counter()
        subprocess.run(command, cwd=project, env=env, check=True)
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        arrays = sum(split.nbytes for split in open_splits(project / "data" / "prepared").values())
    print(f"split stage on 60,000 CIFAR-10-shaped images: {elapsed:.1f} s")
    print(f"peak RSS {peak / 2**20:.0f} MiB; uint8 split arrays {arrays / 2**20:.0f} MiB")
    print(
        f"peak / arrays = {peak / arrays:.2f}; ratio to the {BOUND:g}x bound = "
        f"{peak / (BOUND * arrays):.2f}"
    )


if __name__ == "__main__":
    main()
