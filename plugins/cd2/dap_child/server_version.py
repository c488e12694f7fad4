"""The target server's version: the client does not check it, and a server older than Instructure
supports (:data:`MIN_SERVER_VERSION_NUM`) fails in obscure ways, so the child warns.

The warning is logged (it reaches the task log) and kept in :data:`found`, which the child's result
carries (``TableResult.server_warning``) whether or not the job then succeeds, so it reaches the
notification too. One job runs per child process, so one module-level value is enough.
"""

from __future__ import annotations

import logging

import asyncpg

logger = logging.getLogger("cd2.dap_child")

# The oldest target server Instructure supports for the client (16.3); the client itself does not check.
MIN_SERVER_VERSION_NUM = 160003

found: str | None = None


def _dotted(version_num: int) -> str:
    return f"{version_num // 10000}.{version_num % 10000}"


def warning_for(version_num: int, version: str) -> str | None:
    """The warning for a server of this ``server_version_num`` / ``server_version``, or None."""
    if version_num >= MIN_SERVER_VERSION_NUM:
        return None
    return (
        f"The target PostgreSQL server is version {version}, older than {_dotted(MIN_SERVER_VERSION_NUM)}, "
        "the oldest Instructure supports for the DAP client (which does not check): replication may fail "
        "in obscure ways. Upgrade the server."
    )


async def check(conn: asyncpg.Connection) -> str | None:
    """Read the server's version, log a WARNING if it is too old, and remember it in :data:`found`."""
    global found
    version_num = int(await conn.fetchval("SELECT current_setting('server_version_num')"))
    version = (await conn.fetchval("SELECT current_setting('server_version')")).split()[0]
    found = warning_for(version_num, version)
    if found:
        logger.warning("%s", found)
    return found
