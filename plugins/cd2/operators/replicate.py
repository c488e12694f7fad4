"""SyncTableOperator and InitTableOperator: one table's DAP work, each in its own child process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from cd2.assets import TABLES_ALIAS, emit_table_event
from cd2.contract import Action, ContractError, Outcome, TableJob, TableResult
from cd2.hooks.dap import DapHook, failure_of, raise_for_try
from cd2.instance_names import keep_name_on_retry
from cd2.operators.list_tables import JOBS_KEY

# Names a mapped instance in the UI. Airflow renders it in the task, right after the task's templates
# (before execute()) and again at the end; cd2.instance_names names it before it runs and between tries.
MAP_INDEX_TEMPLATE = "{{ task.table_label }}"


class _TableOperator(BaseOperator):
    """Runs ``table_label``'s DAP job, as ``list_task_id`` handed it over, and returns its
    :class:`TableResult` as the task's XCom.

    The record is pushed in the same shape when the task fails or skips itself, so the next task and
    the notification read one XCom per task, whatever happened.

    :param dap_conn_id: the DAP API connection; ``postgres_conn_id``: the target database;
        ``budget_conn_id``: the database keeping the API budget, when not the target.
    :param tables_alias: the asset alias a changed table's event is attached to (one per instance).
    """

    template_fields: Sequence[str] = ("table_label",)
    ui_color = "#e8eef8"

    def __init__(
        self,
        *,
        table_label: str,
        list_task_id: str,
        dap_conn_id: str = DapHook.default_conn_name,
        postgres_conn_id: str = DapHook.default_postgres_conn_name,
        budget_conn_id: str | None = None,
        tables_alias: str = TABLES_ALIAS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.table_label = table_label
        self.list_task_id = list_task_id
        self.dap_conn_id = dap_conn_id
        self.postgres_conn_id = postgres_conn_id
        self.budget_conn_id = budget_conn_id
        self.tables_alias = tables_alias
        self.hook: DapHook | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        keep_name_on_retry()
        try:
            job = self._job(context)
            self.hook = DapHook(
                dap_conn_id=self.dap_conn_id,
                postgres_conn_id=self.postgres_conn_id,
                budget_conn_id=self.budget_conn_id,
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
        if emit_table_event(context, uri, result, self.tables_alias):
            self.log.info("%s changed: asset event for %s", self.table_label, uri)
        return result.to_dict()

    def _job(self, context: Any) -> TableJob:
        jobs = context["ti"].xcom_pull(task_ids=self.list_task_id, key=JOBS_KEY, map_indexes=-1)
        if not isinstance(jobs, Mapping) or self.table_label not in jobs:
            raise AirflowFailException(f"{self.list_task_id} handed over no job for {self.table_label}")
        try:
            return TableJob.from_dict(jobs[self.table_label])
        except ContractError as error:
            raise AirflowFailException(f"{self.list_task_id}'s job for {self.table_label}: {error}") from None

    def run_job(self, hook: DapHook, job: TableJob) -> TableResult:
        raise NotImplementedError

    def on_kill(self) -> None:
        if self.hook is not None:
            self.hook.kill_child()

    def _push(self, context: Any, record: TableResult) -> None:
        context["ti"].xcom_push(key="return_value", value=record.to_dict())


class SyncTableOperator(_TableOperator):
    """Synchronize ``table_label`` (``namespace.table``) if it is initialized; else report init needed.
    A plan job reports what a run would do (outcome ``planned``); a job with ``reinit`` (the table is
    in ``force_reinit``) leaves the table to init.

    :param table_label: ``namespace.table``.
    :param list_task_id: the task that handed over each table's job (its XCom ``jobs``).
    """

    def run_job(self, hook: DapHook, job: TableJob) -> TableResult:
        if job.action is Action.PLAN:
            return hook.run_table_job(job)
        if job.reinit:
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
        return hook.run_table_job(replace(job, action=Action.INIT, reinit=sync.reinit))
