"""The warning for a target server older than Instructure supports: the threshold, and the real server."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from cd2.dap_child import server_version


@pytest.mark.parametrize(
    ("version_num", "version", "warns"),
    [(150018, "15.18", True), (160002, "16.2", True), (160003, "16.3", False), (180006, "18.6", False)],
)
def test_servers_below_16_3_are_warned_about(version_num, version, warns):
    warning = server_version.warning_for(version_num, version)
    if warns:
        assert f"version {version}, older than 16.3" in warning
    else:
        assert warning is None


def test_the_child_reads_the_real_servers_version_and_logs_a_warning_when_old(
    database_url, postgres_server, caplog
):
    async def check() -> str | None:
        conn = await asyncpg.connect(database_url)
        try:
            return await server_version.check(conn)
        finally:
            await conn.close()

    warning = asyncio.run(check())
    assert server_version.found == warning
    logged = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    if postgres_server.server_version_num < 160003:  # e.g. CI's pass on the system's PostgreSQL 15
        assert f"version {postgres_server.server_version}, older than 16.3" in warning
        assert logged == [warning]
    else:
        assert warning is None and logged == []
