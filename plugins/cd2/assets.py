"""Table assets: each table task that changed its table emits an asset event for it.

The tables are known only at run time, so the table tasks declare one :class:`AssetAlias`
(:data:`TABLES_ALIAS`) and attach each event to the table's asset, named in the postgres provider's URI
convention ``postgres://host:port/database/schema/table`` (:func:`table_asset_uri`). A downstream DAG
schedules on one table with ``schedule=[Asset(table_asset_uri(...))]``, or on every table with
``schedule=[AssetAlias(TABLES_ALIAS)]``.

Policy: an event only when the table changed (initialized, or a sync that wrote rows); a sync that
found nothing new, a failed or skipped task, emits nothing, so downstream work runs only on new data.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, AssetAlias

from cd2.contract import Outcome, TableRef, TableResult

# The default instance's alias; another instance NAME's is ``cd2_replica_NAME_tables`` (cd2.instances).
TABLES_ALIAS = "cd2_replica_tables"


def table_asset_uri(host: str, port: int | None, database: str, label: str) -> str:
    """The asset URI of a replicated table: its PostgreSQL schema is its namespace."""
    ref = TableRef.parse(label)
    return f"postgres://{host}:{port or 5432}/{database}/{ref.namespace}/{ref.name}"


def changed(result: TableResult) -> bool:
    """Whether the task changed its table (the policy above)."""
    return result.outcome is Outcome.INITIALIZED or (result.outcome is Outcome.SYNCED and bool(result.rows))


def asset_extra(result: TableResult) -> dict[str, Any]:
    """The facts a downstream DAG reads from the event (``triggering_asset_events``)."""
    return {
        "action": str(result.outcome),
        "rows": result.rows,
        "watermark": result.watermark_after,
        "schema_version": result.schema_version,
    }


def emit_table_event(context: Any, uri: str, result: TableResult, alias: str = TABLES_ALIAS) -> bool:
    """Attach an event for this table to ``alias`` if the table changed; returns whether it did."""
    if not changed(result):
        return False
    context["outlet_events"][AssetAlias(alias)].add(Asset(uri), extra=asset_extra(result))
    return True
