"""Hostile input against a served model and against the split stage (issue 33).

Registers a small digits classifier with the project's code into a temporary SQLite store,
starts `pipeline serve --workers 2` on it, and sends each hostile payload: PNG bombs that
declare 13000x13000 pixels (16-bit gray, about 0.3 MB; RGB, about 0.5 MB; twelve RGB in one
request), a 176 MB JSON body, two 99 MB bodies at once, JSON nested 100,000 deep, a 20 MB
invalid body, ragged pixel rows and junk inside base64, then a good request. Prints, for
each: the HTTP status, seconds, the answer's size, and the largest RSS growth of a serving
worker while it ran (sampled every 20 ms; psutil, the server and its children), and whether a
worker was replaced. Then runs the split stage (download, split: the commands dvc.yaml gives)
on an image folder of small PNGs with and without two bombs, printing each run's peak RSS.

    .venv/bin/python bench/bench_hostile.py
    .venv/bin/python bench/bench_hostile.py --skip-split --workers 1

The image bombs are sent only where the decoder has a pixel budget
(pipeline.datasets.images.DEFAULT_MAX_PIXELS): without one, each costs gigabytes.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.client
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psutil
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_serving import PipelineServer  # noqa: E402

from tests.servers import HOST  # noqa: E402

SIDE = 13_000
CLASSES = [str(digit) for digit in range(10)]
TIMEOUT = 180.0
JSON_HEADERS = {"Content-Type": "application/json"}


# --- payloads ---------------------------------------------------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int, bit_depth: int, color_type: int) -> bytes:
    """A valid PNG of side x side black pixels, compressed row by row: never whole in memory.
    color_type 0 is gray, 2 is RGB."""
    channels = {0: 1, 2: 3}[color_type]
    row = b"\0" * (1 + side * channels * bit_depth // 8)
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(row) for _ in range(side)]
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, bit_depth, color_type, 0, 0, 0)
    return b"".join(
        (
            b"\x89PNG\r\n\x1a\n",
            _png_chunk(b"IHDR", header),
            _png_chunk(b"IDAT", b"".join(parts)),
            _png_chunk(b"IEND", b""),
        )
    )


def small_png(seed: int, side: int = 8, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (side, side) if mode == "L" else (side, side, 3)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=shape, dtype=np.uint8), mode).save(buffer, "PNG")
    return buffer.getvalue()


def images_body(files: list[bytes]) -> bytes:
    rows = [[base64.b64encode(file).decode("ascii")] for file in files]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


def pixels_body(megabytes: int) -> bytes:
    """A `pixels` batch of 8x8x1 images, as JSON, of about `megabytes` MB."""
    row = json.dumps([[[[0]] * 8] * 8]).encode()
    count = (megabytes << 20) // (len(row) + 1)
    prefix = b'{"dataframe_split": {"columns": ["pixels"], "data": ['
    return prefix + b",".join([row] * count) + b"]}}"


def ragged_body() -> bytes:
    image = [[[0]] * 8 for _ in range(8)]
    image[3] = image[3][:5]
    return json.dumps({"dataframe_split": {"columns": ["pixels"], "data": [[image]]}}).encode()


def junk_base64_body() -> bytes:
    encoded = base64.b64encode(small_png(1)).decode("ascii")
    rows = [[encoded], [encoded[:8] + "!*" + encoded[8:]]]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


# --- measuring --------------------------------------------------------------------------------


@dataclass
class Outcome:
    status: str
    seconds: float
    answer_bytes: int
    message: str


def post(port: int, body: bytes) -> Outcome:
    """POST /invocations; a connection the server broke is an outcome too."""
    started = time.perf_counter()
    connection = http.client.HTTPConnection(HOST, port, timeout=TIMEOUT)
    try:
        connection.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
        status = str(response.status)
    except (OSError, http.client.HTTPException) as error:
        return Outcome(type(error).__name__, time.perf_counter() - started, 0, str(error)[:80])
    finally:
        connection.close()
    message = ""
    if response.status != 200:
        try:
            message = str(json.loads(answer).get("message", ""))
        except (ValueError, AttributeError):
            message = answer[:80].decode(errors="replace")
    return Outcome(status, time.perf_counter() - started, len(answer), message[:90])


class RssWatch:
    """Samples the RSS of a server's worker processes every 20 ms while in use; `growth` is
    the largest rise of one worker over its RSS when the watch began."""

    def __init__(self, server_pid: int) -> None:
        self.server = psutil.Process(server_pid)
        self.baseline = self._sample()
        self.peak = dict(self.baseline)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def workers(self) -> list[psutil.Process]:
        return [self.server, *self.server.children(recursive=True)]

    def _sample(self) -> dict[int, int]:
        sizes = {}
        for process in self.workers():
            try:
                sizes[process.pid] = process.memory_info().rss
            except psutil.Error:
                continue
        return sizes

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid, rss in self._sample().items():
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
            self._stop.wait(0.02)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def growth_mb(self) -> float:
        rises = [self.peak[pid] - rss for pid, rss in self.baseline.items() if pid in self.peak]
        return max(rises, default=0) / 2**20

    def replaced(self) -> bool:
        return set(self.baseline) != set(self._sample())


def wait_for_workers(server: PipelineServer, workers: int, timeout: float = 300.0) -> None:
    """Until `workers` different worker processes answer /status (each has its model)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < workers and time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            seen.add(server.status()["pid"])
        time.sleep(0.1)


def run_case(server: PipelineServer, label: str, make: Callable[[], list[bytes]]) -> None:
    bodies = make()
    sizes = "+".join(f"{len(body) / 2**20:.2f}" for body in bodies)
    outcomes: list[Outcome | None] = [None] * len(bodies)
    with RssWatch(server.process.pid) as watch:

        def send(index: int, body: bytes) -> None:
            outcomes[index] = post(server.port, body)

        threads = [threading.Thread(target=send, args=pair) for pair in enumerate(bodies)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(TIMEOUT + 30)
        time.sleep(0.3)  # a worker that goes on after its answer shows in the samples
    bodies.clear()
    for outcome in outcomes:
        assert outcome is not None
        print(
            f"{label:<28} {sizes:>10} MB  HTTP {outcome.status:<5} {outcome.seconds:6.2f} s  "
            f"answer {outcome.answer_bytes:6d} B  worker +{watch.growth_mb:7.0f} MB"
            f"{'  WORKER REPLACED' if watch.replaced() else ''}  {outcome.message}",
            flush=True,
        )


def bench_serving(args, workdir: Path) -> None:
    from pipeline.datasets import images
    from tests.serving_models import register_champion

    guarded = hasattr(images, "DEFAULT_MAX_PIXELS") or args.unguarded
    name = "bench-hostile"
    store = register_champion(workdir / "store", name, "digits", (8, 8, 1), CLASSES)
    good = images_body([small_png(seed) for seed in range(3)])
    print(f"pipeline serve --workers {args.workers}; load average {os.getloadavg()}")
    extra = ("--no-record", "--workers", str(args.workers))
    with PipelineServer(workdir, store, name, *extra) as server:
        wait_for_workers(server, args.workers)
        for _ in range(4):
            post(server.port, good)
        cases: list[tuple[str, Callable[[], list[bytes]]]] = []
        if guarded:
            gray16 = bomb_png(SIDE, 16, 0)
            rgb = bomb_png(SIDE, 8, 2)
            cases += [
                ("16-bit 13000^2 PNG", lambda: [images_body([gray16])]),
                ("RGB 13000^2 PNG", lambda: [images_body([rgb])]),
                ("12 RGB 13000^2 PNGs", lambda: [images_body([rgb] * 12)]),
            ]
        else:
            print("image bombs skipped: this decoder has no pixel budget (--unguarded sends them)")
        cases += [
            ("176 MB JSON body", lambda: [pixels_body(176)]),
            ("two 99 MB bodies at once", lambda: [pixels_body(99), pixels_body(99)]),
            ("JSON 100,000 deep", lambda: [b"[" * 100_000 + b"]" * 100_000]),
            ("20 MB invalid body", lambda: [b"{" + b"x" * (20 << 20)]),
            ("ragged pixel rows", lambda: [ragged_body()]),
            ("junk inside base64", lambda: [junk_base64_body()]),
            ("good request (3 PNGs)", lambda: [good]),
        ]
        for label, make in cases:
            run_case(server, label, make)


# --- the split stage --------------------------------------------------------------------------


def watch_peak(process: subprocess.Popen) -> int:
    """The peak RSS (bytes) of `process`, waited for: its VmHWM, read every 10 ms until it
    exits. Not its rusage: Linux carries the parent's high-water mark (this process holds a
    model and the bodies by now) into a child's ru_maxrss across fork and exec."""
    peak = 0
    while process.poll() is None:
        try:
            with open(f"/proc/{process.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]) * 1024)
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return peak


def split_peak(workdir: Path, bombs: bool) -> None:
    """Run download and split on an image folder of 2 x 20 small PNGs (and two bombs); print
    the split's own peak RSS."""
    from tests.project import copy_project_files, stage_command

    project = workdir / ("split-bombs" if bombs else "split-plain")
    folder = project / "data" / "images"
    for label in ("circle", "square"):
        (folder / label).mkdir(parents=True)
        for index in range(20):
            (folder / label / f"{index}.png").write_bytes(small_png(index + 100 * len(label), 40))
    if bombs:
        (folder / "circle" / "bomb16.png").write_bytes(bomb_png(SIDE, 16, 0))
        (folder / "square" / "bombrgb.png").write_bytes(bomb_png(SIDE, 8, 2))
    size = sum(path.stat().st_size for path in folder.rglob("*.png"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(dataset="image_folder", image_size=32, on_bad_image="skip")
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    copy_project_files(project)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for stage in ("download", "split"):
        log = (project / f"{stage}.log").open("w")
        started = time.perf_counter()
        process = subprocess.Popen(
            stage_command(project, stage), cwd=project, env=env, stdout=log, stderr=log
        )
        peak = watch_peak(process)
        log.close()
        if stage == "download" and process.returncode != 0:
            print(f"download failed ({process.returncode}): see {log.name}")
            return
    skipped = project / "reports" / "data" / "skipped.csv"
    reasons = skipped.read_text().strip().splitlines()[1:] if skipped.exists() else []
    print(
        f"split on {'40 PNGs + 2 bombs' if bombs else '40 PNGs'} ({size / 2**20:.2f} MB): exit "
        f"{process.returncode}, {time.perf_counter() - started:.1f} s, peak RSS "
        f"{peak / 2**20:.0f} MB; skipped: {[line[:110] for line in reasons]}",
        flush=True,
    )


# --- the operator's loop under hostile traffic --------------------------------------------------


def bench_loop(args, workdir: Path) -> None:
    """4 clients send good images (a 13000^2 PNG bomb among them every few requests, with
    row_errors) while a second version is promoted and then rolled back; then `pipeline
    monitor` judges the recorded traffic. Prints failed requests, the versions that answered,
    the workers' RSS growth, and the monitor's verdict."""
    from tests.serving_models import register_champion

    name = "bench-loop"
    store = register_champion(
        workdir / "store", name, "digits", (8, 8, 1), CLASSES, monitoring=True
    )
    predictions = workdir / "predictions"
    extra = ("--workers", str(args.workers), "--poll", "1", "--predictions-dir", str(predictions))
    bomb = base64.b64encode(bomb_png(SIDE, 16, 0)).decode("ascii")
    good_rows = [[base64.b64encode(small_png(seed)).decode("ascii")] for seed in range(3)]

    def body(with_bomb: bool) -> bytes:
        rows = [good_rows[0], [bomb], *good_rows[1:]] if with_bomb else good_rows
        split = {"columns": ["image"], "data": rows}
        return json.dumps({"dataframe_split": split, "params": {"row_errors": True}}).encode()

    answers: list[tuple[float, str, list[str], int]] = []
    stop = threading.Event()

    def client(number: int) -> None:
        sent = 0
        while not stop.is_set():
            sent += 1
            with_bomb = sent % 5 == number % 5
            outcome_started = time.monotonic()
            connection = http.client.HTTPConnection(HOST, server.port, timeout=TIMEOUT)
            try:
                connection.request("POST", "/invocations", body(with_bomb), JSON_HEADERS)
                response = connection.getresponse()
                payload = json.loads(response.read())
                status = str(response.status)
                rows = payload.get("predictions", []) if response.status == 200 else []
            except (OSError, http.client.HTTPException, ValueError) as error:
                status, rows = type(error).__name__, []
            finally:
                connection.close()
            versions = [str(row.get("model_version")) for row in rows]
            errors = sum(1 for row in rows if row.get("error"))
            answers.append((outcome_started, status, versions, errors if with_bomb else -errors))

    with PipelineServer(workdir, store, name, *extra) as server:
        wait_for_workers(server, args.workers)
        threads = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
        with RssWatch(server.process.pid) as watch:
            for thread in threads:
                thread.start()
            time.sleep(8)
            promoted_at = time.monotonic()
            register_champion(workdir / "store", name, "digits", (8, 8, 1), CLASSES, seed=1)
            time.sleep(10)
            rolled_back_at = time.monotonic()
            rollback = subprocess.run(
                [str(Path(sys.executable).parent / "pipeline"), "rollback", "--reason", "bench",
                 "--model-name", name],
                cwd=workdir / "project", env={**os.environ, "MLFLOW_TRACKING_URI": store},
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            time.sleep(8)
            stop.set()
            for thread in threads:
                thread.join()
        replaced = watch.replaced()
        print(f"rollback: exit {rollback.returncode} {rollback.stdout.strip()[:160]}")
    failed = [answer for answer in answers if answer[1] != "200"]
    unnamed = sum(1 for answer in answers for version in answer[2] if version in ("None", ""))
    bombs_refused = sum(1 for answer in answers if answer[3] > 0)
    good_row_errors = sum(-answer[3] for answer in answers if answer[3] < 0)

    def versions(start: float, end: float) -> dict[str, int]:
        counts: dict[str, int] = {}
        for started, _, answered, _ in answers:
            if start <= started < end:
                for version in answered:
                    counts[version] = counts.get(version, 0) + 1
        return counts

    print(
        f"{len(answers)} requests from 4 clients, {len(failed)} failed "
        f"({sorted({answer[1] for answer in failed})}), {unnamed} rows without a version; "
        f"{bombs_refused} requests with a bomb answered with its row's error, "
        f"{good_row_errors} good rows in error; worker RSS growth {watch.growth_mb:.0f} MB, "
        f"workers replaced: {replaced}"
    )
    first = min(answer[0] for answer in answers)
    print(
        f"versions answering: before the promotion {versions(first, promoted_at)}, "
        f"after it {versions(promoted_at, rolled_back_at)}, "
        f"after the rollback {versions(rolled_back_at, time.monotonic())}"
    )
    monitor = subprocess.run(
        [str(Path(sys.executable).parent / "pipeline"), "monitor", "--last", "1h",
         "--predictions-dir", str(predictions), "--model-name", name],
        cwd=workdir / "project", env={**os.environ, "MLFLOW_TRACKING_URI": store},
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    print(f"pipeline monitor: exit {monitor.returncode}")
    print(monitor.stdout.strip()[-600:] or monitor.stderr.strip()[-600:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-serving", action="store_true")
    parser.add_argument("--skip-split", action="store_true")
    parser.add_argument(
        "--loop",
        action="store_true",
        help="only the operator's loop: clients, a promotion and a rollback, bombs, the monitor",
    )
    parser.add_argument(
        "--unguarded", action="store_true", help="send image bombs even without a pixel budget"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as scratch:
        workdir = Path(scratch)
        if args.loop:
            bench_loop(args, workdir)
            return
        if not args.skip_serving:
            bench_serving(args, workdir)
        if not args.skip_split:
            split_peak(workdir, bombs=False)
            split_peak(workdir, bombs=True)


if __name__ == "__main__":
    main()
