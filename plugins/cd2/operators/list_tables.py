"""ListTablesOperator: which tables this run replicates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from cd2.config import ConfigError, parse_config, parse_table_param, select_tables
from cd2.hooks.dap import DapHook, DapPermanentError, DapTransientError, raise_for_try


class ListTablesOperator(BaseOperator):
    """List each configured namespace's tables from the API, filter them, return ``["ns.table", ...]``.

    :param config: the ``cd2_config`` Variable's value (JSON text or object), rendered at run time.
    :param tables: restrict the run to these tables (``ns.table`` or ``table``, globs allowed).
    :param dap_conn_id: the DAP API connection.
    """

    template_fields: Sequence[str] = ("config", "tables")
    ui_color = "#e4f0e8"

    def __init__(
        self,
        *,
        config: str | Mapping[str, Any] | None = None,
        tables: Sequence[str] | str | None = None,
        dap_conn_id: str = DapHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.config = config
        self.tables = tables
        self.dap_conn_id = dap_conn_id

    def execute(self, context: Any) -> list[str]:
        try:
            config = parse_config(self.config)
            requested = parse_table_param(self.tables, "tables")
        except ConfigError as error:
            raise AirflowFailException(str(error)) from None
        try:
            available = DapHook(dap_conn_id=self.dap_conn_id).list_tables(
                list(config.namespaces),
                api_limits=config.api_limits_argv,
                api_limit_window_seconds=config.api_limit_window_seconds,
                rate_limited_wait_seconds=config.rate_limited_wait_seconds,
            )
        except (DapTransientError, DapPermanentError) as error:
            raise_for_try(error, context["ti"].try_number)
        try:
            chosen = select_tables(
                available, include=config.include, exclude=config.exclude, requested=requested
            )
        except ConfigError as error:
            raise AirflowFailException(str(error)) from None
        self.log.info("%d table(s) to replicate: %s", len(chosen), ", ".join(chosen) or "none")
        return chosen
