"""The retraining cycles of test_retrain.py against an `mlflow server` on PostgreSQL.

The same tests, in a module of their own: pytest-xdist gives a worker a whole module, so the
SQLite and PostgreSQL projects (a few minutes each) run side by side. Tests marked
`sqlite_only` check code that does not depend on the backend and are not collected here.
"""

from __future__ import annotations

import pytest

from tests.conftest import _start_tracking_server
from tests.e2e.test_retrain import *  # noqa: F403 - the same tests, on another backend
from tests.e2e.test_retrain import pytestmark  # noqa: F401 - e2e and slow, as there


@pytest.fixture(scope="module", params=["postgresql"], ids=["postgresql"])
def tracking_server(request, tmp_path_factory):
    """A PostgreSQL-backed server for this module's project."""
    yield from _start_tracking_server(
        request.param, tmp_path_factory.mktemp(f"tracking-{request.param}")
    )
