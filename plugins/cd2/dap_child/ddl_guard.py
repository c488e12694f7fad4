"""Keep dependent views across the client's schema-change DDL during a sync.

What it patches: ``pysqlsync.base.Explorer.synchronize`` (vendored by instructure-dap-client 2.3.1),
only inside :func:`views_kept_around_ddl`, in the child process (one table per process). The
replacement is the client's own method body (build the desired state, discover the database, compute
the mutation) with one step added: when there is DDL to run, the table's dependent views are saved and
dropped first (:func:`views.save_and_drop`) and recreated right after (:func:`views.restore`), also when
the DDL fails. No DDL, no view is touched. For any other client version nothing is patched (one
warning): the DDL then fails on a dependent view, and the error says what to do.

How to remove it: once the client handles dependent views itself, delete this module and its one use in
the runner.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from pysqlsync import base
from pysqlsync.formation.inspection import get_entity_types

from cd2.contract import TableRef
from cd2.dap_child import views
from cd2.dap_child.client_version import CLIENT_DISTRIBUTION, installed_version
from cd2.dap_child.quoting import qualified

logger = logging.getLogger(__name__)

VERIFIED_CLIENT_VERSIONS = frozenset({"2.3.1"})


@asynccontextmanager
async def views_kept_around_ddl(conn: asyncpg.Connection, ref: TableRef) -> AsyncIterator[None]:
    """While inside, any DDL the client runs on ``ref`` saves, drops and recreates its views."""
    version = installed_version()
    if version not in VERIFIED_CLIENT_VERSIONS:
        logger.warning(
            "%s %s is not verified for the view guard; views may block DDL", CLIENT_DISTRIBUTION, version
        )
        yield
        return
    original = base.Explorer.synchronize

    async def synchronize(self, *, module=None, modules=None) -> None:  # noqa: ANN001
        entity_modules = base._module_or_list(module, modules)
        generator = self.conn.connection.generator
        generator.reset()
        generator.create(tables=get_entity_types(entity_modules))
        target_state = generator.state
        await self.discover(modules=entity_modules)
        stmt = generator.get_mutate_stmt(target_state)
        if stmt is None:
            return
        saved = await views.save_and_drop(conn, ref, [qualified(ref.namespace, ref.name)])
        try:
            logger.info("synchronize schema with SQL:\n%s", stmt)
            await self.conn.execute(stmt)
            generator.state = target_state
        finally:
            if saved:
                try:
                    await views.restore(conn, ref)
                except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
                    # Still saved: the table's next run restores them.
                    logger.warning(
                        "%s: views not restored yet (%s); the next run restores them", ref.label, error
                    )

    base.Explorer.synchronize = synchronize
    try:
        yield
    finally:
        base.Explorer.synchronize = original
