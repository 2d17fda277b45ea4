"""`python -m pipeline ...`: the `pipeline` command."""

from pipeline.cli import entry_point

entry_point()
