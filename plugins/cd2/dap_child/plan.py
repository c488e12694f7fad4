"""Plan jobs: what a sync or init run would do to one table, and why, changing nothing."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from cd2 import contract
from cd2.contract import Outcome, PlannedAction, TableJob, TablePlan, TableResult
from cd2.dap_child import history, locks, server_version
from cd2.dap_child.quoting import qualified
from cd2.dap_child.session import dap_client, env, pacer_for
from cd2.dap_child.table_state import TableState, read_table_state, watermark_iso

logger = logging.getLogger("cd2.dap_child")


async def plan_table(job: TableJob) -> TableResult:
    """What a sync or init run would do to one table, changing nothing: reads ``table_sync`` and the
    catalog, takes no lock, and asks the API only for the table's schema (paced; no job created)."""
    ref = job.ref
    started = time.monotonic()
    conn = await locks.connect_as(env(contract.ENV_DATABASE_URL), job.holder)
    try:
        await server_version.check(conn)
        holder, since = await locks.table_lock_holding(conn, ref.label)
        async with pacer_for(job), dap_client() as session:
            api_version = (await session.get_table_schema(ref.namespace, ref.name)).version
        state = await read_table_state(conn, ref.namespace, ref.name)
        rows = None
        if state.table_exists:
            rows = await conn.fetchval(f"SELECT count(*) FROM {qualified(ref.namespace, ref.name)}")
        now = datetime.now(UTC)
        if holder:
            # A run would wait for the lock, then report the table busy and leave it alone.
            action, reason = PlannedAction.NOTHING, f"busy: worked on by {holder} since {since}"
        else:
            action, reason = plan_action(
                state, api_version, forced=job.reinit, retention_hours=job.retention_hours, now=now
            )
        kept = None
        if action is PlannedAction.REINIT and history.keeps_history(ref) and job.retention_hours:
            kept = await history.rows_older_than(conn, ref, now - timedelta(hours=job.retention_hours))
    finally:
        await conn.close()
    logger.info("%s: a run would %s (%s)", ref.label, action, reason)
    return TableResult(
        label=ref.label,
        outcome=Outcome.PLANNED,
        reason=reason,
        duration_seconds=round(time.monotonic() - started, 3),
        watermark_before=watermark_iso(state.watermark),
        schema_version=state.schema_version,
        server_warning=server_version.found,
        plan=TablePlan(action, reason, rows, state.schema_version, api_version, kept),
    )


def plan_action(
    state: TableState, api_version: int, *, forced: bool, retention_hours: float, now: datetime
) -> tuple[PlannedAction, str]:
    """The decisions of the runner's sync and init steps, predicted from the table's state (first match
    wins).

    A watermark older than the API's retention is what makes the API answer a sync with
    ``OutOfRangeError`` (which :mod:`cd2.dap_child.runner`'s sync turns into a re-init).
    """
    if state.half_initialized:
        return PlannedAction.INIT, "half-initialized leftover (no table_sync row): a fresh init replaces it"
    if not state.initialized:
        return PlannedAction.INIT, "not in the replica"
    if forced:
        return PlannedAction.REINIT, "force_reinit"
    if retention_hours and state.watermark is not None:
        watermark = state.watermark.replace(tzinfo=UTC) if state.watermark.tzinfo is None else state.watermark
        if now - watermark > timedelta(hours=retention_hours):
            return PlannedAction.REINIT, f"watermark older than the API's retention ({retention_hours:g}h)"
    if state.schema_version is not None and state.schema_version < api_version:
        return (
            PlannedAction.SYNC,
            f"schema change: version {state.schema_version} -> {api_version}, applied by the sync",
        )
    return PlannedAction.SYNC, "initialized"
