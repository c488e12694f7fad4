"""SyncTableOperator and InitTableOperator: one table's DAP work, each in its own child process."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from cd2.child_protocol import INIT_NEEDED
from cd2.config import ConfigError, matches, parse_config, parse_table_param, split_label
from cd2.hooks.dap import DapHook
from cd2.summary import first_line

OUTCOME_KEY = "outcome"
# The context variable a DAG's map_index_template names ("{{ table_label }}").
TABLE_LABEL = "table_label"


class _TableOperator(BaseOperator):
    """Runs one DAP action for ``table`` and pushes an ``outcome`` XCom whether it succeeds or fails."""

    template_fields: Sequence[str] = ("table", "config")
    ui_color = "#e8eef8"

    def __init__(
        self,
        *,
        table: str,
        config: str | Mapping[str, Any] | None = None,
        dap_conn_id: str = DapHook.default_conn_name,
        postgres_conn_id: str = "cd2_postgres",
        lock_wait_seconds: float = 300.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.table = table
        self.config = config
        self.dap_conn_id = dap_conn_id
        self.postgres_conn_id = postgres_conn_id
        self.lock_wait_seconds = lock_wait_seconds
        self.hook: DapHook | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        context[TABLE_LABEL] = self.table
        try:
            namespace, table = split_label(self.table)
            config = parse_config(self.config)
        except ConfigError as error:
            raise AirflowFailException(str(error)) from None
        self.hook = DapHook(dap_conn_id=self.dap_conn_id, postgres_conn_id=self.postgres_conn_id)
        options = {
            "holder": f"{self.dag_id} {context['run_id']}",
            "lock_wait_seconds": self.lock_wait_seconds,
            "max_active_tables": config.max_active_tables,
        }
        try:
            result = self.run_action(self.hook, namespace, table, options)
        except AirflowSkipException:
            raise
        except BaseException as error:
            message = first_line(str(error)) or type(error).__name__
            self._push_outcome(context, {"state": "failed", "error": message})
            raise
        outcome = {key: result.get(key) for key in _OUTCOME_FIELDS}
        self._push_outcome(context, outcome | {"state": "ok"})
        self.log.info("%s: %s", self.table, outcome)
        return result

    def run_action(
        self, hook: DapHook, namespace: str, table: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        raise NotImplementedError

    def on_kill(self) -> None:
        if self.hook is not None:
            self.hook.kill_child()

    def _push_outcome(self, context: Any, outcome: dict[str, Any]) -> None:
        context["ti"].xcom_push(key=OUTCOME_KEY, value={"table": self.table} | outcome)


_OUTCOME_FIELDS = ("action", "reason", "duration_seconds", "rows", "watermark_before", "watermark_after")


class SyncTableOperator(_TableOperator):
    """Synchronize ``table`` (``namespace.table``) if it is initialized; else return ``init_needed``.

    :param table: ``namespace.table``.
    :param config: the ``cd2_config`` Variable's value (for ``max_active_tables``).
    :param force_reinit: tables to drop and re-initialize instead (``ns.table`` or ``table``, globs).
    :param lock_wait_seconds: how long to wait for another task instance working on the same table.
    """

    template_fields: Sequence[str] = (*_TableOperator.template_fields, "force_reinit")

    def __init__(self, *, force_reinit: Sequence[str] | str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.force_reinit = force_reinit

    def run_action(
        self, hook: DapHook, namespace: str, table: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            force_reinit = parse_table_param(self.force_reinit, "force_reinit")
        except ConfigError as error:
            raise AirflowFailException(str(error)) from None
        if any(matches(pattern, namespace, table) for pattern in force_reinit):
            self.log.info("%s is in force_reinit: no sync, init will drop and re-initialize it", self.table)
            return {"action": INIT_NEEDED, "reason": "force_reinit", "reinit": True}
        return hook.sync_table(namespace, table, **options)


class InitTableOperator(_TableOperator):
    """Initialize ``table`` if its sync said ``init_needed``; otherwise skip itself.

    The gate is here, not in a short-circuit operator: short-circuiting inside a mapped task group skips
    nothing on Airflow 3.2/3.3, while a task skipping itself after reading its own table's result works.

    :param sync_result: this table's sync result (its XCom).
    """

    template_fields: Sequence[str] = (*_TableOperator.template_fields, "sync_result")

    def __init__(self, *, sync_result: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sync_result = sync_result

    def run_action(
        self, hook: DapHook, namespace: str, table: str, options: dict[str, Any]
    ) -> dict[str, Any]:
        sync_result = self.sync_result or {}
        if sync_result.get("action") != INIT_NEEDED:
            raise AirflowSkipException(f"{self.table}: sync brought it up to date; no init needed")
        self.log.info("%s: init needed (%s)", self.table, sync_result.get("reason"))
        return hook.init_table(namespace, table, reinit=bool(sync_result.get("reinit")), **options)
