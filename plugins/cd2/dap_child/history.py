"""Log tables keep their history: the rows the API no longer serves stay in the replica.

Instructure serves ``canvas_logs`` for 30 days: a snapshot holds only the last 30 days, while a replica
that synced all along holds every row since it started, rows no other copy has. So a re-init of an
append-only table (:func:`keeps_history`) carries over, inside the swap's transaction, every row of the
previous copy whose primary key the new snapshot does not have (:func:`keep_previous_rows`), in the new
shape: a column added since is NULL, a dropped one is gone, a widened or re-typed one is cast, an "enum
or free text" column is mapped by its text into the new copy's lookup table.

A school bounds what it keeps with ``cd2_config`` ``keep_days``: after each sync :func:`prune` deletes the
rows whose ``timestamp`` is more than that many days older than the table's watermark, in small batches,
each its own statement (a ``DELETE`` blocks no reader), through an index on ``timestamp`` it creates
concurrently the first time.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from cd2.contract import APPEND_ONLY_NAMESPACES, TIME_COLUMN, TableRef
from cd2.dap_child.errors import KeepDaysUnsupported
from cd2.dap_child.quoting import qualified, quote_ident

logger = logging.getLogger(__name__)

PRUNE_BATCH_ROWS = 10_000


def keeps_history(ref: TableRef) -> bool:
    """Whether a re-init of ``ref`` keeps the previous copy's rows the new snapshot no longer has."""
    return ref.namespace in APPEND_ONLY_NAMESPACES


@dataclass(frozen=True)
class _Column:
    name: str
    type: str  # regtype, schema-qualified
    is_enum: bool
    lookup: str | None  # the lookup table an "enum or free text" column's ids point into


_COLUMNS = """
SELECT a.attname, a.atttypid::regtype::text AS type, t.typtype = 'e' AS is_enum,
       (SELECT c.confrelid::regclass::text FROM pg_constraint c
        WHERE c.conrelid = a.attrelid AND c.contype = 'f' AND c.conkey = ARRAY[a.attnum]) AS lookup
FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_PRIMARY_KEY = """
SELECT a.attname FROM pg_index i
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = $1::regclass AND i.indisprimary
ORDER BY array_position(i.indkey, a.attnum)
"""


async def _columns(conn: asyncpg.Connection, table: str) -> dict[str, _Column]:
    return {r["attname"]: _Column(*r) for r in await conn.fetch(_COLUMNS, table)}


async def keep_previous_rows(conn: asyncpg.Connection, live: str, staged: str) -> int:
    """Copy into ``staged`` (the new copy) every row of ``live`` (the previous one) whose primary key it
    lacks, in the new shape; the number of rows copied. Run inside the swap's transaction."""
    await conn.execute("SET LOCAL search_path TO pg_catalog")  # every type name comes out qualified
    old, new = await _columns(conn, live), await _columns(conn, staged)
    key = [r["attname"] for r in await conn.fetch(_PRIMARY_KEY, staged)]
    missing_key = [name for name in key if name not in old]
    if missing_key:
        raise RuntimeError(
            f"the previous copy {live} lacks the new primary key column(s) {missing_key}: its rows cannot be "
            "matched to the new copy's"
        )
    required = await conn.fetch(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 AND attnotnull "
        "AND NOT attisdropped",
        staged,
    )
    unfilled = [r["attname"] for r in required if r["attname"] not in old]
    absent = " AND ".join(f"s.{quote_ident(k)} = l.{quote_ident(k)}" for k in key)
    where = f"NOT EXISTS (SELECT 1 FROM {staged} s WHERE {absent})"
    if unfilled:
        count = await conn.fetchval(f"SELECT count(*) FROM {live} l WHERE {where}")
        if count:
            raise RuntimeError(
                f"the new copy makes column(s) {unfilled} required, which the previous copy's {count} rows "
                "that the API no longer serves do not have: they cannot be kept"
            )
    shared = [name for name in new if name in old]
    for name in shared:
        if new[name].lookup:
            await conn.execute(
                f"INSERT INTO {new[name].lookup} (value) SELECT DISTINCT v FROM "
                f"(SELECT {_text(old[name], 'l')} AS v FROM {live} l WHERE {where}) AS texts "
                "WHERE v IS NOT NULL ON CONFLICT (value) DO NOTHING"
            )
    columns = ", ".join(quote_ident(name) for name in shared)
    values = ", ".join(_value(old[name], new[name]) for name in shared)
    status = await conn.execute(
        f"INSERT INTO {staged} ({columns}) SELECT {values} FROM {live} l WHERE {where}"
    )
    kept = int(status.rsplit(" ", 1)[-1])
    await conn.execute("RESET search_path")
    return kept


def _text(column: _Column, alias: str) -> str:
    """A previous copy's column as text (a lookup id as the text it stands for)."""
    if column.lookup:
        return f"(SELECT k.value FROM {column.lookup} k WHERE k.id = {alias}.{quote_ident(column.name)})"
    return f"{alias}.{quote_ident(column.name)}::text"


def _value(old: _Column, new: _Column) -> str:
    """The previous copy's column in the new copy's shape."""
    if new.lookup:
        return f"(SELECT k.id FROM {new.lookup} k WHERE k.value = {_text(old, 'l')})"
    if not old.lookup and not old.is_enum and not new.is_enum and old.type == new.type:
        return f"l.{quote_ident(old.name)}"
    return f"({_text(old, 'l')})::{new.type}"


async def _has_time_column(conn: asyncpg.Connection, table: str) -> bool:
    return bool(
        await conn.fetchval(
            "SELECT true FROM pg_attribute WHERE attrelid = $1::regclass AND attname = $2 AND NOT attisdropped",
            table,
            TIME_COLUMN,
        )
    )


async def rows_older_than(conn: asyncpg.Connection, ref: TableRef, moment: datetime) -> int | None:
    """How many of ``ref``'s rows are older than ``moment`` (what a re-init would keep: a snapshot holds
    only the API's retention); None when the table has no time column."""
    table = qualified(ref.namespace, ref.name)
    if not await _has_time_column(conn, table):
        return None
    return await conn.fetchval(
        f"SELECT count(*) FROM {table} WHERE {quote_ident(TIME_COLUMN)} < $1", _naive_utc(moment)
    )


def _naive_utc(moment: datetime) -> datetime:
    """``moment`` as the client writes times: naive UTC (asyncpg refuses an aware one for the column)."""
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


def prune_index_name(ref: TableRef) -> str:
    """The index :func:`prune` creates on a log table's time column (within PostgreSQL's 63 bytes)."""
    return f"cd2_keep_{hashlib.sha256(ref.label.encode()).hexdigest()[:12]}"


async def prune(
    conn: asyncpg.Connection, ref: TableRef, keep_days: float, watermark: datetime
) -> tuple[int, float]:
    """Delete ``ref``'s rows whose ``timestamp`` is older than ``watermark`` minus ``keep_days``, in
    batches; the rows deleted and the longest batch's seconds. ``conn`` is in autocommit."""
    table = qualified(ref.namespace, ref.name)
    if not await _has_time_column(conn, table):
        raise KeepDaysUnsupported(
            f"cd2_config 'keep_days' names {ref.label}, which has no {TIME_COLUMN!r} column to tell a row's age"
        )
    await conn.execute(
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {quote_ident(prune_index_name(ref))} "
        f"ON {table} ({quote_ident(TIME_COLUMN)})"
    )
    bound = _naive_utc(watermark) - timedelta(days=keep_days)
    deleted, longest = 0, 0.0
    while True:
        started = time.monotonic()
        status = await conn.execute(
            f"DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} "
            f"WHERE {quote_ident(TIME_COLUMN)} < $1 LIMIT {PRUNE_BATCH_ROWS}))",
            bound,
        )
        longest = max(longest, time.monotonic() - started)
        batch = int(status.rsplit(" ", 1)[-1])
        deleted += batch
        if batch < PRUNE_BATCH_ROWS:
            break
    if deleted:
        logger.info(
            "%s: pruned %d row(s) older than %s (keep_days %g)",
            ref.label,
            deleted,
            bound.isoformat(),
            keep_days,
        )
    return deleted, longest
