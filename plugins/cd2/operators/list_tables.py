"""ListTablesOperator: which tables this run replicates, and each one's job."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from cd2.config import (
    ConfigError,
    NotifySettings,
    parse_config,
    parse_flag_param,
    parse_table_param,
    select_tables,
    table_jobs,
)
from cd2.contract import DEFAULT_LOCK_WAIT_SECONDS
from cd2.dag_names import CONFIG_VARIABLE
from cd2.hooks.dap import DapHook, DapPermanentError, DapTransientError, raise_for_try
from cd2.instances import DEFAULT_INSTANCE, shared_databases

# The XCom keys list_tables pushes beside its table list: each table's job (the table tasks read their
# own), and what the notification needs (pushed first, so that notify can report a failed list_tables).
JOBS_KEY = "jobs"
NOTIFY_KEY = "notify"


class ListTablesOperator(BaseOperator):
    """List each configured namespace's tables from the API, filter them, return ``["ns.table", ...]``.

    The run's one reading of ``cd2_config`` and its params: each table's :class:`~cd2.contract.TableJob`
    goes to XCom ``jobs`` (by label), the notification's settings to XCom ``notify``; a configuration
    error fails this task, naming the key.

    :param config: the ``cd2_config`` Variable's value (JSON text or object), rendered at run time.
    :param tables: restrict the run to these tables (``ns.table`` or ``table``, globs allowed).
    :param force_reinit: tables to drop and re-initialize instead of syncing (same forms).
    :param plan: only report what a run would do: every table's job is a plan.
    :param lock_wait_seconds: how long a table task waits for another run on its table (and a
        re-init's swap for readers' open transactions).
    :param dap_conn_id: the DAP API connection.
    :param postgres_conn_id: the target database (it keeps the API budget unless ``budget_conn_id``).
    :param budget_conn_id: the database keeping the API budget, when not the target.
    :param config_variable: the Variable ``config`` comes from (errors name it).
    :param instance: this DAG's Canvas instance.
    :param instance_targets: every instance's target connection, by instance: this task fails when
        another instance writes its database.
    """

    template_fields: Sequence[str] = ("config", "tables", "force_reinit", "plan")
    ui_color = "#e4f0e8"

    def __init__(
        self,
        *,
        config: str | Mapping[str, Any] | None = None,
        tables: Sequence[str] | str | None = None,
        force_reinit: Sequence[str] | str | None = None,
        plan: bool | str = False,
        lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
        dap_conn_id: str = DapHook.default_conn_name,
        postgres_conn_id: str = DapHook.default_postgres_conn_name,
        budget_conn_id: str | None = None,
        config_variable: str = CONFIG_VARIABLE,
        instance: str = DEFAULT_INSTANCE,
        instance_targets: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.tables = tables
        self.force_reinit = force_reinit
        self.plan = plan
        self.lock_wait_seconds = lock_wait_seconds
        self.dap_conn_id = dap_conn_id
        self.postgres_conn_id = postgres_conn_id
        self.budget_conn_id = budget_conn_id
        self.config_variable = config_variable
        self.instance = instance
        self.instance_targets = instance_targets

    def execute(self, context: Any) -> list[str]:
        ti = context["ti"]
        notify = NotifySettings()
        try:
            config = parse_config(self.config, self.config_variable)
            notify = NotifySettings(config.sns_topic_arn, config.freshness)
            requested = parse_table_param(self.tables, "tables")
            force_reinit = parse_table_param(self.force_reinit, "force_reinit")
            plan = parse_flag_param(self.plan, "plan")
        except ConfigError as error:
            ti.xcom_push(key=NOTIFY_KEY, value=replace(notify, problem=str(error)).to_dict())
            raise AirflowFailException(str(error)) from None
        if shared := self.shared_databases():
            refused = "Refused: " + "; ".join(shared)
            ti.xcom_push(key=NOTIFY_KEY, value=replace(notify, plan=plan, problem=refused).to_dict())
            raise AirflowFailException(refused)
        ti.xcom_push(key=NOTIFY_KEY, value=replace(notify, plan=plan).to_dict())
        hook = DapHook(
            dap_conn_id=self.dap_conn_id,
            postgres_conn_id=self.postgres_conn_id,
            budget_conn_id=self.budget_conn_id,
        )
        try:
            available = hook.list_tables(
                list(config.namespaces),
                api_limits=config.api_limits_argv,
                api_limit_window_seconds=config.api_limit_window_seconds,
                rate_limited_wait_seconds=config.rate_limited_wait_seconds,
            )
        except (DapTransientError, DapPermanentError) as error:
            raise_for_try(error, ti.try_number)
        try:
            chosen = select_tables(
                available, include=config.include, exclude=config.exclude, requested=requested
            )
        except ConfigError as error:
            raise AirflowFailException(str(error)) from None
        jobs = table_jobs(
            config,
            chosen,
            holder=f"{self.dag_id} {context['run_id']}",
            lock_wait_seconds=self.lock_wait_seconds,
            force_reinit=force_reinit,
            plan=plan,
        )
        ti.xcom_push(key=JOBS_KEY, value={label: job.to_dict() for label, job in jobs.items()})
        self.log.info("%d table(s) to replicate: %s", len(chosen), ", ".join(chosen) or "none")
        return chosen

    def shared_databases(self) -> list[str]:
        """Where another instance's connection names this instance's database (their tables, the
        client's ``table_sync`` rows and the product's schema would mix): a sentence for each."""
        if not self.instance_targets or len(self.instance_targets) < 2:
            return []
        targets = {}
        for name, conn_id in self.instance_targets.items():
            try:
                pg = DapHook.get_connection(conn_id)
            except Exception as error:  # not created yet: that instance's own run says so
                self.log.warning("Instance %s: connection %s not readable (%s)", name, conn_id, error)
                continue
            targets[name] = (pg.host or "localhost", pg.port or 5432, pg.schema or "postgres")
        return shared_databases(targets, self.instance)
