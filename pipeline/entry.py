"""What every entry point shares, the DVC stages and the `pipeline` command alike: logging
set-up and the one error boundary, which turns a PipelineError into one message and exit 2."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence

from pipeline.errors import PipelineError

# Third-party INFO chatter (MLflow's migrations, alembic) drowns the pipeline's own lines.
_NOISY_LOGGERS = ("alembic", "mlflow", "absl", "h5py", "matplotlib", "urllib3", "tensorflow")


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("PIPELINE_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in _NOISY_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)


def run_entry(
    main: Callable[[Sequence[str]], int | None], name: str, argv: Sequence[str] | None = None
) -> None:
    """Run `main(argv)` and exit with its status; a PipelineError exits 2 with its message."""
    configure_logging()
    try:
        status = main(sys.argv[1:] if argv is None else argv)
    except PipelineError as error:
        print(f"error in {name}: {error}", file=sys.stderr)
        sys.exit(2)
    except BrokenPipeError:
        # The reader went away (`pipeline deps | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    sys.exit(status or 0)
