"""Run one job of the DAP client (list tables, sync one table, init one table) and report its result.

The job comes from argv and the result goes out as one JSON line, both in the shapes of
:mod:`cd2.contract`. Secrets come from the environment (``DAP_CLIENT_ID``, ``DAP_CLIENT_SECRET``,
``CD2_DATABASE_URL``); argv carries nothing secret. Log lines go to stderr; the result goes to the file
descriptor named by ``CD2_RESULT_FD`` (stdout when unset).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg
from dap.api import DAPSession
from dap.dap_error import OutOfRangeError, SnapshotRequiredError
from dap.integration.database import DatabaseConnection
from dap.replicator.sql import SQLReplicator
from pysqlsync.base import QueryException

from cd2 import contract
from cd2.contract import (
    Action,
    ListJob,
    ListResult,
    Outcome,
    TableJob,
    TableRef,
    TableResult,
)
from cd2.dap_child import adoption, history, locks, patches, server_version, staging, views
from cd2.dap_child.ddl_guard import views_kept_around_ddl
from cd2.dap_child.errors import LockHeldTooLong, LockTimeout, PreviousCopyKept, classify
from cd2.dap_child.plan import plan_table
from cd2.dap_child.session import dap_client, env, pacer_for
from cd2.dap_child.table_state import TableState, read_table_state, watermark_iso

logger = logging.getLogger("cd2.dap_child")
PARENT_POLL_SECONDS = 2.0
# A table lock held longer than this is an error, not a busy table (a big init takes hours, not a day).
LOCK_HELD_LIMIT_SECONDS = 24 * 3600.0
# A version_upgrade that loses a race with a foreign process (the dap CLI) is retried this often.
VERSION_UPGRADE_TRIES = 3


class RowCounter(logging.Handler):
    """Picks the client's own "Inserted/Upserted N records" counts off its log, which costs nothing
    (the ``row_counts`` patch: only where the client's code that logs them is as verified)."""

    PATTERN = re.compile(r"^(?:Inserted|Upserted) (\d+) records")

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.rows: int | None = None

    def emit(self, record: logging.LogRecord) -> None:
        match = self.PATTERN.match(record.getMessage())
        if match:
            self.rows = (self.rows or 0) + int(match.group(1))


async def list_tables(job: ListJob) -> ListResult:
    async with pacer_for(job), dap_client() as session:
        return ListResult(tables={ns: sorted(await session.get_tables(ns)) for ns in job.namespace})


async def version_upgrade(replicator: SQLReplicator, conn: asyncpg.Connection) -> None:
    """The client's ``version_upgrade`` one child at a time (its ``CREATE SCHEMA IF NOT EXISTS`` races
    when run concurrently on an empty database); a race lost to a foreign process is retried."""
    for attempt in range(1, VERSION_UPGRADE_TRIES + 1):
        try:
            async with locks.schema_lock(conn):
                await adoption.record_layout_version(conn)
                await replicator.version_upgrade()
            return
        except QueryException as error:
            if (
                not isinstance(error.__cause__, asyncpg.UniqueViolationError)
                or attempt == VERSION_UPGRADE_TRIES
            ):
                raise
            logger.info("version_upgrade raced with another session (%s); trying again", error.__cause__)


@dataclass(frozen=True)
class _Done:
    """What a sync or init step did, before the watermarks and counts are read."""

    outcome: Outcome
    reason: str | None = None
    reinit: bool = False
    rows_kept: int | None = None


async def replicate_table(job: TableJob) -> TableResult:
    """Sync or init one table, holding its lock throughout; every API call paced by the shared budget."""
    ref = job.ref
    url = env(contract.ENV_DATABASE_URL)
    started = time.monotonic()
    counter = RowCounter()
    if patches.is_active("row_counts"):
        logging.getLogger("dap").addHandler(counter)
    lock_conn = await locks.connect_as(url, job.holder)
    try:
        await server_version.check(lock_conn)
        try:
            await locks.lock_table(lock_conn, ref.label, job.lock_wait_seconds)
        except LockTimeout:
            return await _busy(lock_conn, ref, time.monotonic() - started)
        async with pacer_for(job), dap_client() as session:
            replicator = SQLReplicator(session, DatabaseConnection(url))
            await version_upgrade(replicator, lock_conn)
            await views.ensure_table(lock_conn)
            # Views saved by a run that died between saving and recreating them.
            await views.restore(lock_conn, ref)
            before = await read_table_state(lock_conn, ref.namespace, ref.name)
            if job.action is Action.SYNC:
                done = await _sync(replicator, lock_conn, before, ref)
            else:
                done = await _init(replicator, session, lock_conn, before, job, url)
            after = await read_table_state(lock_conn, ref.namespace, ref.name)
            pruned = None
            if job.keep_days and after.watermark is not None:
                pruned, _ = await history.prune(lock_conn, ref, job.keep_days, after.watermark)
            needing = await views.needing_person(lock_conn, ref)
    finally:
        await lock_conn.close()
    return TableResult(
        label=ref.label,
        outcome=done.outcome,
        reason=done.reason,
        reinit=done.reinit,
        rows=counter.rows,
        duration_seconds=round(time.monotonic() - started, 3),
        watermark_before=watermark_iso(before.watermark),
        watermark_after=watermark_iso(after.watermark),
        schema_version=after.schema_version,
        views_needing_person=needing or None,
        server_warning=server_version.found,
        rows_kept=done.rows_kept,
        rows_pruned=pruned,
    )


async def _busy(conn: asyncpg.Connection, ref: TableRef, waited: float) -> TableResult:
    """Another run holds the table: ``busy``, unless it has held it past the bound (then an error)."""
    holder, since = await locks.table_lock_holding(conn, ref.label)
    held = (datetime.now(since.tzinfo) - since).total_seconds() if since else 0.0
    who = f"{holder or 'another session'} since {since.isoformat() if since else 'an unknown time'}"
    if held > LOCK_HELD_LIMIT_SECONDS:
        raise LockHeldTooLong(f"{ref.label} has been locked by {who} ({held / 3600:.1f} h)")
    logger.info("%s is busy: being worked on by %s; not touched this time", ref.label, who)
    return TableResult(
        label=ref.label,
        outcome=Outcome.BUSY,
        reason=f"worked on by {who}",
        duration_seconds=round(waited, 3),
        server_warning=server_version.found,
    )


async def _sync(
    replicator: SQLReplicator, conn: asyncpg.Connection, before: TableState, ref: TableRef
) -> _Done:
    if not before.initialized:
        logger.info("%s is not initialized (no instructure_dap.table_sync row): init needed", ref.label)
        return _Done(Outcome.INIT_NEEDED, reason="not initialized")
    try:
        async with views_kept_around_ddl(conn, ref):
            await replicator.synchronize(ref.namespace, ref.name)
    except (OutOfRangeError, SnapshotRequiredError) as error:
        logger.info("%s: the API needs a fresh snapshot (%s): init needed", ref.label, error.message)
        return _Done(Outcome.INIT_NEEDED, reason="watermark too old", reinit=True)
    return _Done(Outcome.SYNCED)


async def _init(
    replicator: SQLReplicator,
    session: DAPSession,
    conn: asyncpg.Connection,
    before: TableState,
    job: TableJob,
    url: str,
) -> _Done:
    """Initialize into a stage beside the live table, then swap it in (see :mod:`staging`)."""
    ref = job.ref
    if before.initialized and not job.reinit:
        # Initialized since the sync looked (e.g. this init re-run after it succeeded): bring it current.
        logger.info("%s is already initialized; synchronizing instead", ref.label)
        async with views_kept_around_ddl(conn, ref):
            await replicator.synchronize(ref.namespace, ref.name)
        return _Done(Outcome.SYNCED)
    if before.half_initialized:
        logger.warning(
            "%s: a half-initialized leftover (no table_sync row) is replaced once the new copy is complete",
            ref.label,
        )
    stage = staging.Stage.of(ref)
    await staging.drop_stage(conn, stage)
    logger.info(
        "%s: initializing into %s; the live table stays as it is until the swap", ref.label, stage.data
    )
    try:
        staged = SQLReplicator(session, staging.staging_connection(url, ref, stage))
        await staged.initialize(ref.namespace, ref.name)
        kept = await staging.swap_in(conn, ref, stage, job.lock_wait_seconds)
    except Exception as error:
        await _drop_stage_quietly(conn, stage)
        if before.table_exists:
            raise PreviousCopyKept(
                f"{'re-' if before.initialized else ''}initialization of {ref.label} failed; the previous "
                "copy, its rows and its table_sync row are unchanged"
            ) from error
        raise
    kept_history = history.keeps_history(ref) and before.table_exists
    return _Done(Outcome.INITIALIZED, reinit=before.initialized, rows_kept=kept if kept_history else None)


async def _drop_stage_quietly(conn: asyncpg.Connection, stage: staging.Stage) -> None:
    try:
        await staging.drop_stage(conn, stage)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
        logger.warning("could not drop the stage %s yet (%s); the next attempt drops it", stage.data, error)


async def _exit_when_orphaned() -> None:
    """If the Airflow task process dies without killing us, stop too (the locks go with the connection)."""
    parent = os.getppid()
    while True:
        await asyncio.sleep(PARENT_POLL_SECONDS)
        if os.getppid() != parent:
            logger.error("the Airflow task process is gone; stopping")
            os._exit(3)


async def _run(job: ListJob | TableJob) -> ListResult | TableResult:
    watchdog = asyncio.create_task(_exit_when_orphaned())
    try:
        if isinstance(job, ListJob):
            return await list_tables(job)
        if job.action is Action.PLAN:
            return await plan_table(job)
        return await replicate_table(job)
    finally:
        watchdog.cancel()


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


def write_result(result: ListResult | TableResult) -> None:
    line = result.to_json() + "\n"
    fd = os.environ.get(contract.ENV_RESULT_FD)
    if fd:
        with os.fdopen(int(fd), "w") as stream:
            stream.write(line)
    else:
        sys.stdout.write(line)


def main(argv: list[str] | None = None) -> int:
    """Run one job; logging is configured by the entry point (``python -m cd2.dap_child``)."""
    job = contract.job_from_argv(sys.argv[1:] if argv is None else argv)
    active = None
    try:
        active = patches.apply()
        result = asyncio.run(_run(job))
        code = 0
    except Exception as error:
        classified = classify(error)
        logger.error("%s failed: %s: %s", job.action, classified.type, classified.message, exc_info=True)
        if isinstance(job, ListJob):
            result = ListResult(tables={}, error=classified)
        else:
            result = TableResult(
                label=job.ref.label,
                outcome=Outcome.FAILED,
                error=classified,
                server_warning=server_version.found,
            )
        code = 1
    logger.info("peak memory %s MB", peak := peak_rss_mb())
    if isinstance(result, TableResult):
        result = replace(result, patches=active)
    write_result(replace(result, peak_rss_mb=peak))
    return code
