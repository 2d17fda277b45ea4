"""How time and memory grow with the dataset: every data stage on image folders of N and 4N.

Generates two image folders (PNG, `--image-size` pixels, four classes), and for each runs the
pipeline's own stage commands from dvc.yaml, as DVC would, one after another: download, split,
validate (the data gate), features, one training epoch of each strategy (fine-tuning: one head
epoch and one fine-tuning epoch) and the evaluation of each. Each stage runs in a child process
whose peak resident set size is read at its exit, children of its own included.

Prints, per stage, seconds per 1,000 images and peak RSS at both sizes; the RSS slope, that is
the peak's growth divided by the growth of the uint8 split bytes; and from the slope the
largest 224x224 RGB dataset the stage would handle in `--memory-gib` GiB. The stages run with
`data.workers: --workers` (default: the CPUs this process may use). Then the split's speed-up:
the split stage again on the larger folder, from scratch, with `data.workers: 1` and with
`--workers`, taking turns `--repeats` times, the best time of each (other work on the machine
only ever slows a run down); the two stores must be byte-identical. Never asserts.

    python bench/bench_scale.py [--images 1000] [--image-size 224] [--until STAGE] [--json F]
                                [--workers N] [--repeats 2]

Run it from another checkout (`git worktree add /tmp/old <commit>`, then
`python bench/bench_scale.py --code /tmp/old`) to measure that commit's code with this bench.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]

CLASSES = ("ants", "bees", "cats", "dogs")
NOT_DATA_STAGES = ("check_params", "compare", "report", "promote")
"""dvc.yaml's stages that read no images (the bench runs the others, in dvc.yaml's order)."""
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvc/config")

# Runs a stage's module as `python -m` would, then writes the process's peak RSS and its
# children's (KiB on Linux) where the bench reads them, even when the stage exits non-zero.
_WRAPPER = """
import atexit, json, os, resource, runpy, sys
def _peak():
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    with open(os.environ["BENCH_PEAK_FILE"], "w") as handle:
        json.dump({"self_kib": own, "children_kib": children}, handle)
atexit.register(_peak)
module = sys.argv[1]
sys.argv = [module, *sys.argv[2:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def write_folder(folder: Path, count: int, size: int, seed: int) -> None:
    """`count` distinct PNG images in four class folders: a class-coloured square on noise."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for index in range(count):
        label = index % len(CLASSES)
        pixels = rng.integers(0, 96, size=(size, size, 3), dtype=np.uint8)
        corner = rng.integers(0, size // 2, size=2)
        side = size // 3
        pixels[corner[0] : corner[0] + side, corner[1] : corner[1] + side, label % 3] = 255
        if label == 3:
            pixels[corner[0] : corner[0] + side, corner[1] : corner[1] + side, :] = 255
        Image.fromarray(pixels).save(folder / CLASSES[label] / f"img_{index:07d}.png")


def bench_params(
    code: Path, folder: Path, image_size: int, backbone_size: int, workers: int
) -> dict:
    params = yaml.safe_load((code / "params.yaml").read_text())
    params["data"].update(dataset="image_folder", image_folder=str(folder), image_size=image_size)
    if "workers" in params["data"]:  # a checkout from before data.workers decodes in one
        params["data"]["workers"] = workers
    params["backbone"].update(weights="random", image_size=backbone_size)
    params["train"]["scratch"].update(architecture="small_convnet", epochs=1)
    params["train"]["feature_extraction"]["epochs"] = 1
    params["train"]["fine_tune"].update(head_epochs=1, epochs=1)
    params["evaluate"].update(gradcam_images=2, gallery_images=8, mistakes=4)
    params["evaluate"]["patterns"].update(filters=1, size=32, steps=2)
    return params


def data_stages(project: Path, code: Path) -> dict[str, list[str]]:
    """Each stage of dvc.yaml that reads images, in order: its command as DVC resolves it,
    run through the RSS wrapper."""
    sys.path.insert(0, str(code))
    try:
        from pipeline.wiring import load_stages
    finally:
        sys.path.pop(0)
    return {
        item.name: [sys.executable, "-c", _WRAPPER, item.module, *item.arguments]
        for item in load_stages(project)
        if item.name not in NOT_DATA_STAGES
    }


def run_size(code: Path, count: int, args: argparse.Namespace, workdir: Path) -> dict:
    project = workdir / f"project-{count}"
    folder = workdir / f"images-{count}"
    write_folder(folder, count, args.image_size, seed=count)
    project.mkdir()
    for name in PROJECT_FILES:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(code / name, project / name)
    params = bench_params(code, folder, args.image_size, args.backbone_size, args.workers)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = stage_env(code, project)
    results: dict[str, dict] = {}
    stages = data_stages(project, code)
    if args.until:
        if args.until not in stages:
            raise SystemExit(f"--until {args.until}: not one of {', '.join(stages)}")
        names = list(stages)
        stages = {name: stages[name] for name in names[: names.index(args.until) + 1]}
    for stage, command in stages.items():
        peak_file = workdir / "peak.json"
        peak_file.unlink(missing_ok=True)
        start = time.perf_counter()
        completed = subprocess.run(
            command,
            cwd=project,
            env={**env, "BENCH_PEAK_FILE": str(peak_file)},
            capture_output=True,
            text=True,
        )
        seconds = time.perf_counter() - start
        if completed.returncode != 0:
            raise SystemExit(f"{stage} failed at {count} images:\n{completed.stderr[-3000:]}")
        peak = json.loads(peak_file.read_text())
        results[stage] = {
            "seconds": seconds,
            "peak_rss_bytes": peak["self_kib"] * 1024,
            "children_peak_rss_bytes": peak["children_kib"] * 1024,
        }
        print(
            f"  {count:>6} images  {stage:<28} {seconds:7.1f} s  "
            f"{peak['self_kib'] / 1024:7.0f} MiB",
            flush=True,
        )
    plan = json.loads((project / "data" / "prepared" / "split.json").read_text())
    images = int(plan["images"])
    split_bytes = images * args.image_size * args.image_size * 3
    return {
        "images": images,
        "split_bytes": split_bytes,
        "stages": results,
        "project": str(project),
    }


def stage_env(code: Path, project: Path) -> dict[str, str]:
    """The environment a stage runs in: this checkout's code, the project's own MLflow."""
    env = {
        key: value for key, value in os.environ.items() if not key.startswith(("MLFLOW_", "DVC_"))
    }
    env.update(
        PYTHONPATH=str(code),
        MLFLOW_TRACKING_URI=f"sqlite:///{project / 'mlflow.db'}",
        KERAS_HOME=str(project / ".keras"),
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    return env


def split_speedup(code: Path, project: Path, workers: int, repeats: int) -> dict:
    """The split stage from scratch with data.workers 1 and `workers`, taking turns `repeats`
    times: the best seconds of each, and whether every file of the stores is the same."""
    command = data_stages(project, code)["split"]
    env = stage_env(code, project)
    params_file = project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    seconds: dict[int, list[float]] = {1: [], workers: []}
    stores: dict[int, dict[str, str]] = {}
    for _ in range(repeats):
        for count in seconds:
            params["data"]["workers"] = count
            params_file.write_text(yaml.safe_dump(params, sort_keys=False))
            # From scratch: a previous store's shards would be kept, not written.
            shutil.rmtree(project / "data" / "prepared", ignore_errors=True)
            start = time.perf_counter()
            completed = subprocess.run(
                command,
                cwd=project,
                env={**env, "BENCH_PEAK_FILE": str(project / "peak.json")},
                capture_output=True,
                text=True,
            )
            seconds[count].append(time.perf_counter() - start)
            if completed.returncode != 0:
                raise SystemExit(
                    f"split with {count} worker(s) failed:\n{completed.stderr[-3000:]}"
                )
            stores[count] = _file_hashes(project / "data" / "prepared")
            print(f"  split, data.workers: {count:<3} {seconds[count][-1]:7.1f} s", flush=True)
    best = {count: min(times) for count, times in seconds.items()}
    return {
        "workers": workers,
        "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "seconds": {str(count): times for count, times in seconds.items()},
        "best_seconds": {str(count): value for count, value in best.items()},
        "speedup": best[1] / best[workers],
        "identical": stores[1] == stores[workers],
    }


def _file_hashes(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def report(small: dict, large: dict, memory_gib: float) -> list[dict]:
    rows = []
    limit = memory_gib * 2**30
    per_image_224 = 224 * 224 * 3
    grown = large["split_bytes"] - small["split_bytes"]
    for stage in small["stages"]:
        a, b = small["stages"][stage], large["stages"][stage]
        slope = (b["peak_rss_bytes"] - a["peak_rss_bytes"]) / grown
        fixed = a["peak_rss_bytes"] - slope * small["split_bytes"]
        # Below 0.01 the slope is measurement noise against the fixed cost: no bound from it.
        largest = (limit - fixed) / (slope * per_image_224) if slope > 0.01 else float("inf")
        rows.append(
            {
                "stage": stage,
                "s_per_1000_small": 1000 * a["seconds"] / small["images"],
                "s_per_1000_large": 1000 * b["seconds"] / large["images"],
                "rss_mib_small": a["peak_rss_bytes"] / 2**20,
                "rss_mib_large": b["peak_rss_bytes"] / 2**20,
                "rss_slope": slope,
                "largest_224_images": largest,
            }
        )
    return rows


def print_table(rows: list[dict], small: dict, large: dict, memory_gib: float) -> None:
    print(
        f"\nsplit bytes: {small['split_bytes'] / 2**20:.1f} MiB ({small['images']} images) and "
        f"{large['split_bytes'] / 2**20:.1f} MiB ({large['images']} images)"
    )
    largest = f"largest 224px in {memory_gib:g} GiB"
    header = (
        f"{'stage':<28} {'s/1k small':>10} {'s/1k large':>10} {'RSS small':>10} "
        f"{'RSS large':>10} {'slope':>7} {largest:>26}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        largest = row["largest_224_images"]
        shown = "no bound (slope < 0.01)" if largest == float("inf") else f"{largest:,.0f}"
        print(
            f"{row['stage']:<28} {row['s_per_1000_small']:10.2f} {row['s_per_1000_large']:10.2f} "
            f"{row['rss_mib_small']:9.0f}M {row['rss_mib_large']:9.0f}M {row['rss_slope']:7.3f} "
            f"{shown:>26}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000, help="N: the small folder's size")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--backbone-size", type=int, default=32)
    parser.add_argument("--memory-gib", type=float, default=24.0)
    parser.add_argument(
        "--code", type=Path, default=ROOT, help="the checkout whose pipeline/ is measured"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument(
        "--until", help="stop after this stage (e.g. features: download, split, validate, features)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=_cpus(),
        help="data.workers of every run, and the split's speed-up against 1 (default: the CPUs)",
    )
    parser.add_argument(
        "--repeats", type=int, default=2, help="runs of each split for the speed-up (best kept)"
    )
    args = parser.parse_args(argv)
    code = args.code.resolve()
    print(f"measuring {code} (git {_commit(code)}), data.workers: {args.workers}")
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as directory:
        workdir = Path(directory)
        small = run_size(code, args.images, args, workdir)
        large = run_size(code, 4 * args.images, args, workdir)
        speedup = None
        if args.workers > 1 and args.repeats > 0 and _has_workers(code):
            print(f"\nthe split of {large['images']} images, data.workers: 1 and {args.workers}")
            speedup = split_speedup(code, Path(large["project"]), args.workers, args.repeats)
    rows = report(small, large, args.memory_gib)
    print_table(rows, small, large, args.memory_gib)
    if speedup is not None:
        best = speedup["best_seconds"]
        print(
            f"\nsplit speed-up, {large['images']} images at {args.image_size} px on "
            f"{speedup['cpus']} CPU(s): data.workers 1 {best['1']:.1f} s, {args.workers} "
            f"{best[str(args.workers)]:.1f} s (best of {args.repeats}): "
            f"{speedup['speedup']:.2f}x; stores byte-identical: {speedup['identical']}"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "code": _commit(code),
                    "small": small,
                    "large": large,
                    "rows": rows,
                    "split_speedup": speedup,
                },
                indent=2,
            )
        )


def _has_workers(code: Path) -> bool:
    """Whether the measured checkout has data.workers (older ones decode in one process)."""
    return "workers" in yaml.safe_load((code / "params.yaml").read_text())["data"]


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _commit(code: Path) -> str:
    completed = subprocess.run(
        ["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return completed.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
