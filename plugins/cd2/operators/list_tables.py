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
from cd2.hooks.dap import DapHook, DapPermanentError, DapTransientError, raise_for_try

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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.tables = tables
        self.force_reinit = force_reinit
        self.plan = plan
        self.lock_wait_seconds = lock_wait_seconds
        self.dap_conn_id = dap_conn_id

    def execute(self, context: Any) -> list[str]:
        ti = context["ti"]
        notify = NotifySettings()
        try:
            config = parse_config(self.config)
            notify = NotifySettings(config.sns_topic_arn, config.freshness)
            requested = parse_table_param(self.tables, "tables")
            force_reinit = parse_table_param(self.force_reinit, "force_reinit")
            plan = parse_flag_param(self.plan, "plan")
        except ConfigError as error:
            ti.xcom_push(key=NOTIFY_KEY, value=replace(notify, problem=str(error)).to_dict())
            raise AirflowFailException(str(error)) from None
        ti.xcom_push(key=NOTIFY_KEY, value=replace(notify, plan=plan).to_dict())
        try:
            available = DapHook(dap_conn_id=self.dap_conn_id).list_tables(
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
