"""Keep dependent views across the client's schema-change DDL during a sync.

Inside :func:`views_kept_around_ddl`, the client's ``Explorer.synchronize`` (pysqlsync, vendored by
instructure-dap-client) runs as its own body with one step added (the ``ddl_guard`` patch of
:mod:`cd2.dap_child.patches`): when there is DDL to run, the table's dependent views are saved and dropped
first (:func:`views.save_and_drop`) and recreated right after (:func:`views.restore`), also when the DDL
fails. No DDL, no view is touched; outside the guard the client's own method runs. Without the patch (a
client it was not verified on), the DDL fails on a dependent view, and the error says what to do.

How to remove it: once the client handles dependent views itself, delete this module, its registry entry
and its one use in the runner.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar

import asyncpg

from cd2.contract import TableRef
from cd2.dap_child import views
from cd2.dap_child.quoting import qualified

logger = logging.getLogger(__name__)

_guarded: ContextVar[tuple[asyncpg.Connection, TableRef] | None] = ContextVar("cd2_ddl_guard", default=None)


@asynccontextmanager
async def views_kept_around_ddl(conn: asyncpg.Connection, ref: TableRef) -> AsyncIterator[None]:
    """While inside, any DDL the client runs on ``ref`` saves, drops and recreates its views."""
    token = _guarded.set((conn, ref))
    try:
        yield
    finally:
        _guarded.reset(token)


def guarding() -> bool:
    """Whether the client's DDL runs inside :func:`views_kept_around_ddl`."""
    return _guarded.get() is not None


@asynccontextmanager
async def views_moved_aside() -> AsyncIterator[None]:
    """Around the client's DDL: the guarded table's views saved and dropped, then recreated (also on failure)."""
    conn, ref = _guarded.get()
    saved = await views.save_and_drop(conn, ref, [qualified(ref.namespace, ref.name)])
    try:
        yield
    finally:
        if saved:
            try:
                await views.restore(conn, ref)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                # Still saved: the table's next run restores them.
                logger.warning(
                    "%s: views not restored yet (%s); the next run restores them", ref.label, error
                )
