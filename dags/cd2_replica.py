"""Keep a PostgreSQL replica of Canvas Data 2 current with Instructure's DAP client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.configuration import conf
from airflow.sdk import Param, dag, task, task_group
from airflow.sdk.exceptions import AirflowException

from cd2.operators.list_tables import ListTablesOperator
from cd2.operators.notify import NotifyRunOperator
from cd2.operators.replicate import TABLE_LABEL_CONTEXT_KEY, InitTableOperator, SyncTableOperator

# DAP refreshes its data every 4 hours; MWAA sets [cd2] schedule from its configuration options
# (empty: triggered runs only).
SCHEDULE = conf.get("cd2", "schedule", fallback="0 */4 * * *") or None
CONFIG = "{{ var.value.get('cd2_config', '') }}"

DOC = """
### Canvas Data 2 replica

Every run lists the tables of the namespaces in the `cd2_config` Variable, then per table (mapped,
named `namespace.table`): **sync** brings an initialized table up to date, or says *init needed*;
**init** runs only where sync said so (or for `force_reinit`) and skips itself elsewhere. **notify**
publishes one SNS message with the counts and a line per table; **fail_if_any_table_failed** makes the
run fail when a table failed, after the notification went out.

* Connections: `dap_default` (host = API URL, login = client id, password = client secret),
  `cd2_postgres` (target database; extra `sslmode`), `aws_default` (SNS).
* Variable `cd2_config` (JSON, all keys optional): `namespaces`, `include`, `exclude`,
  `sns_topic_arn`, `max_active_tables`.
* Params: `tables` (only these), `force_reinit` (drop and re-initialize these).
* Schedule: Airflow configuration option `[cd2] schedule` (default every 4 hours; empty: manual only).
"""


@dag(
    dag_id="cd2_replica",
    doc_md=DOC,
    schedule=SCHEDULE,
    start_date=datetime(2025, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["cd2", "canvas"],
    render_template_as_native_obj=True,
    default_args={
        "owner": "data-platform",
        "retries": 3,
        "retry_delay": timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": timedelta(minutes=30),
    },
    params={
        "tables": Param([], type="array", items={"type": "string"}, description="Only these tables"),
        "force_reinit": Param(
            [], type="array", items={"type": "string"}, description="Drop and re-initialize these tables"
        ),
    },
)
def cd2_replica():
    listed = ListTablesOperator(task_id="list_tables", config=CONFIG, tables="{{ params.tables }}")

    @task_group(group_id="table")
    def replicate(label: str):
        sync = SyncTableOperator(
            task_id="sync",
            table_label=label,
            config=CONFIG,
            force_reinit="{{ params.force_reinit }}",
            map_index_template="{{ " + TABLE_LABEL_CONTEXT_KEY + " }}",
            execution_timeout=timedelta(hours=2),
        )
        InitTableOperator(
            task_id="init",
            table_label=label,
            config=CONFIG,
            sync_result=sync.output,
            map_index_template="{{ " + TABLE_LABEL_CONTEXT_KEY + " }}",
            execution_timeout=timedelta(hours=6),
        )

    tables = replicate.expand(label=listed.output)

    notify = NotifyRunOperator(
        task_id="notify",
        config=CONFIG,
        list_task_id="list_tables",
        table_task_ids=["table.sync", "table.init"],
        trigger_rule="all_done",
        retries=1,
    )

    @task(trigger_rule="one_failed", retries=0)
    def fail_if_any_table_failed():
        """Watcher: the notify task succeeds whatever happened, so this makes the run's state tell."""
        raise AirflowException("At least one task failed; the notification lists which and why")

    tables >> notify
    [listed, tables, notify] >> fail_if_any_table_failed()


cd2_replica()
