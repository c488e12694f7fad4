"""Advisory locks in the target database: one table at a time, and at most N tables at once.

Locks live on a dedicated connection whose ``application_name`` names the holder, so a waiter that gives
up can say which run holds the table. PostgreSQL releases them when that connection ends, including when
the process is killed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg

from cd2.dap_child.errors import LockTimeout

logger = logging.getLogger(__name__)

# Two-int4 advisory lock key spaces, so ours never collide with an application's single-bigint locks.
TABLE_LOCK_CLASS = 0x43443254  # "CD2T"
SLOT_LOCK_CLASS = 0x43443253  # "CD2S"
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


async def take_slot(conn: asyncpg.Connection, max_active: int) -> int:
    """Wait for one of ``max_active`` slots shared by all task instances; return its number."""
    announced = False
    while True:
        for slot in range(max_active):
            if await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", SLOT_LOCK_CLASS, slot):
                return slot
        if not announced:
            logger.info("%d tables already being worked on (max_active_tables); waiting", max_active)
            announced = True
        await asyncio.sleep(POLL_SECONDS)


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
