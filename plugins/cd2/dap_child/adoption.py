"""A replica another tool built, taken over as it is.

The client's ``version_upgrade()`` reads the metadata layout's version from
``instructure_dap.database_version``; when that table is empty it runs its 0-to-1 script, which empties
``instructure_dap.table_sync`` and refills it from the pre-1.0 ``<namespace>.dap_meta`` tables. A replica
written by a 1.x client that never called ``version_upgrade()`` (canvas-data-2-aws and ubc/canvas-data-2
call ``SQLReplicator`` directly) has the 1.x ``table_sync`` rows, no ``dap_meta`` and no version: the
script would forget every table and the run would re-initialize them all. :func:`record_layout_version`
records version 1 for exactly that replica, as the client's own upgrade ends by doing, so the client
leaves its ``table_sync`` alone.
"""

from __future__ import annotations

import logging

import asyncpg

logger = logging.getLogger(__name__)

# The layout version the 1.x clients write, and the namespaces the client's 0-to-1 script migrates.
LAYOUT_VERSION = 1
MIGRATED_NAMESPACES = ("canvas", "catalog", "canvas_logs")


async def record_layout_version(conn: asyncpg.Connection) -> bool:
    """Record version 1 where ``table_sync`` has rows, no version is recorded and no pre-1.0 ``dap_meta``
    exists; True if it did. Call it under the schema lock, before the client's ``version_upgrade()``."""
    found = await conn.fetchval(
        "SELECT to_regclass('instructure_dap.database_version') IS NOT NULL"
        " AND to_regclass('instructure_dap.table_sync') IS NOT NULL"
    )
    if not found:
        return False
    async with conn.transaction():
        tables = await conn.fetchval(
            "SELECT count(*) FROM instructure_dap.table_sync"
            " WHERE NOT EXISTS (SELECT FROM instructure_dap.database_version)"
            " AND NOT EXISTS (SELECT FROM information_schema.tables"
            " WHERE table_name = 'dap_meta' AND table_schema = ANY($1::text[]))",
            list(MIGRATED_NAMESPACES),
        )
        if not tables:
            return False
        await conn.execute(
            "INSERT INTO instructure_dap.database_version (version) VALUES ($1)", LAYOUT_VERSION
        )
    logger.warning(
        "instructure_dap.database_version was empty beside %d table(s) in instructure_dap.table_sync and no "
        "pre-1.0 dap_meta: a replica built without version_upgrade() (canvas-data-2-aws, ubc/canvas-data-2). "
        "Recorded version %d, so the client keeps its tables instead of forgetting them",
        tables,
        LAYOUT_VERSION,
    )
    return True
