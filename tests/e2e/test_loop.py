"""The loop after promotion, on the bundled digits with tiny epochs, as an operator runs it:
a baseline `dvc repro` promotes version 1; `pipeline serve` answers 4 concurrent clients while
a second `dvc repro` (a better scratch schedule) promotes version 2, and every request
succeeds and names the version that answered it; the predictions log holds every answered
image; inverted digits make `pipeline monitor` say drift; `pipeline retrain` records drift as
its trigger and, with no new labelled images, writes a review queue instead of retraining;
`pipeline rollback` moves the champion back and the server answers with version 1 again.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
import yaml
from PIL import Image

from pipeline.monitoring.records import read_window
from pipeline.store import image_digest, open_split
from tests.project import dvc, git, make_project_copy, pipeline_command, tiny_params
from tests.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = "digits-classifier"
POLL = 1.0
CLIENTS = 4


def _edit(params: dict) -> dict:
    params = tiny_params(params)
    # Version 1 barely learns (a tiny learning rate), so version 2 passes every criterion of
    # the gate against it, McNemar's test included, as a real improvement would.
    params["train"]["scratch"].update(epochs=1, learning_rate=1e-5)
    params["promote"].update(strategy="scratch", min_accuracy=0.0, min_class_recall=0.0)
    return params


def _said(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}"


def _png(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


class Server:
    """`pipeline serve` on a free port, its log in a file."""

    def __init__(self, root: Path, env: dict, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        command = [
            str(Path(sys.executable).parent / "pipeline"),
            "serve",
            "--port",
            str(self.port),
            "--poll",
            str(POLL),
            "--flush-seconds",
            "0.5",
            "--keep-images",
        ]
        self.process = subprocess.Popen(
            command,
            cwd=root,
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if requests.get(f"{self.url}/status", timeout=5).ok:
                    return
            except requests.RequestException:
                # The port is bound before the model loads: connections wait in its backlog.
                pass
            time.sleep(0.5)
        self.stop()
        raise AssertionError(f"pipeline serve did not answer in 120 s\n{self.tail()}")

    def status(self) -> dict:
        return requests.get(f"{self.url}/status", timeout=5).json()

    def ask(self, images: list[np.ndarray]) -> list[dict]:
        request = {"dataframe_split": {"columns": ["image"], "data": [[_png(i)] for i in images]}}
        answer = requests.post(f"{self.url}/invocations", json=request, timeout=60)
        assert answer.status_code == 200, answer.text
        return answer.json()["predictions"]

    def tail(self) -> str:
        return self.log.read_text()[-6000:] if self.log.is_file() else ""

    def stop(self) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                return self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                return self.process.wait()
        return self.process.returncode


class Clients:
    """CLIENTS threads asking the server without pause, each request's outcome kept."""

    def __init__(self, server: Server, images: np.ndarray) -> None:
        self.server, self.images = server, images
        self.stop_event = threading.Event()
        self.outcomes: list[dict] = []
        self.lock = threading.Lock()
        self.threads = [
            threading.Thread(target=self._run, args=(seed,), daemon=True) for seed in range(CLIENTS)
        ]

    def _run(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        session = requests.Session()
        while not self.stop_event.is_set():
            rows = rng.choice(len(self.images), size=int(rng.integers(1, 4)), replace=False)
            request = {
                "dataframe_split": {
                    "columns": ["image"],
                    "data": [[_png(self.images[row])] for row in rows],
                }
            }
            started = time.time()
            try:
                answer = session.post(f"{self.server.url}/invocations", json=request, timeout=60)
                status = answer.status_code
                versions = [p.get("model_version") for p in answer.json()["predictions"]]
            except Exception as error:  # noqa: BLE001 - every failure is counted, not raised
                status, versions = repr(error), []
            outcome = {
                "started": started,
                "ended": time.time(),
                "status": status,
                "versions": versions,
                "images": len(rows),
            }
            with self.lock:
                self.outcomes.append(outcome)
            # A steady stream, not a flood: the promotion's training shares these 2 cores.
            time.sleep(0.05)

    def __enter__(self) -> Clients:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=90)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    env = make_project_copy(root, _edit)
    result = dvc(root, env, "repro")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    client = mlflow.MlflowClient()
    assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
    return root, env, client


def test_the_loop_serve_promote_record_monitor_retrain_rollback(project, tmp_path) -> None:
    root, env, client = project
    test = open_split(root / "data" / "prepared", "test")
    images = test.read(range(len(test)))
    server = Server(root, env, tmp_path / "serve.log")
    try:
        assert server.status()["version"] == "1"

        # A better version 2 is trained and promoted while 4 clients keep asking.
        params = yaml.safe_load((root / "params.yaml").read_text())
        params["train"]["scratch"].update(epochs=3, learning_rate=0.003)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        git(root, "commit", "-qam", "a better scratch schedule")
        with Clients(server, images) as clients:
            time.sleep(3)
            # `dvc repro` on the main line: scratch retrains, and the gate promotes it.
            repro = dvc(root, env, "repro")
            assert repro.returncode == 0, _said(repro)
            champion = client.get_model_version_by_alias(MODEL, "champion")
            assert str(champion.version) == "2", _said(repro)
            deadline = time.monotonic() + 2 * POLL + 30
            while server.status()["version"] != "2" and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2 * POLL)
        outcomes = clients.outcomes
        failed = [o for o in outcomes if o["status"] != 200]
        assert outcomes and not failed, (failed[:5], server.tail())
        assert all(o["versions"] and None not in o["versions"] for o in outcomes)
        swap = next(s for s in server.status()["swaps"] if s["version"] == "2")
        promoted = datetime.fromisoformat(champion.tags["champion.since"]).timestamp()
        swapped = datetime.fromisoformat(swap["at"]).timestamp()
        # Within two polls of the alias moving (the tag has whole seconds), load included.
        assert swapped - promoted <= 2 * POLL + 1 + 15, (promoted, swap)
        seen = [v for o in outcomes for v in o["versions"]]
        assert set(seen) == {"1", "2"}, "both versions answered during the promotion"
        # A request that started after the swap was answered by version 2 only.
        late = [o for o in outcomes if o["started"] > swapped + 0.5]
        assert late and all(set(o["versions"]) == {"2"} for o in late)

        # The predictions log holds every answered image, digests and all.
        answered = sum(o["images"] for o in outcomes)
        _wait_written(server, answered)
        records = read_window(root / "monitoring" / "predictions", last_n=10**6)
        assert len(records) == answered, (len(records), answered)
        assert set(records["model_version"]) == {"1", "2"}
        digests = {image_digest(image) for image in images}
        assert set(records["digest"]) <= digests
        assert (
            records["embedding"].map(len).eq(len(records["embedding"].iloc[0])).all()
            and 0 < len(records["embedding"].iloc[0]) <= 32
        )

        # Inverted digits: the world changed, and the monitor says so.
        for start in range(0, 200, 20):
            server.ask([255 - image for image in images[start : start + 20]])
        _wait_written(server, answered + 200)
        monitored = pipeline_command(root, env, "monitor", "--last-n", "200")
        assert monitored.returncode == 0, _said(monitored)
        assert monitored.stdout.startswith("DRIFT"), monitored.stdout
        latest = json.loads((root / "reports" / "monitoring" / "latest.json").read_text())
        assert latest["drift"] is True and latest["model_version"] == "2"
        assert (root / latest["page"]).is_file()
        monitor_runs = mlflow.search_runs(
            search_all_experiments=True, filter_string="tags.`pipeline.kind` = 'monitor'"
        )
        assert list(monitor_runs["tags.model_version"]) == ["2"]

        # Drift with no new labelled images: the cycle asks for labels instead of retraining.
        cycle = pipeline_command(root, env, "retrain")
        assert cycle.returncode == 0, _said(cycle)
        record = json.loads((root / "reports" / "retrain.json").read_text())
        assert record["triggers"] == ["drift"] and record["outcome"] == "review queued"
        assert record["drift_report"] == latest["report"]
        assert (root / "reports" / "review" / "queue.csv").is_file()
        page = (root / "reports" / "review" / "index.html").read_text()
        assert page.count("data:image/png;base64,") >= 10, "kept images appear as thumbnails"
        cycle_run = client.get_run(record["mlflow_run_id"])
        assert cycle_run.data.tags["trigger"] == "drift"
        again = pipeline_command(root, env, "retrain")
        assert again.returncode == 0 and "no new data" in again.stdout, _said(again)

        # Roll back: the champion is version 1 again, and so is every answer within a poll.
        rolled = pipeline_command(root, env, "rollback", "--reason", "inverted scans misread")
        assert rolled.returncode == 0, _said(rolled)
        assert str(client.get_model_version_by_alias(MODEL, "champion").version) == "1"
        tags = client.get_model_version(MODEL, "2").tags
        assert tags["rollback.rolled_back"] == "true"
        assert tags["rollback.reason"] == "inverted scans misread"
        deadline = time.monotonic() + 2 * POLL + 30
        while server.status()["version"] != "1" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert {p["model_version"] for p in server.ask(list(images[:3]))} == {"1"}
        rollback_runs = mlflow.search_runs(
            search_all_experiments=True, filter_string="tags.`pipeline.kind` = 'rollback'"
        )
        assert list(rollback_runs["tags.to_version"]) == ["1"]
    finally:
        status = server.stop()
    assert status == 0, server.tail()


def _wait_written(server: Server, rows: int, timeout: float = 20) -> None:
    """Wait until the server's recorder has written `rows` records in all."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.status()["recorder"]["written"] >= rows:
            return
        time.sleep(0.2)
    raise AssertionError(f"{rows} records not written after {timeout} s: {server.status()}")
