"""What the target database says about one table: initialized, half-initialized, its watermark."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

from cd2.dap_child.quoting import quote_ident


@dataclass(frozen=True)
class TableState:
    """What ``instructure_dap.table_sync`` and the catalog say about one table."""

    initialized: bool
    table_exists: bool
    watermark: datetime | None = None
    schema_version: int | None = None

    @property
    def half_initialized(self) -> bool:
        """The table exists without a ``table_sync`` row: what an init that died part-way leaves."""
        return self.table_exists and not self.initialized


async def read_table_state(conn: asyncpg.Connection, namespace: str, table: str) -> TableState:
    """Initialized means a ``table_sync`` row exists; never decided from an exception's text."""
    qualified = f"{quote_ident(namespace)}.{quote_ident(table)}"
    table_exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", qualified)
    if not await conn.fetchval("SELECT to_regclass('instructure_dap.table_sync') IS NOT NULL"):
        return TableState(initialized=False, table_exists=table_exists)
    row = await conn.fetchrow(
        'SELECT "timestamp", schema_version FROM instructure_dap.table_sync '
        "WHERE source_namespace = $1 AND source_table = $2",
        namespace,
        table,
    )
    if row is None:
        return TableState(initialized=False, table_exists=table_exists)
    return TableState(True, table_exists, row["timestamp"], row["schema_version"])


def watermark_iso(value: datetime | None) -> str | None:
    """ISO 8601; table_sync holds watermarks as naive UTC."""
    if value is None:
        return None
    return value.isoformat() + "Z" if value.tzinfo is None else value.isoformat()
