"""SyncTableOperator and InitTableOperator: one table's DAP work, each in its own child process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from cd2.assets import emit_table_event
from cd2.config import ConfigError, matches, parse_config, parse_flag_param, parse_table_param
from cd2.contract import (
    DEFAULT_LOCK_WAIT_SECONDS,
    Action,
    ContractError,
    Outcome,
    TableJob,
    TableRef,
    TableResult,
)
from cd2.hooks.dap import DapHook, failure_of, raise_for_try
from cd2.instance_names import keep_name_on_retry

# Names a mapped instance in the UI. Airflow renders it in the task, right after the task's templates
# (before execute()) and again at the end; cd2.instance_names names it before it runs and between tries.
MAP_INDEX_TEMPLATE = "{{ task.table_label }}"


class _TableOperator(BaseOperator):
    """Runs one DAP job for ``table_label`` and returns its :class:`TableResult` as the task's XCom.

    The record is pushed in the same shape when the task fails or skips itself, so the next task and
    the notification read one XCom per task, whatever happened.
    """

    template_fields: Sequence[str] = ("table_label", "config")
    ui_color = "#e8eef8"
    action: Action

    def __init__(
        self,
        *,
        table_label: str,
        config: str | Mapping[str, Any] | None = None,
        dap_conn_id: str = DapHook.default_conn_name,
        postgres_conn_id: str = DapHook.default_postgres_conn_name,
        lock_wait_seconds: float = DEFAULT_LOCK_WAIT_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.table_label = table_label
        self.config = config
        self.dap_conn_id = dap_conn_id
        self.postgres_conn_id = postgres_conn_id
        self.lock_wait_seconds = lock_wait_seconds
        self.hook: DapHook | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        keep_name_on_retry()
        try:
            try:
                ref = TableRef.parse(self.table_label)
                config = parse_config(self.config)
            except (ConfigError, ContractError) as error:
                raise AirflowFailException(str(error)) from None
            self.hook = DapHook(dap_conn_id=self.dap_conn_id, postgres_conn_id=self.postgres_conn_id)
            job = TableJob(
                action=self.action,
                namespace=ref.namespace,
                table=ref.name,
                holder=f"{self.dag_id} {context['run_id']}",
                lock_wait_seconds=self.lock_wait_seconds,
                api_limits=config.api_limits_argv,
                api_limit_window_seconds=config.api_limit_window_seconds,
                rate_limited_wait_seconds=config.rate_limited_wait_seconds,
                retention_hours=config.retention.hours_for(ref.label),
                keep_days=config.keep_days.days_for(ref.label),
            )
            result = self.run_job(self.hook, job)
        except AirflowSkipException as skip:
            self._push(context, TableResult(self.table_label, Outcome.SKIPPED, reason=str(skip)))
            raise
        except BaseException as error:
            self._push(context, TableResult(self.table_label, Outcome.FAILED, error=failure_of(error)))
            if isinstance(error, Exception):
                raise_for_try(error, context["ti"].try_number)
            raise  # stopped (a signal, an exit): Airflow decides
        self.log.info("%s: %s", self.table_label, result)
        uri = self.hook.table_asset_uri(self.table_label)
        if emit_table_event(context, uri, result):
            self.log.info("%s changed: asset event for %s", self.table_label, uri)
        return result.to_dict()

    def run_job(self, hook: DapHook, job: TableJob) -> TableResult:
        raise NotImplementedError

    def on_kill(self) -> None:
        if self.hook is not None:
            self.hook.kill_child()

    def _push(self, context: Any, record: TableResult) -> None:
        context["ti"].xcom_push(key="return_value", value=record.to_dict())


class SyncTableOperator(_TableOperator):
    """Synchronize ``table_label`` (``namespace.table``) if it is initialized; else report init needed.

    :param table_label: ``namespace.table``.
    :param config: the ``cd2_config`` Variable's value (for ``api_limits``, ``retention_hours``,
        ``keep_days``).
    :param force_reinit: tables to drop and re-initialize instead (``ns.table`` or ``table``, globs).
    :param plan: only report what a run would do (outcome ``planned``): no change, no job created.
    :param lock_wait_seconds: how long to wait for another task instance working on the same table (and
        a re-init's swap for readers' open transactions on it).
    """

    template_fields: Sequence[str] = (*_TableOperator.template_fields, "force_reinit", "plan")
    action = Action.SYNC

    def __init__(
        self, *, force_reinit: Sequence[str] | str | None = None, plan: bool | str = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.force_reinit = force_reinit
        self.plan = plan

    def run_job(self, hook: DapHook, job: TableJob) -> TableResult:
        try:
            force_reinit = parse_table_param(self.force_reinit, "force_reinit")
            plan = parse_flag_param(self.plan, "plan")
        except ConfigError as error:
            raise AirflowFailException(str(error)) from None
        forced = any(matches(pattern, job.namespace, job.table) for pattern in force_reinit)
        if plan:
            return hook.run_table_job(replace(job, action=Action.PLAN, reinit=forced))
        if forced:
            self.log.info("%s is in force_reinit: no sync, init will re-initialize it", self.table_label)
            return TableResult(self.table_label, Outcome.INIT_NEEDED, reason="force_reinit", reinit=True)
        return hook.run_table_job(job)


class InitTableOperator(_TableOperator):
    """Initialize ``table_label`` if its sync said init needed; otherwise (a plan run too) skip itself.

    The gate is here, not in a short-circuit operator: short-circuiting inside a mapped task group skips
    nothing on Airflow 3.2/3.3, while a task skipping itself after reading its own table's result works.

    :param sync_result: this table's sync record (its XCom).
    """

    template_fields: Sequence[str] = (*_TableOperator.template_fields, "sync_result")
    action = Action.INIT

    def __init__(self, *, sync_result: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sync_result = sync_result

    def run_job(self, hook: DapHook, job: TableJob) -> TableResult:
        sync = TableResult.from_dict(self.sync_result)
        if sync.outcome is Outcome.PLANNED:
            raise AirflowSkipException(f"{self.table_label}: a plan run changes nothing")
        if sync.outcome is not Outcome.INIT_NEEDED:
            raise AirflowSkipException(f"{self.table_label}: sync brought it up to date; no init needed")
        self.log.info("%s: init needed (%s)", self.table_label, sync.reason)
        return hook.run_table_job(replace(job, reinit=sync.reinit))
