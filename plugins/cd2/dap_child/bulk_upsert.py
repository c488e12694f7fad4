"""Write a sync's upserts and deletes with one COPY and one statement per batch, not one statement per row.

What it replaces (the ``bulk_upsert`` patch of :mod:`cd2.dap_child.patches`; instructure-dap-client vendors
pysqlsync): ``PostgreSQLContext._upsert_rows`` and ``PostgreSQLContext._delete_rows``
in ``pysqlsync.dialect.postgresql.connection``, the engine-specific hooks behind pysqlsync's
``upsert_rows`` / ``delete_rows``. The client's sync (``SqlOpSync.upsert_rows``) calls them once per
100k-row batch; stock, each runs asyncpg ``executemany`` of a one-row ``INSERT ... ON CONFLICT DO
UPDATE`` or ``DELETE ... WHERE key = $1``: one statement execution per changed row, which bounds a sync
at a fifth of an init's speed once the reader is fast (``accelerated_reader``).

The replacement keeps everything but the round trips: the records still come from pysqlsync's own
``_generate_records`` (the client's parser, types, value and enum-lookup transformers), and

- upsert: the batch is COPYed (as pysqlsync's PostgreSQL ``_insert_rows`` does) into a temporary table
  made ``AS SELECT <columns> FROM <table> WITH NO DATA`` (the same column types), then one
  ``INSERT INTO <table> (<columns>) SELECT <columns> FROM <stage> ORDER BY <key> ON CONFLICT (<key>) DO
  UPDATE SET`` over pysqlsync's own list of value columns (so a value column the file lacks is reset
  exactly as the stock statement resets it; key order walks the primary key's index once instead of
  probing it at random, see docs/design.md), then the stage is dropped. A key twice in one batch keeps
  its last record, as ``executemany``'s last statement would (condensed output holds each key once, so
  this is a guard);
- delete: the transformed keys go as one array, ``DELETE FROM <table> WHERE <key> = ANY($1)``.

Both statements fail as pysqlsync's do (``QueryException`` naming the statement, the driver's error as
its cause); the runner's error classification and the sync's recovery (watermark moved only after the
last object) are unchanged. Inserts, the init path and every other statement stay the client's.

It is meant for the DAP child process only. It is on by default, ``CD2_BULK_UPSERT=0`` (or
``false``/``no``/``off``) restores the stock statements.

How to remove it: once the client (pysqlsync) writes upserts and deletes set-based, delete this module
and its registry entry. Until then, when upgrading the client, run
tests/plugins/cd2/dap_child/test_bulk_upsert.py and the stock-vs-accelerated equivalence tests against
the new version before adding it to the registry's verified versions.
"""

from __future__ import annotations

from typing import Any

from cd2.dap_child.quoting import quote_ident

STAGE_NAME = "cd2_upsert_stage"
STAGE_TABLE = quote_ident(STAGE_NAME)


def last_record_per_key(batch: list[tuple], key_positions: list[int]) -> list[tuple]:
    """``batch`` without earlier records of a key that appears again later (order otherwise kept)."""
    if len(key_positions) == 1:
        position = key_positions[0]
        keys = [record[position] for record in batch]
    else:
        keys = [tuple(record[position] for position in key_positions) for record in batch]
    if len(set(keys)) == len(keys):
        return batch
    last = {key: index for index, key in enumerate(keys)}
    return [record for index, record in enumerate(batch) if last[keys[index]] == index]


def upsert_statement(table: Any, column_list: str) -> str:
    """``INSERT ... SELECT`` of ``column_list`` from the stage with pysqlsync's own conflict clause."""
    keys = ", ".join(str(key) for key in table.primary_key)
    value_columns = table.get_value_columns()
    if value_columns:
        assignments = ", ".join(f"{column.name} = EXCLUDED.{column.name}" for column in value_columns)
        conflict = f"ON CONFLICT ({keys}) DO UPDATE SET {assignments}"
    else:
        conflict = f"ON CONFLICT ({keys}) DO NOTHING"
    return f"INSERT INTO {table.name} ({column_list}) SELECT {column_list} FROM {STAGE_TABLE} ORDER BY {keys} {conflict}"


async def _run(context: Any, statement: str, *args: Any) -> None:
    """One statement on the context's asyncpg connection, failing as pysqlsync's ``execute`` fails."""
    from pysqlsync.base import QueryException

    try:
        await context.native_connection.execute(statement, *args)
    except Exception as error:
        raise QueryException(statement) from error


async def upsert_rows(
    self: Any,
    table: Any,
    source: Any,
    *,
    field_types: tuple[type, ...],
    field_names: tuple[str, ...] | None = None,
) -> None:
    """Replacement for ``PostgreSQLContext._upsert_rows``: COPY into a stage, one ``INSERT ... ON CONFLICT``."""
    records = await self._generate_records(table, source, field_types=field_types, field_names=field_names)
    order = tuple(name for name in field_names if name) if field_names else None
    columns = table.get_columns(order)
    names = [str(column.name.local_id) for column in columns]
    key_positions = [index for index, column in enumerate(columns) if column.name in table.primary_key]
    column_list = ", ".join(str(column.name) for column in columns)
    create_stage = (
        f"CREATE TEMPORARY TABLE {STAGE_TABLE} AS SELECT {column_list} FROM {table.name} WITH NO DATA"
    )
    upsert = upsert_statement(table, column_list)
    async for batch in records.batches():
        await _run(self, f"DROP TABLE IF EXISTS pg_temp.{STAGE_TABLE}")
        await _run(self, create_stage)
        await self.native_connection.copy_records_to_table(
            STAGE_NAME, columns=names, records=last_record_per_key(batch, key_positions)
        )
        await _run(self, upsert)
        await _run(self, f"DROP TABLE pg_temp.{STAGE_TABLE}")


async def delete_rows(self: Any, table: Any, key_type: type, key_values: Any) -> None:
    """Replacement for ``PostgreSQLContext._delete_rows``: one ``DELETE ... WHERE key = ANY($1)``."""
    column = table.get_primary_column()
    transformer = self.connection.generator.get_value_transformer(column, key_type)
    keys = [transformer(key) for key in key_values] if transformer is not None else list(key_values)
    if keys:
        await _run(self, f"DELETE FROM {table.name} WHERE {column.name} = ANY($1)", keys)
