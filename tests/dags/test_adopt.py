"""Moving in: cd2_replica adopts a replica another tool built, and syncs it in place.

A builder fills an empty database as a school's current tool did: the stock ``dap initdb`` of the 2.3.1
client (a ``dap`` CLI on cron) or of the 1.4.0 client (the version canvas-data-2-aws and
ubc/canvas-data-2 are reported to pin, in a virtualenv built here from PyPI). The source then changes; a
plan run must say "sync" for every table, and the run after it must sync each one in place (same OIDs,
no init) and leave it equal to the emulator's truth.

Those two tools do not run ``dap initdb``: their tasks (in the versions of their code read) call the
library (``SQLReplicator.initialize`` and ``synchronize``) with no ``version_upgrade()``, which leaves
``instructure_dap.database_version`` empty; the client's own upgrade would then empty ``table_sync`` and
every table would be re-initialized. The child records the version first (``cd2.dap_child.adoption``),
so that replica is synced in place too; the last test checks when it does and when it leaves the
client's upgrade alone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg2
import pytest

from local_dap.truth import replica_truth
from tests.dags.replica import FRESH_ENOUGH, Replica
from tests.support import venv
from tests.support.paths import DAP_BIN, DAP_PYTHON, REPO_ROOT

# A table with lookup tables (``<table>__<column>``, foreign keys into them) in canvas_logs, and a
# canvas table whose only special columns are PostgreSQL enums.
TABLES = ["canvas.accounts", "canvas_logs.web_logs"]
CONFIG = {
    "namespaces": ["canvas", "canvas_logs"],
    "include": [],
    "freshness_hours": FRESH_ENOUGH,
    # The emulator's clock starts on 2026-01-01: a plan run compares web_logs' watermark with the wall
    # clock against the API's published 30 days, which this long bound stands in for.
    "retention_hours": {"canvas_logs.web_logs": FRESH_ENOUGH},
}

# The 1.4.0 client and its closure as pip resolved them from PyPI on 2026-12-07 (the client
# pins none of them): pinned so that a later release of a dependency cannot change what this test builds.
DAP_1_4_0 = "instructure-dap-client[postgresql]==1.4.0"
DAP_1_4_0_CLOSURE = """\
aiofiles==25.1.0
aiohappyeyeballs==2.7.1
aiohttp==3.14.5
aiohttp-retry==2.9.1
aiosignal==1.4.0
asyncpg==0.32.0
attrs==26.1.0
frozenlist==1.8.0
idna==3.21
json-strong-typing==0.5.0
jsonschema==4.26.0
jsonschema-specifications==2025.9.1
multidict==7.2.1
propcache==0.5.4
pyjwt==2.15.1
pysqlsync==1.0.1
referencing==0.37.0
rpds-py==2026.9.1
truststore==0.10.5
tsv2py==0.8.0
types-aiofiles==25.1.0.20261107
typing-extensions==4.16.0
yarl==1.25.1
"""

# What canvas-data-2-aws's and ubc/canvas-data-2's init task runs for one table, in the versions of their
# code read for docs/moving-in.md (their sync task likewise calls SQLReplicator.synchronize): the library,
# with no version_upgrade() before it.
LIBRARY_INIT = """
import asyncio, os, sys
from dap.api import DAPClient
from dap.dap_types import Credentials
from dap.integration.database import DatabaseConnection
from dap.replicator.sql import SQLReplicator

async def init(namespace, table):
    credentials = Credentials.create(
        client_id=os.environ["DAP_CLIENT_ID"], client_secret=os.environ["DAP_CLIENT_SECRET"]
    )
    async with DAPClient(os.environ["DAP_API_URL"], credentials) as session:
        connection = DatabaseConnection(os.environ["DAP_CONNECTION_STRING"])
        await SQLReplicator(session, connection).initialize(namespace, table)

asyncio.run(init(sys.argv[1], sys.argv[2]))
"""


@pytest.fixture(scope="session")
def dap_1_4_0_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The 1.4.0 client (reported pinned by canvas-data-2-aws and ubc/canvas-data-2) in a throwaway
    virtualenv built from PyPI on the Python 3.12 the project's venvs are made from; its ``bin`` folder."""
    folder = tmp_path_factory.mktemp("dap-1.4.0")
    constraints = folder / "constraints.txt"
    constraints.write_text(DAP_1_4_0_CLOSURE)
    python = venv.create(folder / "venv")
    venv.pip(python, "install", "--quiet", "-c", str(constraints), DAP_1_4_0)
    assert venv.freeze(python)["instructure-dap-client"] == "1.4.0"
    return python.parent


def _by_namespace(tables: list[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for label in tables:
        namespace, table = label.split(".")
        grouped.setdefault(namespace, []).append(table)
    return grouped


def _run(args: list[str], replica: Replica) -> None:
    """Run a builder against the emulator: API URL, credentials and the connection string by environment."""
    env = replica.emulator.client_env(DAP_CONNECTION_STRING=replica.url)
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    if result.returncode != 0:
        pytest.fail(f"{args[:3]} failed ({result.returncode}):\n{(result.stdout + result.stderr)[-5000:]}")


def stock_initdb(replica: Replica, bin_dir: Path) -> None:
    """``dap initdb`` of the 2.3.1 client, one call per namespace, as a cron job runs it."""
    for namespace, tables in _by_namespace(TABLES).items():
        _run([str(bin_dir / "dap"), "--no-tracking", "--non-interactive", "initdb",
              "--namespace", namespace, "--table", ",".join(tables)], replica)  # fmt: skip


def initdb_1_4_0(replica: Replica, bin_dir: Path) -> None:
    """``dap initdb`` of the 1.4.0 client (no tracking, no interactive mode to turn off)."""
    for namespace, tables in _by_namespace(TABLES).items():
        _run([str(bin_dir / "dap"), "initdb", "--namespace", namespace, "--table", ",".join(tables)], replica)


def library_init_1_4_0(replica: Replica, bin_dir: Path) -> None:
    """The 1.4.0 library as canvas-data-2-aws and ubc/canvas-data-2 call it, one table per process."""
    for label in TABLES:
        _run([str(bin_dir / "python"), "-c", LIBRARY_INIT, *label.split(".")], replica)


@dataclass(frozen=True)
class Builder:
    build: Callable[[Replica, Path], None]
    bin_fixture: str | None  # the fixture giving the client's bin folder; None: the project's DAP venv


STOCK_2_3_1 = Builder(stock_initdb, None)
INITDB_1_4_0 = Builder(initdb_1_4_0, "dap_1_4_0_bin")
LIBRARY_1_4_0 = Builder(library_init_1_4_0, "dap_1_4_0_bin")


@pytest.fixture
def replica(airflow_env, dap_emulator, postgres_server, sns, request):
    dap_emulator.reset()
    dap_emulator.clear_faults()
    sns.received()
    case = request.node.callspec.id if hasattr(request.node, "callspec") else request.node.name[-30:]
    name = "adopt_" + re.sub(r"\W", "_", case)
    return Replica(airflow_env, dap_emulator, postgres_server, sns, name)


def relation_oids(replica: Replica) -> dict[str, int]:
    """The OID of every table in the replicated namespaces (lookup tables included): a re-init, which
    swaps in a new copy, changes them; a sync does not."""
    with replica.server.connect(replica.database) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT n.nspname || '.' || c.relname, c.oid FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'r' AND n.nspname = ANY(%s)",
            (sorted(_by_namespace(TABLES)),),
        )
        return dict(cur.fetchall())


def database_version(replica: Replica) -> list[int]:
    with replica.server.connect(replica.database) as conn, conn.cursor() as cur:
        cur.execute("SELECT version FROM instructure_dap.database_version")
        return [row[0] for row in cur.fetchall()]


def moves_in(replica: Replica, builder: Builder, bin_dir: Path) -> None:
    """The guide's steps: the other tool built the replica; the source changes; a plan run says "sync"
    for every table; the first run syncs each in place and leaves it equal to the source."""
    builder.build(replica, bin_dir)
    replica.assert_in_step(TABLES)  # the builder's replica, before the product touches it
    built = {label: replica_truth(replica.url, *label.split(".")).count for label in TABLES}
    oids = relation_oids(replica)
    assert set(oids) >= set(TABLES), oids

    replica.emulator.advance(changes=10, tables=TABLES)
    plan, note = replica.run(config=CONFIG, conf={"tables": TABLES, "plan": True})
    assert plan.state == "success", plan.output[-5000:]
    assert replica.airflow.xcom(plan.run_id, "list_tables") == TABLES
    planned = {
        label: replica.airflow.xcom(plan.run_id, "table.sync", map_index=index)["plan"]
        for index, label in enumerate(TABLES)
    }
    for label in TABLES:
        assert (planned[label]["action"], planned[label]["reason"]) == ("sync", "initialized"), planned
        assert planned[label]["local_schema_version"] == planned[label]["api_schema_version"] == 1
        assert planned[label]["rows"] == built[label], (label, planned[label])
    assert note["facts"]["planned"] == {"init": 0, "reinit": 0, "sync": 2, "nothing": 0}
    assert relation_oids(replica) == oids  # a plan run changes nothing

    run, note = replica.run(config=CONFIG, conf={"tables": TABLES})
    assert run.state == "success", run.output[-5000:]
    records = {
        label: replica.airflow.xcom(run.run_id, "table.sync", map_index=index)
        for index, label in enumerate(TABLES)
    }
    outcomes = {label: (record["outcome"], record["reason"]) for label, record in records.items()}
    assert outcomes == dict.fromkeys(TABLES, ("synced", None)), outcomes
    assert run.states("table.init") == dict.fromkeys(TABLES, "skipped")
    assert note["facts"]["counts"] == {"synced": 2, "initialized": 0, "failed": 0, "skipped": 0}
    assert relation_oids(replica) == oids  # synced in place: not a new copy swapped in
    replica.assert_in_step(TABLES)
    assert database_version(replica) == [1]
    # The child says when it recorded the layout version the builder left out.
    assert ("Recorded version 1" in run.output) is (builder is LIBRARY_1_4_0), run.output[-3000:]


@pytest.mark.parametrize(
    "builder",
    [
        pytest.param(STOCK_2_3_1, id="dap-initdb-2.3.1"),
        pytest.param(INITDB_1_4_0, id="dap-initdb-1.4.0", marks=pytest.mark.slow),
        pytest.param(LIBRARY_1_4_0, id="library-1.4.0-without-version_upgrade", marks=pytest.mark.slow),
    ],
)
def test_a_replica_built_by_another_tool_is_planned_as_sync_and_synced_in_place(builder, replica, request):
    bin_dir = request.getfixturevalue(builder.bin_fixture) if builder.bin_fixture else DAP_BIN
    moves_in(replica, builder, bin_dir)


ADOPTION = """
import asyncio, json, sys
import asyncpg
from cd2.dap_child.adoption import record_layout_version

async def main(url):
    conn = await asyncpg.connect(url)
    try:
        print(json.dumps(await record_layout_version(conn)))
    finally:
        await conn.close()

asyncio.run(main(sys.argv[1]))
"""


@pytest.mark.parametrize(
    "setup, recorded",
    [
        pytest.param("", False, id="empty-database"),
        pytest.param("SYNC; VERSION", False, id="no-table-initialized"),
        pytest.param("SYNC; VERSION; ROW", True, id="built-without-version_upgrade"),
        pytest.param("SYNC; VERSION; ROW; RECORDED", False, id="version-recorded"),
        pytest.param("SYNC; VERSION; ROW; DAP_META", False, id="pre-1.0-layout-left-to-the-client"),
    ],
)
def test_the_layout_version_is_recorded_only_for_a_1x_replica_without_one(database_url, setup, recorded):
    statements = {
        "SYNC": "CREATE SCHEMA instructure_dap; CREATE TABLE instructure_dap.table_sync (source_table text)",
        "VERSION": "CREATE TABLE instructure_dap.database_version (version int PRIMARY KEY)",
        "ROW": "INSERT INTO instructure_dap.table_sync VALUES ('accounts')",
        "RECORDED": "INSERT INTO instructure_dap.database_version VALUES (1)",
        "DAP_META": "CREATE SCHEMA canvas; CREATE TABLE canvas.dap_meta (source_table text)",
    }
    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        for step in filter(None, (part.strip() for part in setup.split(";"))):
            cur.execute(statements[step])
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO_ROOT / "plugins")}
    result = subprocess.run(
        [str(DAP_PYTHON), "-c", ADOPTION, database_url], env=env, capture_output=True, text=True, check=True
    )
    assert json.loads(result.stdout) is recorded
    if "VERSION" in setup:
        with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
            cur.execute("SELECT version FROM instructure_dap.database_version")
            assert [row[0] for row in cur.fetchall()] == ([1] if recorded or "RECORDED" in setup else [])
