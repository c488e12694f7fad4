"""Warnings a healthy run may log that are about the test machine, not the run."""

from __future__ import annotations

from cd2.contract import MIN_SERVER_VERSION_NUM

# The product's own warning when the target server is older than Instructure supports (CI's pass on
# the system's PostgreSQL 15): expected there, a false alarm anywhere else.
OLD_SERVER_WARNING = "the oldest Instructure supports for the DAP client"


def server_noise(server) -> tuple[str, ...]:
    """``(OLD_SERVER_WARNING,)`` when ``server`` (a :class:`~local_dap.postgres.PostgresServer`) is that old."""
    return (OLD_SERVER_WARNING,) if server.server_version_num < MIN_SERVER_VERSION_NUM else ()
