"""Run one DAP client action (list tables, sync one table, init one table) and report one JSON result.

Secrets come from the environment (``DAP_CLIENT_ID``, ``DAP_CLIENT_SECRET``, ``CD2_DATABASE_URL``);
the arguments carry nothing secret. Log lines go to stderr; the result goes to the file descriptor named
by ``CD2_RESULT_FD`` (stdout when unset).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from dap.api import DAPClient
from dap.dap_error import OutOfRangeError, SnapshotRequiredError
from dap.dap_types import Credentials
from dap.integration.database import DatabaseConnection
from dap.replicator.sql import SQLDrop, SQLReplicator

from cd2 import child_protocol as protocol
from cd2.dap_child import locks
from cd2.dap_child.errors import DapEnvironmentError, classify

logger = logging.getLogger("cd2.dap_child")
PARENT_POLL_SECONDS = 2.0


@dataclass(frozen=True)
class TableState:
    """What ``instructure_dap.table_sync`` and the catalog say about one table."""

    initialized: bool
    table_exists: bool
    watermark: datetime | None = None
    schema_version: int | None = None


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


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


class RowCounter(logging.Handler):
    """Picks the client's own "Inserted/Upserted N records" counts off its log, which costs nothing."""

    PATTERN = re.compile(r"^(?:Inserted|Upserted) (\d+) records")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.rows: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        match = self.PATTERN.match(record.getMessage())
        if match:
            self.rows = (self.rows or 0) + int(match.group(1))


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise DapEnvironmentError(f"environment variable {name} is not set")
    return value


def _client() -> DAPClient:
    credentials = Credentials.create(
        client_id=_env(protocol.ENV_CLIENT_ID), client_secret=_env(protocol.ENV_CLIENT_SECRET)
    )
    return DAPClient(os.environ.get(protocol.ENV_API_URL) or None, credentials, tracking=False)


def _iso(value: datetime | None) -> str | None:
    """ISO 8601; table_sync holds watermarks as naive UTC."""
    if value is None:
        return None
    return value.isoformat() + "Z" if value.tzinfo is None else value.isoformat()


async def list_tables(namespaces: list[str]) -> dict[str, Any]:
    async with _client() as session:
        tables = {namespace: sorted(await session.get_tables(namespace)) for namespace in namespaces}
    return {"action": protocol.LISTED, "tables": tables}


async def replicate_table(args: argparse.Namespace) -> dict[str, Any]:
    """Sync or init one table, holding its lock and a max_active_tables slot throughout."""
    namespace, table = args.namespace, args.table
    label = f"{namespace}.{table}"
    url = _env(protocol.ENV_DATABASE_URL)
    started = time.monotonic()
    counter = RowCounter()
    logging.getLogger("dap").addHandler(counter)
    lock_conn = await locks.connect_as(url, args.holder)
    try:
        await locks.lock_table(lock_conn, label, args.lock_wait)
        await locks.take_slot(lock_conn, args.max_active_tables)
        async with _client() as session:
            replicator = SQLReplicator(session, DatabaseConnection(url))
            await replicator.version_upgrade()
            before = await read_table_state(lock_conn, namespace, table)
            result: dict[str, Any] = {
                "namespace": namespace,
                "table": table,
                "watermark_before": _iso(before.watermark),
            }
            if args.action == protocol.ACTION_SYNC:
                result |= await _sync(replicator, before, namespace, table)
            else:
                result |= await _init(replicator, lock_conn, before, args.reinit, url, namespace, table)
            after = await read_table_state(lock_conn, namespace, table)
    finally:
        await lock_conn.close()
    return result | {
        "watermark_after": _iso(after.watermark),
        "schema_version": after.schema_version,
        "rows": counter.rows,
        "duration_seconds": round(time.monotonic() - started, 3),
    }


async def _sync(replicator: SQLReplicator, before: TableState, namespace: str, table: str) -> dict[str, Any]:
    label = f"{namespace}.{table}"
    if not before.initialized:
        logger.info("%s is not initialized (no instructure_dap.table_sync row): init needed", label)
        return {"action": protocol.INIT_NEEDED, "reason": "not initialized", "reinit": False}
    try:
        await replicator.synchronize(namespace, table)
    except (OutOfRangeError, SnapshotRequiredError) as error:
        logger.info("%s: the API needs a fresh snapshot (%s): init needed", label, error.message)
        return {"action": protocol.INIT_NEEDED, "reason": "watermark too old", "reinit": True}
    return {"action": protocol.SYNCED}


async def _init(
    replicator: SQLReplicator,
    conn: asyncpg.Connection,
    before: TableState,
    reinit: bool,
    url: str,
    namespace: str,
    table: str,
) -> dict[str, Any]:
    label = f"{namespace}.{table}"
    if before.initialized and not reinit:
        # Initialized since the sync looked (e.g. this init re-run after it succeeded): bring it current.
        logger.info("%s is already initialized; synchronizing instead", label)
        await replicator.synchronize(namespace, table)
        return {"action": protocol.SYNCED}
    if before.initialized:
        logger.info("%s: dropping the replica table for re-initialization", label)
        await SQLDrop(DatabaseConnection(url)).drop(namespace, table)
    elif before.table_exists:
        logger.warning("%s: dropping a half-initialized leftover (table present, no table_sync row)", label)
        await conn.execute(f"DROP TABLE {quote_ident(namespace)}.{quote_ident(table)}")
    await replicator.initialize(namespace, table)
    return {"action": protocol.INITIALIZED, "reinit": before.initialized}


async def _exit_when_orphaned() -> None:
    """If the Airflow task process dies without killing us, stop too (the locks go with the connection)."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent:
            logger.error("the Airflow task process is gone; stopping")
            os._exit(3)


async def _run(args: argparse.Namespace) -> dict[str, Any]:
    watchdog = asyncio.create_task(_exit_when_orphaned())
    try:
        if args.action == protocol.ACTION_LIST:
            return await list_tables(args.namespace)
        return await replicate_table(args)
    finally:
        watchdog.cancel()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cd2.dap_child", description=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser(protocol.ACTION_LIST, help="list the tables of namespaces")
    listing.add_argument("--namespace", action="append", required=True)
    for action in (protocol.ACTION_SYNC, protocol.ACTION_INIT):
        table = sub.add_parser(action, help=f"{action} one table")
        table.add_argument("--namespace", required=True)
        table.add_argument("--table", required=True)
        table.add_argument("--holder", default="cd2_replica", help="who works on the table (for waiters)")
        table.add_argument("--lock-wait", type=float, default=300.0, help="seconds to wait for the table")
        table.add_argument("--max-active-tables", type=int, default=5)
        if action == protocol.ACTION_INIT:
            table.add_argument("--reinit", action="store_true", help="drop an initialized table first")
    return parser.parse_args(argv)


def peak_rss_mb() -> float | None:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited across fork+exec)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


def write_result(result: dict[str, Any]) -> None:
    line = json.dumps(result, default=str) + "\n"
    fd = os.environ.get(protocol.ENV_RESULT_FD)
    if fd:
        with os.fdopen(int(fd), "w") as stream:
            stream.write(line)
    else:
        sys.stdout.write(line)


def main(argv: list[str] | None = None) -> int:
    """Run one action; logging is configured by the entry point (``python -m cd2.dap_child``)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        result = {"ok": True} | asyncio.run(_run(args))
        code = 0
    except Exception as error:
        classified = classify(error)
        logger.error("%s failed: %s: %s", args.action, classified.type, classified.message, exc_info=True)
        result = {"ok": False, "action": args.action, "error": classified.as_dict()}
        code = 1
    logger.info("peak memory %s MB", peak := peak_rss_mb())
    write_result(result | {"peak_rss_mb": peak})
    return code
