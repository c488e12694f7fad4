"""A schema change of each kind: the client applies it on the next ``syncdb`` and the replica equals the truth.

All four tables go through one ``initdb`` and one ``syncdb`` call (the CLI takes a table list); each kind
of change then gets its own assertions.
"""

from __future__ import annotations

import psycopg2
import pytest

from local_dap.control import start_emulator
from local_dap.truth import replica_truth
from tests.local_dap.emulator.conftest import run_dap

CHANGES = {
    "add_column": ("accounts", None),
    "drop_column": ("users", "merged_into_user_id"),
    "add_enum_value": ("pseudonyms", "workflow_state"),
    "change_type": ("enrollments", "total_activity_time"),
}


def _columns(url: str, table: str) -> dict[str, str]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = 'canvas' AND table_name = %s", (table,))  # fmt: skip
            return dict(cur.fetchall())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def evolved(postgres_server):
    """Init four tables, change each table's schema one way, advance, sync; returns what happened."""
    tables = ",".join(t for t, _ in CHANGES.values())
    with start_emulator(rows=40) as emulator:
        url = postgres_server.create_database("schema_changes")
        init = run_dap(
            emulator, "initdb", "--namespace", "canvas", "--table", tables, "--connection-string", url
        )
        assert init.returncode == 0, init.output
        before = {t: _columns(url, t) for t, _ in CHANGES.values()}
        summaries = {
            kind: emulator.bump_schema("canvas", table, kind, column)
            for kind, (table, column) in CHANGES.items()
        }
        emulator.advance(changes=30, tables=[t for t, _ in CHANGES.values()])
        sync = run_dap(
            emulator, "syncdb", "--namespace", "canvas", "--table", tables, "--connection-string", url
        )
        assert sync.returncode == 0, sync.output
        yield emulator, url, before, summaries


@pytest.mark.parametrize("kind", list(CHANGES))
def test_schema_change_is_applied_and_replica_equals_truth(evolved, kind):
    emulator, url, before, summaries = evolved
    table, _ = CHANGES[kind]
    summary = summaries[kind]
    assert summary["version"] == 2
    assert emulator.state()["tables"][f"canvas.{table}"]["version"] == 2
    after = _columns(url, table)
    column = summary["column"]
    if kind == "add_column":
        assert column not in before[table] and after[column] == "character varying"
    elif kind == "drop_column":
        assert column in before[table] and column not in after
    elif kind == "change_type":
        assert (before[table][column], after[column]) == ("integer", "bigint")
    elif kind == "add_enum_value":
        conn = psycopg2.connect(url)
        with conn.cursor() as cur:
            cur.execute(f"SELECT count(*) FROM canvas.{table} WHERE {column}::text = %s", (summary["value"],))
            assert cur.fetchone()[0] > 0  # the new member is in use in the replica
        conn.close()
    assert replica_truth(url, "canvas", table) == emulator.truth("canvas", table)
    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT schema_version FROM instructure_dap.table_sync WHERE source_table = %s", (table,))
        assert cur.fetchone()[0] == 2
    conn.close()
