"""The retraining lock: one cycle at a time, and a killed cycle's lock is taken over; and the
one way a cycle runs a command."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.retraining.commands import SHOWN_TAIL_LINES, CommandResult, run_command
from pipeline.retraining.lock import LockHeld, cycle_lock

HOLD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from pipeline.retraining.lock import cycle_lock
    with cycle_lock(Path(sys.argv[1])):
        print("held", flush=True)
        time.sleep(120)
    """
)


def _hold_in_another_process(lock: Path) -> subprocess.Popen:
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(lock)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_cycle_is_refused_naming_the_holder(tmp_path: Path) -> None:
    lock = tmp_path / ".pipeline" / "retrain.lock"
    holder = _hold_in_another_process(lock)
    try:
        start = time.monotonic()
        with pytest.raises(LockHeld) as refused, cycle_lock(lock):
            pytest.fail("the lock was granted twice")
        assert time.monotonic() - start < 1
        message = str(refused.value)
        assert f"pid {holder.pid}" in message
        assert f"host {socket.gethostname()}" in message
        assert "started 20" in message and str(lock) in message
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_cycles_lock_is_taken_over(tmp_path: Path, caplog) -> None:
    lock = tmp_path / "retrain.lock"
    holder = _hold_in_another_process(lock)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    # The dead cycle's details are still in the file: only the kernel's lock is gone.
    assert json.loads(lock.read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING), cycle_lock(lock) as state:
        assert state["took_over"]["pid"] == holder.pid
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"pid {holder.pid}" in caplog.text and "stale" in caplog.text
    # Released cleanly: the next cycle finds nothing to take over.
    with cycle_lock(lock) as state:
        assert state["took_over"] is None


def test_the_lock_is_released_when_the_cycle_fails(tmp_path: Path) -> None:
    lock = tmp_path / "retrain.lock"
    with pytest.raises(RuntimeError), cycle_lock(lock):
        raise RuntimeError("a step failed")
    with cycle_lock(lock) as state:
        assert state["took_over"] is None


def test_a_captured_command_gives_both_streams_and_its_status(tmp_path: Path) -> None:
    code = "import sys; print('out'); print('err', file=sys.stderr); sys.exit(3)"
    assert run_command([sys.executable, "-c", code], tmp_path) == CommandResult(3, "out\n", "err\n")


def test_a_shown_command_streams_its_output_and_keeps_the_tail(tmp_path: Path, capfd) -> None:
    """DVC's stages run `python` from PATH: this environment's comes first, under cron too."""
    code = (
        "import os, sys; print(os.environ['PATH'].split(os.pathsep)[0], os.environ['EXTRA']);"
        "[print(i, file=sys.stderr if i % 2 else sys.stdout) for i in range(40)]"
    )
    # Unbuffered (-u): the two streams' lines arrive in the order they were written.
    result = run_command([sys.executable, "-u", "-c", code], tmp_path, {"EXTRA": "set"}, show=True)
    assert result.status == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert len(lines) == SHOWN_TAIL_LINES and lines[-1] == "39"
    shown = capfd.readouterr().err.splitlines()
    assert shown[0] == f"{Path(sys.executable).parent} set"
    assert shown[1:] == [str(i) for i in range(40)]


@pytest.mark.parametrize(
    ("champion", "expected"),
    [
        (None, "fine_tune rejected, no champion yet: test accuracy 0.34 is below the floor"),
        ({"version": 1}, "fine_tune champion kept: test accuracy 0.34 is below the floor"),
    ],
)
def test_a_rejected_cycle_says_whether_there_was_a_champion_to_keep(
    tmp_path: Path, champion, expected: str
) -> None:
    from types import SimpleNamespace

    from pipeline.retraining import steps

    decision = tmp_path / "promotion.json"
    decision.write_text(
        json.dumps(
            {
                "passed": False,
                "strategy": "fine_tune",
                "challenger": {"version": 2},
                "champion": champion,
                "reasons": ["test accuracy 0.34 is below the floor"],
            }
        )
    )
    record = SimpleNamespace(mlflow_run_id=None, decision=None, outcome=None)
    cycle = SimpleNamespace(record=record, started=0.0)
    assert steps._promote(cycle, decision) == expected
    assert record.outcome == "rejected"


def test_a_cycle_warns_and_records_params_that_differ_from_the_commit(
    tmp_path: Path, caplog
) -> None:
    """A workspace `dvc exp run -S` leaves its params in params.yaml; a scheduled cycle that
    trains with them says so in the log and in reports/retrain.json, naming each key."""
    from types import SimpleNamespace

    import yaml

    from pipeline.retraining import steps
    from pipeline.retraining.cycle import CycleRecord
    from tests.project import committed_params

    params = {"train": {"scratch": {"epochs": 60}}, "data": {"seed": 42}}
    committed_params(tmp_path, params)
    record = CycleRecord(started_at="now", forced=False)
    cycle = SimpleNamespace(root=tmp_path, record=record)

    steps._note_uncommitted_params(cycle)
    assert record.params_uncommitted == {}
    assert not caplog.records

    params["train"]["scratch"]["epochs"] = 3
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with caplog.at_level(logging.WARNING):
        steps._note_uncommitted_params(cycle)
    assert record.params_uncommitted == {"train.scratch.epochs": "3"}
    assert record.to_dict()["params_uncommitted"] == {"train.scratch.epochs": "3"}
    (warning,) = caplog.records
    assert "train.scratch.epochs=3" in warning.getMessage()
    assert "git checkout params.yaml" in warning.getMessage()
