"""What a healthy run's logs may hold at WARNING or ERROR: lines about Airflow or the test machine,
not the run. ``alarms`` finds the others."""

from __future__ import annotations

import re
from collections.abc import Iterable

# A line's level, in each format the logs come in: structlog's console renderer ("[warning  ]"),
# Python's and uvicorn's "WARNING:" or a line starting "ERROR", a bare level word in `dags test`
# output, and the task logs' JSON records ("level": "warning").
ALARM = re.compile(
    r"\[(error|warning|critical) *\]|\b(ERROR|WARNING|CRITICAL)\b|\"level\": \"(error|warning|critical)\""
)
AIRFLOW_NOISE = (
    # Airflow 3.3.1 reads .airflowignore (ours keeps the plugin loader out of cd2/) with pathspec's
    # deprecated GitWildMatchPattern.
    "GitWildMatchPattern ('gitwildmatch') is deprecated",
    # The task supervisor forks task processes from a threaded process (Python 3.12's DeprecationWarning).
    "use of fork() may lead to deadlocks",
    # The Amazon provider's own call of a deprecated Airflow API (hooks/base_aws.py), when notify makes
    # its SNS hook.
    "ProvidersManager.hooks is deprecated",
    # `airflow dags test` without graphviz installed.
    "Could not import graphviz",
    # The Task SDK client retrying a busy API server (this machine's 2 shared cores), logged as a warning.
    "Starting call to 'airflow.sdk.api.client.Client.request'",
    # The scheduler's log server (uvicorn) starting: Airflow's own call of uvicorn.
    "ASGI app factory detected",
    # The harness's auth manager (MWAA has its own), on a PostgreSQL metadata database.
    "SimpleAuthManager is active but the deployment shape looks like production",
    # The first event for a table asset the alias introduces, before any DAG schedules on it: Airflow
    # registers the asset from that event.
    "cannot create asset event",
    "Emitting event for inactive AssetModel",
)
# The product's own warning when the target server is older than Instructure supports (CI's pass on
# the system's PostgreSQL 15): expected there, a false alarm anywhere else.
OLD_SERVER_WARNING = "the oldest Instructure supports for the DAP client"
# cd2.dap_child.server_version.MIN_SERVER_VERSION_NUM (16.3); the DAG-level tests run without plugins/ on their path.
MIN_SERVER_VERSION_NUM = 160003


def server_noise(server) -> tuple[str, ...]:
    """``(OLD_SERVER_WARNING,)`` when ``server`` (a :class:`~local_dap.postgres.PostgresServer`) is that old."""
    return (OLD_SERVER_WARNING,) if server.server_version_num < MIN_SERVER_VERSION_NUM else ()


def alarms(lines: Iterable[str], server) -> list[str]:
    """The WARNING, ERROR or CRITICAL lines that are not noise, for a run whose target is ``server``."""
    noise = AIRFLOW_NOISE + server_noise(server)
    return [line for line in lines if ALARM.search(line) and not any(part in line for part in noise)]
