"""The status page's first reader: the target database's ``instructure_dap.table_sync`` and each
table's row count (and a log table's oldest row)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection

from cd2.connection_string import ssl_mode_from_extra
from cd2.contract import APPEND_ONLY_NAMESPACES, TIME_COLUMN, TableRef
from cd2.hooks.dap import DapHook

# Above this many rows (the planner's estimate) a table's count is the estimate: count(*) reads the table.
EXACT_COUNT_LIMIT = 1_000_000
COUNT_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class ReplicaTable:
    """A table's ``table_sync`` row and its row count (``rows_estimated``: the planner's estimate);
    ``oldest_row``: a log table's oldest ``timestamp`` (how far back its kept history reaches)."""

    table: str
    watermark: datetime
    schema_version: int
    rows: int | None
    rows_estimated: bool = False
    oldest_row: datetime | None = None


def read_replica(conn: PgConnection) -> dict[str, ReplicaTable]:
    """Every ``table_sync`` row with its table's row count (and a log table's oldest row), from an
    autocommit psycopg2 connection.

    A count that times out (``COUNT_TIMEOUT_MS``) is left unknown rather than failing the page.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('instructure_dap.table_sync') IS NOT NULL")
        if not cur.fetchone()[0]:
            return {}
        cur.execute(
            """
            SELECT s.source_namespace, s.source_table, s.timestamp, s.schema_version,
                   coalesce(s.target_schema, 'public'), s.target_table, c.reltuples
            FROM instructure_dap.table_sync s
            LEFT JOIN pg_namespace n ON n.nspname = coalesce(s.target_schema, 'public')
            LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.target_table
                AND c.relkind IN ('r', 'p')
            ORDER BY 1, 2
            """
        )
        rows = cur.fetchall()
        cur.execute("SET statement_timeout = %s", (COUNT_TIMEOUT_MS,))
        found = {}
        for namespace, table, watermark, version, schema, target, estimate in rows:
            count, estimated = None, False
            if estimate is not None and estimate >= EXACT_COUNT_LIMIT:
                count, estimated = int(estimate), True
            elif estimate is not None:
                try:
                    cur.execute(
                        sql.SQL("SELECT count(*) FROM {}.{}").format(
                            sql.Identifier(schema), sql.Identifier(target)
                        )
                    )
                    count = cur.fetchone()[0]
                except psycopg2.errors.QueryCanceled:
                    pass
            oldest = None
            if estimate is not None and namespace in APPEND_ONLY_NAMESPACES:
                oldest = _oldest_row(cur, schema, target, big=estimated)
            label = TableRef(namespace, table).label
            found[label] = ReplicaTable(label, _utc(watermark), version, count, estimated, oldest)
    return found


# Whether the table has the time column, and whether a valid index leads with it (keep_days' does).
_TIME_COLUMN = """
SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = a.attrelid AND i.indkey[0] = a.attnum AND i.indisvalid)
FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attname = %s AND NOT a.attisdropped
"""


def _oldest_row(cur: Any, schema: str, table: str, *, big: bool) -> datetime | None:
    """The table's smallest ``TIME_COLUMN``; None when it has none, is empty, the query times out, or
    it is ``big`` (over ``EXACT_COUNT_LIMIT``) with no index leading with the column: like count(*),
    min() would then read the whole table on every page load."""
    cur.execute(_TIME_COLUMN, (sql.Identifier(schema, table).as_string(cur), TIME_COLUMN))
    found = cur.fetchone()
    if found is None or (big and not found[0]):
        return None
    try:
        cur.execute(
            sql.SQL("SELECT min({}) FROM {}.{}").format(
                sql.Identifier(TIME_COLUMN), sql.Identifier(schema), sql.Identifier(table)
            )
        )
    except psycopg2.errors.QueryCanceled:
        return None
    oldest = cur.fetchone()[0]
    return _utc(oldest) if oldest is not None else None


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # the client writes naive UTC


def connect_replica(conn_id: str | None = None) -> PgConnection:
    """An autocommit psycopg2 connection to the ``cd2_postgres`` connection's database."""
    pg = DapHook.get_connection(conn_id or DapHook.default_postgres_conn_name)
    options: dict[str, Any] = {}
    if mode := ssl_mode_from_extra(pg.extra_dejson):
        options["sslmode"] = mode
    conn = psycopg2.connect(
        host=pg.host,
        port=pg.port or 5432,
        user=pg.login or None,
        password=pg.password or None,
        dbname=pg.schema,
        connect_timeout=10,
        application_name="cd2_status_page",
        **options,
    )
    conn.autocommit = True
    return conn
