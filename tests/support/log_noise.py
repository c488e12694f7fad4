"""Warnings a healthy run may log that are about the test machine, not the run."""

from __future__ import annotations

# The product's own warning when the target server is older than Instructure supports (CI's pass on
# the system's PostgreSQL 15): expected there, a false alarm anywhere else.
OLD_SERVER_WARNING = "the oldest Instructure supports for the DAP client"
# cd2.contract.MIN_SERVER_VERSION_NUM (16.3); the DAG-level tests run without plugins/ on their path.
MIN_SERVER_VERSION_NUM = 160003


def server_noise(server) -> tuple[str, ...]:
    """``(OLD_SERVER_WARNING,)`` when ``server`` (a :class:`~local_dap.postgres.PostgresServer`) is that old."""
    return (OLD_SERVER_WARNING,) if server.server_version_num < MIN_SERVER_VERSION_NUM else ()
