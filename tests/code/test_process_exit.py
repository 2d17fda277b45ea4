"""How an entry point's process ends (pipeline.entry.end_process): at once, without the
interpreter's teardown, but only after what a normal exit does for the files the stage leaves
(the atexit handlers: logging's flush, MLflow's, temporary folders' finalizers; stdout and
stderr flushed). os._exit and atexit's runner are replaced here: the test process goes on."""

from __future__ import annotations

import atexit
import os
import sys
import threading

import pytest

from pipeline import entry
from pipeline.entry import end_process, run_entry
from pipeline.errors import ConfigError


class Ended(Exception):
    """os._exit, caught: the status it was given."""


class Recorded:
    """A stream that records its flushes in `steps`."""

    def __init__(self, stream, steps: list[str]) -> None:
        self.stream, self.steps = stream, steps

    def write(self, text: str) -> int:
        return self.stream.write(text)

    def flush(self) -> None:
        self.steps.append("flushed")


@pytest.fixture
def ended(monkeypatch) -> list[str]:
    """What end_process did, in order: "handlers", "flushed", then "exit <status>"."""
    steps: list[str] = []

    def exit_now(status: int) -> None:
        steps.append(f"exit {status}")
        raise Ended(status)

    monkeypatch.setattr(atexit, "_run_exitfuncs", lambda: steps.append("handlers"))
    monkeypatch.setattr(os, "_exit", exit_now)
    monkeypatch.setattr(entry, "_run", entry._Run("pipeline", 0.0))
    # Under pytest-cov or a debugger the test process itself is traced, and other tests in
    # this worker may have left threads of their own: only the main thread runs here.
    monkeypatch.setattr(sys, "gettrace", lambda: None)
    monkeypatch.setattr(sys, "getprofile", lambda: None)
    monkeypatch.setattr(threading, "enumerate", lambda: [threading.main_thread()])
    return steps


def test_the_process_ends_after_its_exit_handlers_and_flushed_output(ended, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["train", "scratch"])
    seen = []
    monkeypatch.setenv("PIPELINE_LOG", "debug")  # no native-stderr filter: its own flushes
    # Inside the test: pytest puts its own streams back between a fixture and the test.
    monkeypatch.setattr(sys, "stdout", Recorded(sys.stdout, ended))
    monkeypatch.setattr(sys, "stderr", Recorded(sys.stderr, ended))
    with pytest.raises(Ended):
        run_entry(lambda argv: seen.append(argv), "stage 'train'")
    assert seen == [["scratch"]]
    assert ended == ["handlers", "flushed", "flushed", "exit 0"]


def test_an_error_ends_the_process_with_status_2_and_its_message(ended, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["train"])

    def main(argv):
        raise ConfigError("params.yaml: train.scratch.epochs must be positive")

    with pytest.raises(Ended):
        run_entry(main, "stage 'train'")
    assert ended[-1] == "exit 2" and ended[0] == "handlers"
    assert "error in stage 'train': params.yaml: train.scratch.epochs" in capsys.readouterr().err


def test_a_thread_still_running_gets_the_normal_exit(ended, monkeypatch) -> None:
    """A normal exit waits for a non-daemon thread; so does end_process, by being one."""
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=False)
    worker.start()
    alive = [thread for thread in (threading.main_thread(), worker) if thread.is_alive()]
    monkeypatch.setattr(threading, "enumerate", lambda: alive)
    try:
        with pytest.raises(SystemExit) as exited:
            end_process(3)
    finally:
        release.set()
        worker.join()
    assert exited.value.code == 3 and ended == []
    with pytest.raises(Ended):
        end_process(3)  # the thread is gone: at once
    assert ended[-1] == "exit 3"


def test_called_with_arguments_run_entry_only_raises_system_exit(ended) -> None:
    """Tests and other callers that pass argv keep sys.exit: the caller's process goes on."""
    with pytest.raises(SystemExit) as exited:
        run_entry(lambda argv: 4, "stage 'split'", [])
    assert exited.value.code == 4 and ended == []


def test_a_profiled_process_gets_the_normal_exit(ended, monkeypatch) -> None:
    """`python -m cProfile -m pipeline.stages.train ...` writes its figures once the module
    returns: a profiler (or a tracer, as coverage's) keeps the normal exit."""
    monkeypatch.setattr(sys, "getprofile", lambda: object())
    with pytest.raises(SystemExit) as exited:
        end_process(0)
    assert exited.value.code == 0 and ended == []
