"""Advisory locks in the target database: one table at a time, and one schema change at a time.

Locks live on a dedicated connection whose ``application_name`` names the holder, so a waiter that gives
up can say which run holds the table. PostgreSQL releases them when that connection ends, including when
the process is killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg

from cd2.dap_child.errors import LockTimeout

logger = logging.getLogger(__name__)

# Two-int4 advisory lock key spaces, so ours never collide with an application's single-bigint locks.
TABLE_LOCK_CLASS = 0x43443254  # "CD2T"
# Shared-schema DDL: concurrent ``CREATE ... IF NOT EXISTS`` of one object fail on the catalog's unique
# index when the first creation is not committed yet.
SCHEMA_LOCK_CLASS = 0x4344324D  # "CD2M"
POLL_SECONDS = 1.0
# PostgreSQL truncates application_name to 63 bytes.
APPLICATION_NAME_LIMIT = 63


async def connect_as(url: str, holder: str) -> asyncpg.Connection:
    """A connection to the DAP client's ``url`` that identifies ``holder`` to other sessions."""
    name = holder.encode()[:APPLICATION_NAME_LIMIT].decode(errors="ignore")
    # The client's ``?ssl=`` is not asyncpg's DSN syntax (which would send it as a server setting).
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    ssl = query.pop("ssl", [None])[-1]
    dsn = urlunsplit(parts._replace(query=urlencode(query, doseq=True)))
    return await asyncpg.connect(dsn, ssl=ssl, server_settings={"application_name": name})


async def lock_table(conn: asyncpg.Connection, label: str, wait_seconds: float) -> None:
    """Take table ``label``'s lock; after ``wait_seconds`` raise :class:`LockTimeout` naming the holder."""
    deadline = time.monotonic() + wait_seconds
    announced = False
    while not await conn.fetchval("SELECT pg_try_advisory_lock($1, hashtext($2))", TABLE_LOCK_CLASS, label):
        if time.monotonic() >= deadline:
            holder = await table_lock_holder(conn, label)
            raise LockTimeout(
                f"{label} is locked by {holder or 'another session'}; gave up after {wait_seconds:g} s"
            )
        if not announced:
            logger.info("%s is being worked on by %s; waiting", label, await table_lock_holder(conn, label))
            announced = True
        await asyncio.sleep(POLL_SECONDS)


async def table_lock_holder(conn: asyncpg.Connection, label: str) -> str | None:
    """The ``application_name`` of the session holding table ``label``'s lock, if any."""
    return await conn.fetchval(
        """
        SELECT a.application_name
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.classid::bigint = $1 AND l.objid::bigint = hashtext($2)::bigint & 4294967295
        """,
        TABLE_LOCK_CLASS,
        label,
    )


async def table_lock_holding(conn: asyncpg.Connection, label: str) -> tuple[str | None, datetime | None]:
    """Who holds table ``label``'s lock (``application_name``) and since when (its session's start)."""
    row = await conn.fetchrow(
        """
        SELECT a.application_name, a.backend_start
        FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.classid::bigint = $1 AND l.objid::bigint = hashtext($2)::bigint & 4294967295
        """,
        TABLE_LOCK_CLASS,
        label,
    )
    return (row["application_name"], row["backend_start"]) if row else (None, None)


@contextlib.asynccontextmanager
async def schema_lock(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """Hold the lock that serializes DDL on shared schemas (the client's meta schema, the product's)."""
    await conn.execute("SELECT pg_advisory_lock($1, 0)", SCHEMA_LOCK_CLASS)
    try:
        yield
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1, 0)", SCHEMA_LOCK_CLASS)


async def shared_ddl(conn: asyncpg.Connection, statements: str) -> None:
    """Run ``CREATE ... IF NOT EXISTS`` ``statements`` on shared schemas one session at a time, committed
    before the lock is let go (inside a caller's transaction the next session would still collide)."""
    if conn.is_in_transaction():
        raise RuntimeError("shared DDL must be committed before its lock is released: not in a transaction")
    async with schema_lock(conn):
        await conn.execute(statements)
