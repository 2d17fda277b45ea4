"""The quiet log (pipeline.entry): known third-party chatter is dropped at the entry point, the
pipeline's own warnings and any actionable third-party one are kept, debug mode keeps
everything, and progress outside a terminal is a plain line per 10%."""

from __future__ import annotations

import io
import logging
import os
import sys

import pytest

from pipeline import entry
from pipeline.entry import (
    ChatterFilter,
    Progress,
    QuietFormatter,
    debug_requested,
    filtered_native_stderr,
    is_native_chatter,
    log_result,
    run_entry,
    stage_label,
)

GE_CLOSURE = (
    "Skipping registering function DataSourceManager._register_add_datasource.<locals>."
    "crud_method_info because it is a closure"
)
TF_BANNER = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795807306.620504   18173 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1795807306.621021   18173 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.",
)
TF_RUNTIME_NOISE = (
    "E0000 00:00:1795817256.838443   19384 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "E0000 00:00:1795817325.184152   19458 node_def_util.cc:682] NodeDef mentions attribute "
    "use_unbounded_threadpool which is not in the op definition: Op<name=MapDataset; ...>",
)


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_known_chatter_is_dropped_and_warnings_are_kept() -> None:
    quiet = ChatterFilter(debug=False)
    assert not quiet.filter(
        _record("great_expectations._docs_decorators", logging.INFO, GE_CLOSURE)
    )
    assert not quiet.filter(
        _record("mlflow.store.db.utils", logging.INFO, "Creating initial MLflow database tables...")
    )
    type_hints = "\x1b[33mAdd type hints to the `predict` method to enable data validation\x1b[0m"
    assert not quiet.filter(_record("py.warnings", logging.WARNING, type_hints))
    retracing = (
        "5 out of the last 7 calls to <function TensorFlowTrainer.make_predict_function.<locals>"
        ".one_step_on_data_distributed at 0x7f2228f9c5e0> triggered tf.function retracing."
    )
    assert not quiet.filter(_record("tensorflow", logging.WARNING, retracing))
    assert quiet.filter(_record("tensorflow", logging.WARNING, "Gradients do not exist for x"))
    # The pipeline's own warning, and a third-party one that asks something of the user, pass.
    assert quiet.filter(
        _record("pipeline.stages.validate", logging.WARNING, "151 near duplicates (see ...)")
    )
    assert quiet.filter(_record("pipeline.stages.split", logging.INFO, "split: 1797 images"))
    assert quiet.filter(
        _record("great_expectations.core", logging.WARNING, "expectation suite is empty")
    )
    assert quiet.filter(_record("mlflow.tracking", logging.ERROR, "the server refused"))


def test_debug_mode_keeps_everything() -> None:
    loud = ChatterFilter(debug=True)
    assert loud.filter(_record("great_expectations._docs_decorators", logging.INFO, GE_CLOSURE))
    assert loud.filter(_record("mlflow.store.db.utils", logging.INFO, "Creating tables"))


def test_tensorflows_native_banner_is_recognised_and_errors_are_not() -> None:
    assert all(is_native_chatter(line) for line in (*TF_BANNER, *TF_RUNTIME_NOISE))
    assert not is_native_chatter("E0000 00:00:1.5 42 bfc_allocator.cc:1] Out of memory")
    assert not is_native_chatter("Traceback (most recent call last):")
    assert not is_native_chatter("error in stage 'split': data/raw has no images")


def test_native_stderr_is_filtered_line_by_line(capfd) -> None:
    """What native code writes to descriptor 2 goes through the filter; debug bypasses it."""
    with filtered_native_stderr(lambda line: not is_native_chatter(line)):
        for line in (*TF_BANNER, "a real problem"):
            os.write(2, f"{line}\n".encode())
    err = capfd.readouterr().err
    assert err == "a real problem\n"


def test_a_bar_redrawn_with_carriage_returns_passes_at_once(capfd) -> None:
    """A progress bar's redraws end in a carriage return, not a newline: each goes out as it is
    written (not held until a newline), and the lines around it are still filtered."""
    with filtered_native_stderr(lambda line: not is_native_chatter(line)):
        os.write(2, b"bar  10%\r")
        os.write(2, f"{TF_RUNTIME_NOISE[0]}\nbar 100%\r\n".encode())
    assert capfd.readouterr().err == "bar  10%\rbar 100%\r\n"


def test_run_entry_filters_what_native_code_writes_while_the_stage_runs(capfd, monkeypatch) -> None:
    """TensorFlow's errors that are not (cuInit on a CPU-only machine, tf.data attributes) come
    while a stage runs, after the import: run_entry drops them and keeps everything else."""
    monkeypatch.delenv("PIPELINE_LOG", raising=False)
    monkeypatch.delenv("PIPELINE_LOG_LEVEL", raising=False)

    def main(argv):
        for line in (*TF_RUNTIME_NOISE, "a real problem"):
            os.write(2, f"{line}\n".encode())

    with pytest.raises(SystemExit):
        run_entry(main, "stage 'train'", [])
    assert capfd.readouterr().err == "a real problem\n"


def test_verbose_flag_and_environment_turn_debug_on(monkeypatch) -> None:
    monkeypatch.delenv("PIPELINE_LOG", raising=False)
    monkeypatch.delenv("PIPELINE_LOG_LEVEL", raising=False)
    assert not debug_requested(["--raw", "data/raw"])
    assert debug_requested(["--raw", "data/raw", "-v"])
    monkeypatch.setenv("PIPELINE_LOG", "debug")
    assert debug_requested([])
    monkeypatch.delenv("PIPELINE_LOG")
    monkeypatch.setenv("PIPELINE_LOG_LEVEL", "DEBUG")  # the older variable still works
    assert debug_requested([])


def test_the_pipelines_info_lines_are_bare_and_others_say_where_they_come_from() -> None:
    formatter = QuietFormatter()
    line = formatter.format(_record("pipeline.split", logging.INFO, "split: 1797 images"))
    assert line == "split: 1797 images"
    warning = formatter.format(_record("pipeline.stages.validate", logging.WARNING, "151 near"))
    assert warning == "WARNING pipeline.stages.validate: 151 near"


def test_progress_outside_a_terminal_is_a_plain_line_per_tenth(monkeypatch, caplog) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # not a terminal
    caplog.set_level(logging.INFO, logger="pipeline")
    with Progress(1797, "decoding") as progress:
        for _ in range(0, 1797, 100):
            progress.update(100)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 10
    assert lines[0].endswith("decoding 10% (200/1797 images)") and lines[-1].endswith(
        "100% (1797/1797 images)"
    )
    assert not any("\x1b" in line or "\r" in line for line in lines)
    assert sys.stderr.getvalue() == ""  # no bar was drawn


def test_run_entry_strips_verbose_and_ends_with_one_timed_result_line(monkeypatch, caplog) -> None:
    seen = []

    def main(argv):
        seen.append(list(argv))
        log_result("1797 images -> train 1166, val 264, test 367")

    caplog.set_level(logging.INFO, logger="pipeline")
    monkeypatch.setattr(entry, "_run", entry._Run("pipeline", 0.0))
    with pytest.raises(SystemExit) as exited:
        run_entry(main, "stage 'split'", ["--raw", "data/raw", "-v"])
    assert exited.value.code == 0 and seen == [["--raw", "data/raw"]]
    (message,) = [record.getMessage() for record in caplog.records]
    assert message.startswith("split: 1797 images -> train 1166, val 264, test 367 (")
    assert message.endswith(" s)")
    assert stage_label("pipeline") == "pipeline"


def test_optional_imports_are_skipped_only_while_their_library_loads(tmp_path, monkeypatch) -> None:
    """While a library of _SKIPPED_OPTIONAL_IMPORTS loads, its optional import fails as if the
    package were not installed (the library's own `except ImportError` takes over); imported
    anywhere else afterwards, the package loads as usual."""
    (tmp_path / "host_library").mkdir()
    (tmp_path / "host_library" / "__init__.py").write_text(
        "try:\n    import optional_extra\n    FOUND = True\n"
        "except ImportError:\n    FOUND = False\n"
    )
    (tmp_path / "optional_extra").mkdir()
    (tmp_path / "optional_extra" / "__init__.py").write_text("VALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(entry, "_SKIPPED_OPTIONAL_IMPORTS", {"host_library": ("optional_extra",)})
    finder = entry._QuietImportFinder(quiet=False)
    monkeypatch.setattr(sys, "meta_path", [finder, *sys.meta_path])
    for name in ("host_library", "optional_extra"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import host_library

    assert host_library.FOUND is False
    import optional_extra

    assert optional_extra.VALUE == 42 and entry._loading == []


def test_jax_is_skipped_while_keras_loads_only_when_it_is_not_the_backend(
    tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert entry._skipped_while_loading("keras") == ("sklearn", "matplotlib")
    assert entry._skipped_while_loading("tensorflow") == ()
    monkeypatch.delenv("KERAS_BACKEND")
    assert entry._skipped_while_loading("keras") == ("sklearn", "jax", "matplotlib")
    assert entry._skipped_while_loading("tensorflow") == ("jax",)
    (tmp_path / "keras.json").write_text('{"backend": "jax"}')
    assert entry._skipped_while_loading("keras") == ("sklearn", "matplotlib")


def test_third_party_telemetry_is_off_unless_the_user_chose(monkeypatch) -> None:
    """MLflow 3's usage telemetry (a DNS lookup, a sender thread, a wait at exit in every
    process) and Great Expectations' analytics are off by default; a user's own setting stays."""
    from mlflow.telemetry.utils import is_telemetry_disabled

    for name in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "GX_ANALYTICS_ENABLED"):
        monkeypatch.delenv(name, raising=False)
    entry.quiet_environment(debug=True)
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert os.environ["GX_ANALYTICS_ENABLED"] == "false"
    assert is_telemetry_disabled()

    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "false")
    entry.quiet_environment(debug=True)
    assert os.environ["MLFLOW_DISABLE_TELEMETRY"] == "false"
