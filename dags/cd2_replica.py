"""Keep a PostgreSQL replica of Canvas Data 2 current with Instructure's DAP client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from string import Template

from airflow.sdk import AssetAlias, Param, dag, task, task_group
from airflow.sdk.exceptions import AirflowException, AirflowSkipException

from cd2.dag_names import (
    INIT_TASK,
    INIT_TASK_ID,
    LIST_TASK_ID,
    NOTIFY_TASK_ID,
    SYNC_TASK,
    SYNC_TASK_ID,
    TABLE_GROUP_ID,
)
from cd2.instances import Instance, configured_instances
from cd2.operators.list_tables import ListTablesOperator
from cd2.operators.notify import NotifyRunOperator, why_the_run_fails
from cd2.operators.replicate import MAP_INDEX_TEMPLATE, InitTableOperator, SyncTableOperator

# One DAG per configured Canvas instance ([cd2] instances; default: the one instance cd2_replica). Its
# options ([cd2] schedule, max_active_tables, lock_wait_seconds, overridden per instance in [cd2_NAME])
# are configuration options (MWAA sets them), read without a database or secrets call, each checked: a
# bad value fails the import, naming it. max_active_tables is Airflow's own cap, so a table waiting for
# its turn is a scheduled task holding no worker slot, child or connection.
INSTANCES = configured_instances()

DOC = Template("""
### Canvas Data 2 replica: instance `$instance`

Every run lists the tables of the namespaces in the `$config_variable` Variable (**list_tables** reads
the Variable and the params once and hands each table its job), then per table (mapped,
named `namespace.table`): **sync** brings an initialized table up to date, or says *init needed*;
**init** runs only where sync said so (or for `force_reinit`) and skips itself elsewhere. **notify**
publishes one SNS message with the counts and a line per table; **fail_if_any_table_failed** makes the
run fail when a table failed, after the notification went out.

* Connections: `$dap_conn_id` (host = API URL, login = client id, password = client secret),
  `$postgres_conn_id` (target database, this instance's own; extra `sslmode`), `aws_default` (SNS).
* Variable `$config_variable` (JSON, all keys optional): `namespaces`, `include`, `exclude`,
  `sns_topic_arn`, `freshness_hours` (a number, or `{"default": 12, "ns.table": 48}`), `api_limits`
  (calls per minute per endpoint; default the API's published limits), `retention_hours`
  (`{"ns.table": hours}` the API serves a table's changes for; default the published 30 days of
  `canvas_logs.web_logs`; plan runs predict a re-init from it), `rate_limited_wait_seconds`,
  `keep_days` (`{"canvas_logs.*": 400}`: days of a log table's rows kept; default everything).
* Params: `tables` (only these), `force_reinit` (drop and re-initialize these), `plan` (change
  nothing: sync reports per table what a run would do, init, re-init, sync or nothing, and why, with
  watermark, lag, rows and local vs API schema version; init skips; only schema and list calls, no job).
* Assets: a table task that changed its table emits an event for `postgres://host:port/db/ns/table`
  through the asset alias `$tables_alias` (see `cd2.assets`).
* Airflow configuration options of section `[$section]`$over: `max_active_tables`, table tasks at once
  (each of sync, init); `lock_wait_seconds`, how long a table task waits for another run on its table
  before it reports the table *busy* (not a failure); `schedule` (default every 4 hours; empty: manual
  only).
* The API budget of every instance is kept in `$budget_conn_id`'s database, per client id.
""")


def replica_dag(instance: Instance, instance_targets: dict[str, str]) -> None:
    """Define the DAG of one Canvas instance (``instance_targets``: every instance's target connection)."""
    settings = instance.settings
    connections = {
        "dap_conn_id": instance.dap_conn_id,
        "postgres_conn_id": instance.postgres_conn_id,
        "budget_conn_id": instance.budget_conn_id,
    }
    table_task = {
        "list_task_id": LIST_TASK_ID,
        "map_index_template": MAP_INDEX_TEMPLATE,
        "max_active_tis_per_dagrun": settings.max_active_tables,
        "outlets": [AssetAlias(instance.tables_alias)],
        "tables_alias": instance.tables_alias,
        **connections,
    }

    @dag(
        dag_id=instance.dag_id,
        doc_md=DOC.substitute(
            instance=instance.name,
            config_variable=instance.config_variable,
            section=instance.section,
            over="" if instance.is_default else " (each option it does not set: `[cd2]`'s)",
            tables_alias=instance.tables_alias,
            **connections,
        ),
        schedule=settings.schedule,
        start_date=datetime(2025, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        tags=["cd2", "canvas", f"cd2:{instance.name}"],
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
            "plan": Param(
                False, type="boolean", description="Only report what a run would do; change nothing"
            ),
        },
    )
    def cd2_replica():
        # The run's one reading of the config Variable and the params: each table's job, notify's settings.
        listed = ListTablesOperator(
            task_id=LIST_TASK_ID,
            config="{{ var.value.get('" + instance.config_variable + "', '') }}",
            tables="{{ params.tables }}",
            force_reinit="{{ params.force_reinit }}",
            plan="{{ params.plan }}",
            lock_wait_seconds=settings.lock_wait_seconds,
            config_variable=instance.config_variable,
            instance=instance.name,
            instance_targets=instance_targets,
            **connections,
        )

        @task_group(group_id=TABLE_GROUP_ID)
        def replicate(label: str):
            sync = SyncTableOperator(
                task_id=SYNC_TASK, table_label=label, execution_timeout=timedelta(hours=2), **table_task
            )
            InitTableOperator(
                task_id=INIT_TASK,
                table_label=label,
                sync_result=sync.output,
                execution_timeout=timedelta(hours=6),
                **table_task,
            )

        tables = replicate.expand(label=listed.output)

        notify = NotifyRunOperator(
            task_id=NOTIFY_TASK_ID,
            list_task_id=LIST_TASK_ID,
            table_task_ids=[SYNC_TASK_ID, INIT_TASK_ID],
            trigger_rule="all_done",
            retries=1,
        )

        # all_done, not one_failed: one_failed fires on the first failed table, before notify has run.
        @task(trigger_rule="all_done", retries=0)
        def fail_if_any_table_failed(**context):
            """Watcher: after notify, fails the run if a table failed or the notification was not delivered."""
            reason = why_the_run_fails(context["ti"].xcom_pull(task_ids=NOTIFY_TASK_ID))
            if reason:
                raise AirflowException(reason)
            raise AirflowSkipException("No table failed")

        tables >> notify
        [listed, tables, notify] >> fail_if_any_table_failed()

    cd2_replica()


INSTANCE_TARGETS = {instance.name: instance.postgres_conn_id for instance in INSTANCES}
for _instance in INSTANCES:
    replica_dag(_instance, INSTANCE_TARGETS)
