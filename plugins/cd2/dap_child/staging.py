"""Initialize a table beside its previous copy, then swap the new copy in, in one transaction.

What it patches: nothing global. :func:`staging_connection` gives the client a ``DatabaseConnection``
of its own (the ``staging`` patch of :mod:`cd2.dap_child.patches`) whose module-to-schema mapping sends the namespace's tables to
a staging schema and its ``instructure_dap`` metadata (``table_sync``, ``database_version``) to a second
staging schema, so the client's own ``initialize`` (DDL, download, COPY, ``table_sync`` insert) runs
unchanged, while readers keep querying the previous copy and ``instructure_dap.table_sync`` keeps its
row. :func:`swap_in` then moves the staged tables and enum types into the namespace's schema, replacing
the previous ones by exact quoted name, copies the staged ``table_sync`` row over the live one, saves
and restores dependent views (:mod:`cd2.dap_child.views`), and drops the staging schemas: one
transaction, so readers see either the previous copy or the new one. A failed init leaves the previous
copy and its ``table_sync`` row untouched; the staging schemas are dropped on the next attempt.

How to remove it: if a client version can initialize into a named target and replace it atomically,
call that instead and delete this module and its registry entry. Until then, when upgrading the client,
check that ``DataclassConverter.options.namespaces`` still decides the schema and that ``table_sync`` has
the columns :func:`_write_table_sync` copies (tests/plugins/cd2/dap_child/test_fault_matrix.py covers
it) before adding the version to the registry's verified versions.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass

import asyncpg
from dap.integration.database import DatabaseConnection
from dap.replicator import meta_schema
from dap.replicator.sql_op import get_module_for_namespace

from cd2.contract import TableRef
from cd2.dap_child import history, locks, patches, views
from cd2.dap_child.errors import ReadersHoldTable
from cd2.dap_child.quoting import GRANTEE_SQL, qualified, quote_ident

logger = logging.getLogger(__name__)

STAGING_PREFIX = "cd2_stage_"
LIVE_META_SCHEMA = "instructure_dap"
# How long one try of the swap waits for the live table. A waiting DROP makes every new reader queue
# behind it, so a try gives up soon, lets readers through for a pause, and tries again.
SWAP_TRY_LOCK_TIMEOUT_MS = 2000
SWAP_PAUSE_SECONDS = 3.0


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
    return patches.staged_connection(
        url, {get_module_for_namespace(ref.namespace): stage.data, meta_schema: stage.meta}
    )


async def drop_stage(conn: asyncpg.Connection, stage: Stage) -> None:
    """Remove a stage left by an earlier, failed attempt (only our own two schemas, by exact name)."""
    for schema in (stage.data, stage.meta):
        await conn.execute(f"DROP SCHEMA IF EXISTS {quote_ident(schema)} CASCADE")


async def swap_in(conn: asyncpg.Connection, ref: TableRef, stage: Stage, wait_seconds: float) -> int:
    """Replace ``ref``'s live tables, types and ``table_sync`` row by the staged ones, atomically; the
    number of the previous copy's rows kept (a log table's history, see :mod:`history`).

    The live tables are the table and the lookup tables it references (its "enum or free text"
    columns), dropped in one statement so their foreign keys do not stand in the way; the live types
    are the enum types their columns use. What the previous copy had and the new one has not (a lookup
    table, an enum type of a dropped column) goes with it. A session keeping a transaction open on the
    table or a view of it (an idle BI tool) holds the swap back, never other readers: each try waits
    ``SWAP_TRY_LOCK_TIMEOUT_MS``; after ``wait_seconds`` of tries the swap fails naming the sessions.
    The previous copy's grants, owner and added indexes go to the new copy.
    """
    await locks.shared_ddl(conn, f"CREATE SCHEMA IF NOT EXISTS {quote_ident(ref.namespace)}")
    await _build_added_indexes(conn, ref, stage)
    async with conn.transaction():
        tables = await _names(conn, stage.data, _TABLES)
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
        live_tables, live_types = await _live_family(conn, ref, tables, types)
        kept = 0
        main = qualified(ref.namespace, ref.name)
        if history.keeps_history(ref) and await conn.fetchval("SELECT to_regclass($1)", main):
            kept = await history.keep_previous_rows(conn, main, qualified(stage.data, ref.name))
            logger.info(
                "%s: kept %d row(s) of the previous copy that the API no longer serves", ref.label, kept
            )
        access = await _access(conn, live_tables)
        # SET LOCAL in a savepoint that is released lasts to the end of the transaction: each try sets it,
        # and the moves below go back to the session's own, so they wait for another swap as long as it takes.
        session_lock_timeout = await conn.fetchval("SHOW lock_timeout")
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                async with conn.transaction():  # a savepoint: a try that times out keeps the rows kept
                    await conn.execute(f"SET LOCAL lock_timeout = {SWAP_TRY_LOCK_TIMEOUT_MS}")
                    saved = await views.save_and_drop(conn, ref, live_tables)
                    if live_tables:
                        await conn.execute(f"DROP TABLE {', '.join(live_tables)}")
                    for type_name in live_types:
                        await conn.execute(f"DROP TYPE {type_name}")
                    break
            except asyncpg.LockNotAvailableError:
                if time.monotonic() >= deadline:
                    raise ReadersHoldTable(await _holders(conn, ref, live_tables, wait_seconds)) from None
                await asyncio.sleep(SWAP_PAUSE_SECONDS)
        await conn.execute("SELECT set_config('lock_timeout', $1, true)", session_lock_timeout)
        for type_name in types:
            await conn.execute(
                f"ALTER TYPE {qualified(stage.data, type_name)} SET SCHEMA {quote_ident(ref.namespace)}"
            )
        for table in tables:
            await conn.execute(
                f"ALTER TABLE {qualified(stage.data, table)} SET SCHEMA {quote_ident(ref.namespace)}"
            )
        await _restore_access(conn, ref, access)
        await _write_table_sync(conn, row)
        await views.restore(conn, ref)
        await drop_stage(conn, stage)
    logger.info("%s: the new copy replaced the previous one (%d view(s) kept)", ref.label, len(saved))
    return kept


_TABLES = "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = $1::regnamespace"

# Indexes someone added to the live tables of the new copy's table names ($1: the live schema, $2: the
# stage's), as pg_get_indexdef prints them, and each table's name as it prints it there. Not the client's
# (they back its constraints), nor one of a name the new copy already has.
_ADDED_INDEXES = """
SELECT i.relname AS index_name, t.relname AS table_name, format('%I.%I', n.nspname, t.relname) AS printed,
       pg_get_indexdef(x.indexrelid) AS definition
FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
JOIN pg_namespace n ON n.oid = t.relnamespace
WHERE n.nspname = $1
  AND t.relname IN (SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = $2::regnamespace)
  AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conindid = x.indexrelid AND c.conrelid = x.indrelid)
  AND NOT EXISTS (SELECT FROM pg_class s WHERE s.relname = i.relname AND s.relnamespace = $2::regnamespace)
ORDER BY t.relname, i.relname
"""
# What an index definition may meet on a new copy of another shape: a column dropped or retyped (42...),
# values that no longer fit a unique index or an expression (23..., 22...).
_INDEX_DOES_NOT_FIT = ("42", "23", "22")


async def _build_added_indexes(conn: asyncpg.Connection, ref: TableRef, stage: Stage) -> None:
    """Build on the new copy's tables the indexes someone added to the live tables of the same names (an
    analyst's index on ``canvas.submissions``), before the swap, so readers keep theirs meanwhile. One
    that no longer fits the new copy (its column was dropped) is left out with a warning naming it."""
    async with conn.transaction():
        await conn.execute("SET LOCAL search_path TO pg_catalog")  # names in definitions fully qualified
        added = await conn.fetch(_ADDED_INDEXES, ref.namespace, stage.data)
    built = 0
    for index in added:
        target = qualified(stage.data, index["table_name"])
        definition = index["definition"]
        for on in (" ON ", " ON ONLY "):
            definition = definition.replace(f"{on}{index['printed']} USING ", f"{on}{target} USING ", 1)
        if target not in definition:
            _left_out(ref, index, f"its table is not named as {index['printed']}")
            continue
        try:
            async with conn.transaction():
                await conn.execute("SET LOCAL search_path TO pg_catalog")
                await conn.execute(definition)
        except asyncpg.PostgresError as error:
            if (error.sqlstate or "")[:2] not in _INDEX_DOES_NOT_FIT:
                raise
            _left_out(ref, index, error)
            continue
        built += 1
    if built:
        logger.info("%s: the new copy has the previous one's %d added index(es)", ref.label, built)


def _left_out(ref: TableRef, index: asyncpg.Record, why: object) -> None:
    logger.warning(
        "%s: the index %s of the previous copy is left out of the new one (%s); it was: %s",
        ref.label,
        qualified(ref.namespace, index["index_name"]),
        why,
        index["definition"],
    )


# Who may read the live tables, table- and column-wise, and who owns them: carried over to the new copy,
# which the child's role created and owns (ALTER DEFAULT PRIVILEGES already applied to it on creation).
_ACCESS = f"""
SELECT c.relname, NULL::name AS column_name, pg_get_userbyid(c.relowner) AS owner,
       {GRANTEE_SQL} AS grantee,
       a.privilege_type, a.is_grantable
FROM pg_class c LEFT JOIN LATERAL aclexplode(c.relacl) a ON a.grantee <> c.relowner
WHERE c.oid = ANY($1::regclass[])
UNION ALL
SELECT c.relname, att.attname, pg_get_userbyid(c.relowner),
       {GRANTEE_SQL},
       a.privilege_type, a.is_grantable
FROM pg_class c JOIN pg_attribute att ON att.attrelid = c.oid AND att.attnum > 0 AND NOT att.attisdropped
CROSS JOIN LATERAL aclexplode(att.attacl) a
WHERE c.oid = ANY($1::regclass[]) AND a.grantee <> c.relowner
"""


async def _access(conn: asyncpg.Connection, tables: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch(_ACCESS, tables) if tables else []


async def _restore_access(conn: asyncpg.Connection, ref: TableRef, access: list[asyncpg.Record]) -> None:
    """Give the new copy's tables of the live tables' names the live ones' grants (a column's only where
    the new copy still has the column) and owner: analysts keep their access across a re-init."""
    granted, owners = 0, {}
    for row in access:
        table = qualified(ref.namespace, row["relname"])
        if not await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", table):
            continue  # a lookup table the new copy no longer has
        owners[table] = row["owner"]
        privilege = row["privilege_type"]
        if privilege is None:
            continue
        if row["column_name"] is not None:
            if not await conn.fetchval(_HAS_COLUMN, table, row["column_name"]):
                continue
            privilege = f"{privilege} ({quote_ident(row['column_name'])})"
        option = " WITH GRANT OPTION" if row["is_grantable"] else ""
        await conn.execute(f"GRANT {privilege} ON {table} TO {row['grantee']}{option}")
        granted += 1
    for table, owner in owners.items():
        if owner == await conn.fetchval(
            "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = $1::regclass", table
        ):
            continue
        try:
            async with conn.transaction():
                await conn.execute(f"ALTER TABLE {table} OWNER TO {quote_ident(owner)}")
        except asyncpg.InsufficientPrivilegeError as error:
            logger.warning(
                "%s: %s stays owned by the replicating role, not %s: %s", ref.label, table, owner, error
            )
    if granted:
        logger.info("%s: the new copy has the previous one's %d grant(s)", ref.label, granted)


_HAS_COLUMN = (
    "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND attnum > 0 "
    "AND NOT attisdropped)"
)


_HOLDERS = """
SELECT DISTINCT a.pid, a.usename, a.application_name, a.state, a.xact_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.granted AND l.locktype = 'relation' AND l.relation = ANY($1::oid[]) AND a.pid <> pg_backend_pid()
ORDER BY a.xact_start
"""


async def _holders(conn: asyncpg.Connection, ref: TableRef, tables: list[str], waited: float) -> str:
    """What to tell a person about the sessions holding ``tables`` or their views."""
    oids = [await conn.fetchval("SELECT $1::regclass::oid", t) for t in tables]
    oids += [oid for oid, _ in await views.dependents(conn, oids)]
    sessions = [
        f"pid {r['pid']} (user {r['usename']}, application {r['application_name'] or '-'}, {r['state']}"
        + (f", transaction open since {r['xact_start']:%Y-%m-%d %H:%M:%S %Z})" if r["xact_start"] else ")")
        for r in await conn.fetch(_HOLDERS, oids)
    ]
    return (
        f"the new copy of {ref.label} is ready, but for {waited:g} s other sessions kept a transaction open "
        f"on the table or its views: {'; '.join(sessions) or 'none left by now'}"
    )


# The live table's own lookup tables (its foreign keys' targets in its schema) and the enum types its
# and their columns use, as qualified names.
_LOOKUPS = """
SELECT DISTINCT c.confrelid::regclass::text FROM pg_constraint c
WHERE c.conrelid = $1::regclass AND c.contype = 'f'
  AND (SELECT relnamespace FROM pg_class WHERE oid = c.confrelid) = (SELECT relnamespace FROM pg_class WHERE oid = c.conrelid)
"""
_ENUM_TYPES = """
SELECT DISTINCT a.atttypid::regtype::text FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = ANY($1::regclass[]) AND t.typtype = 'e' AND t.typnamespace = $2::regnamespace
  AND a.attnum > 0 AND NOT a.attisdropped
"""


async def _live_family(
    conn: asyncpg.Connection, ref: TableRef, staged_tables: list[str], staged_types: list[str]
) -> tuple[list[str], list[str]]:
    """The live tables and enum types the swap replaces (qualified): the table's family, and whatever
    exists under a staged name (a leftover of an init that died part-way)."""
    await conn.execute("SET LOCAL search_path TO pg_catalog")
    schema = quote_ident(ref.namespace)
    # Names as PostgreSQL prints them (regclass, regtype), so that each one compares equal to itself.
    found = [
        await conn.fetchval("SELECT to_regclass($1)::text", qualified(ref.namespace, t))
        for t in staged_tables
    ]
    tables = [t for t in found if t]
    main = await conn.fetchval("SELECT to_regclass($1)::text", qualified(ref.namespace, ref.name))
    if main is not None:
        tables += [t for t in [r[0] for r in await conn.fetch(_LOOKUPS, main)] if t not in tables]
    types = [r[0] for r in await conn.fetch(_ENUM_TYPES, tables, schema)] if tables else []
    for name in staged_types:
        leftover = await conn.fetchval("SELECT to_regtype($1)::text", qualified(ref.namespace, name))
        if leftover and leftover not in types:
            types.append(leftover)
    await conn.execute("RESET search_path")
    return tables, types


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
