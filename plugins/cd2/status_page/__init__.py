"""The replica's status page in the Airflow UI: one row per replicated table, read-only.

Its parts, each testable alone and each a module of this package: :func:`read_replica` (``replica``: the
target database's ``instructure_dap.table_sync`` and each table's row count), :func:`read_last_outcomes` (Airflow's metadata: each table's newest run of
the table tasks and their :class:`~cd2.contract.TableResult` XComs), and :func:`table_statuses` /
:func:`render_html` (merge, then plain server-rendered HTML). :func:`create_app` serves them as a FastAPI
app for the API server, behind Airflow's own authentication (a signed-in user who may read the DAG's task
instances and XComs). The plugin registration is ``plugins/cd2_status_plugin.py``.
"""

from __future__ import annotations

from cd2.status_page.app import URL_PREFIX, create_app
from cd2.status_page.render import render_html
from cd2.status_page.replica import ReplicaTable, connect_replica, read_replica
from cd2.status_page.rows import TableStatus, freshness_from_config, table_statuses
from cd2.status_page.runs import LastOutcome, last_outcome, read_last_outcomes

__all__ = [
    "URL_PREFIX",
    "LastOutcome",
    "ReplicaTable",
    "TableStatus",
    "connect_replica",
    "create_app",
    "freshness_from_config",
    "last_outcome",
    "read_last_outcomes",
    "read_replica",
    "render_html",
    "table_statuses",
]
