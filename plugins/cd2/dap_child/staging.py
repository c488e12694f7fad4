"""Initialize a table beside its previous copy, then swap the new copy in, in one transaction.

What it patches: nothing global. :func:`staging_connection` gives the client (instructure-dap-client
2.3.1) a ``DatabaseConnection`` of its own whose module-to-schema mapping sends the namespace's tables to
a staging schema and its ``instructure_dap`` metadata (``table_sync``, ``database_version``) to a second
staging schema, so the client's own ``initialize`` (DDL, download, COPY, ``table_sync`` insert) runs
unchanged, while readers keep querying the previous copy and ``instructure_dap.table_sync`` keeps its
row. :func:`swap_in` then moves the staged tables and enum types into the namespace's schema, replacing
the previous ones by exact quoted name, copies the staged ``table_sync`` row over the live one, saves
and restores dependent views (:mod:`cd2.dap_child.views`), and drops the staging schemas: one
transaction, so readers see either the previous copy or the new one. A failed init leaves the previous
copy and its ``table_sync`` row untouched; the staging schemas are dropped on the next attempt.

How to remove it: if a client version can initialize into a named target and replace it atomically,
call that instead and delete this module. Until then, when upgrading the client, check that
``DataclassConverter.options.namespaces`` still decides the schema and add the version to
``VERIFIED_CLIENT_VERSIONS`` (tests/plugins/cd2/dap_child/test_fault_matrix.py covers it).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass

import asyncpg
from dap.integration.database import DatabaseConnection
from dap.replicator import meta_schema
from dap.replicator.sql_op import get_module_for_namespace

from cd2.contract import TableRef
from cd2.dap_child import locks, views
from cd2.dap_child.client_version import CLIENT_DISTRIBUTION, installed_version
from cd2.dap_child.quoting import qualified, quote_ident

logger = logging.getLogger(__name__)

VERIFIED_CLIENT_VERSIONS = frozenset({"2.3.1"})
STAGING_PREFIX = "cd2_stage_"
LIVE_META_SCHEMA = "instructure_dap"


class StagingUnsupported(RuntimeError):
    """The installed client is not a version whose schema mapping this module was verified against."""


@dataclass(frozen=True)
class Stage:
    """The two staging schemas of one table (named from a digest of its label, so one per table)."""

    data: str
    meta: str

    @classmethod
    def of(cls, ref: TableRef) -> Stage:
        digest = hashlib.sha256(ref.label.encode()).hexdigest()[:16]
        return cls(f"{STAGING_PREFIX}{digest}", f"{STAGING_PREFIX}{digest}_meta")


def staging_connection(url: str, ref: TableRef, stage: Stage) -> DatabaseConnection:
    """The client's connection for ``url``, mapping ``ref``'s namespace and the metadata to ``stage``."""
    version = installed_version()
    if version not in VERIFIED_CLIENT_VERSIONS:
        raise StagingUnsupported(
            f"{CLIENT_DISTRIBUTION} {version} is not verified for staged initialization "
            f"(verified: {', '.join(sorted(VERIFIED_CLIENT_VERSIONS))})"
        )
    connection = DatabaseConnection(url)
    generator = connection.connection.generator
    mapping = generator.converter.options.namespaces.dictionary
    mapping[get_module_for_namespace(ref.namespace)] = stage.data
    mapping[meta_schema] = stage.meta
    generator.options.namespaces = dict(mapping)
    return connection


async def drop_stage(conn: asyncpg.Connection, stage: Stage) -> None:
    """Remove a stage left by an earlier, failed attempt (only our own two schemas, by exact name)."""
    for schema in (stage.data, stage.meta):
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


async def swap_in(conn: asyncpg.Connection, ref: TableRef, stage: Stage) -> list[str]:
    """Replace ``ref``'s live tables, types and ``table_sync`` row by the staged ones, atomically.

    Returns the views that could not be recreated (kept in :data:`views.SAVED_VIEWS` for a person).
    """
    await locks.shared_ddl(conn, f"CREATE SCHEMA IF NOT EXISTS {quote_ident(ref.namespace)}")
    async with conn.transaction():
        tables = await _names(
            conn,
            stage.data,
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = $1::regnamespace",
        )
        types = await _names(
            conn,
            stage.data,
            "SELECT typname FROM pg_type WHERE typtype = 'e' AND typnamespace = $1::regnamespace",
        )
        if ref.name not in tables:
            raise RuntimeError(
                f"the staged initialization of {ref.label} left no table {stage.data}.{ref.name}"
            )
        row = await conn.fetchrow(
            f"SELECT * FROM {qualified(stage.meta, 'table_sync')} WHERE source_namespace = $1 AND source_table = $2",
            ref.namespace,
            ref.name,
        )
        if row is None:
            raise RuntimeError(f"the staged initialization of {ref.label} wrote no table_sync row")
        live = [
            t for t in tables if await conn.fetchval("SELECT to_regclass($1)", qualified(ref.namespace, t))
        ]
        saved = await views.save_and_drop(conn, ref, [qualified(ref.namespace, t) for t in live])
        for table in live:
            await conn.execute(f"DROP TABLE {qualified(ref.namespace, table)}")
        for type_name in types:
            if await conn.fetchval("SELECT to_regtype($1)", qualified(ref.namespace, type_name)):
                await conn.execute(f"DROP TYPE {qualified(ref.namespace, type_name)}")
            await conn.execute(
                f"ALTER TYPE {qualified(stage.data, type_name)} SET SCHEMA {quote_ident(ref.namespace)}"
            )
        for table in tables:
            await conn.execute(
                f"ALTER TABLE {qualified(stage.data, table)} SET SCHEMA {quote_ident(ref.namespace)}"
            )
        await _write_table_sync(conn, row)
        needing = await views.restore(conn, ref)
        await drop_stage(conn, stage)
    logger.info("%s: the new copy replaced the previous one (%d view(s) kept)", ref.label, len(saved))
    return needing


async def _names(conn: asyncpg.Connection, schema: str, query: str) -> list[str]:
    if not await conn.fetchval("SELECT to_regnamespace($1) IS NOT NULL", quote_ident(schema)):
        return []
    return [r[0] for r in await conn.fetch(query, quote_ident(schema))]


async def _write_table_sync(conn: asyncpg.Connection, row: asyncpg.Record) -> None:
    """Copy the staged row into the live ``instructure_dap.table_sync`` (update, or insert if new)."""
    columns = (
        "timestamp",
        "schema_version",
        "target_schema",
        "target_table",
        "schema_description_format",
        "schema_description",
    )
    values = [row[c] for c in columns]
    live = qualified(LIVE_META_SCHEMA, "table_sync")
    assignments = ", ".join(f"{quote_ident(c)} = ${i}" for i, c in enumerate(columns, start=3))
    status = await conn.execute(
        f"UPDATE {live} SET {assignments} WHERE source_namespace = $1 AND source_table = $2",
        row["source_namespace"],
        row["source_table"],
        *values,
    )
    if status == "UPDATE 0":
        names = ", ".join(quote_ident(c) for c in ("source_namespace", "source_table", *columns))
        placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 3))
        await conn.execute(
            f"INSERT INTO {live} ({names}) VALUES ({placeholders})",
            row["source_namespace"],
            row["source_table"],
            *values,
        )
