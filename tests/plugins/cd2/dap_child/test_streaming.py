"""Object streaming in the DAP child: same replica as the client's own path, truncated downloads caught.

Everything runs the real client over HTTP against the emulator into a real PostgreSQL: the equivalence
through ``replicate_driver.py`` (two modes side by side), the rest through :class:`DapHook` (the product's
own child process).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cd2.contract import Action, ErrorCategory
from cd2.hooks.dap import DapHook, DapTransientError
from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.control import start_emulator
from local_dap.emulator.builtin import builtin_tables
from local_dap.truth import replica_truth
from tests.plugins.cd2.dap_child.driving import MODES, NS, run, run_in_mode, table_sync_row
from tests.support.paths import DAP_PYTHON

HERE = Path(__file__).resolve().parent
BUILTIN_TABLES = [(t.namespace, t.name) for t in builtin_tables()]


@pytest.fixture(scope="module")
def replicas(postgres_server):
    """Every built-in table, init then sync, in two databases: streaming and download-then-load.

    Returns ``{(operation, namespace, table): {mode: (driver result, truth)}}`` and the number of object
    URLs the emulator handed out per (operation, table) in the streaming run.
    """
    urls = {mode: postgres_server.create_database(f"streaming_{mode}") for mode in MODES}
    outcomes: dict[tuple, dict] = {}

    def replicate_all(operation: str, mode: str) -> None:
        for namespace, table in BUILTIN_TABLES:
            result = run_in_mode(emulator, urls[mode], operation, namespace, table, mode)
            truth = replica_truth(urls[mode], namespace, table)
            outcomes.setdefault((operation, namespace, table), {})[mode] = (result, truth)

    # Three parts per snapshot and two per incremental: object boundaries are crossed.
    with start_emulator(seed=7, rows=250, part_rows=100) as emulator, ThreadPoolExecutor(2) as pool:
        for future in [pool.submit(replicate_all, "init", mode) for mode in MODES]:
            future.result()
        init_objects = _objects_per_table(emulator)
        emulator.clear_requests()
        emulator.advance(changes=150)
        for future in [pool.submit(replicate_all, "sync", mode) for mode in MODES]:
            future.result()
        sync_objects = _objects_per_table(emulator)
    return outcomes, {"init": init_objects, "sync": sync_objects}


def _objects_per_table(emulator) -> dict[str, int]:
    counts: dict[str, int] = {}
    for request in emulator.requests():
        if request.get("endpoint") == "download" and request.get("status") == 200:
            counts[request["table"]] = counts.get(request["table"], 0) + 1
    return counts


@pytest.mark.parametrize("operation", ["init", "sync"])
@pytest.mark.parametrize(("namespace", "table"), BUILTIN_TABLES, ids=[t for _, t in BUILTIN_TABLES])
def test_streamed_replica_equals_the_download_then_load_one(replicas, operation, namespace, table) -> None:
    outcomes, objects = replicas
    (plain, plain_truth), (streamed, streamed_truth) = (
        outcomes[(operation, namespace, table)][mode] for mode in MODES
    )
    assert plain["streaming"] == {"download": True, "streaming": False}
    assert streamed["streaming"] == {"download": True, "streaming": True}
    assert objects[operation][table] >= 2 * 2, "several objects per job, in both databases"
    assert plain_truth.count > 0
    assert streamed_truth == plain_truth, "count and checksum of the replicated table"


# -- through the product's child process --------------------------------------------------------------


@pytest.fixture
def hook(dap_emulator, database_url, monkeypatch) -> DapHook:
    dap_emulator.reset()
    monkeypatch.setenv("AIRFLOW_CONN_DAP_DEFAULT", json.dumps(dap_connection(dap_emulator)))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CD2_POSTGRES", json.dumps(postgres_connection(database_url + "?sslmode=disable"))
    )
    monkeypatch.setenv("CD2_DAP_PYTHON", str(DAP_PYTHON))
    return DapHook()


def table_rows(database_url: str, table: str) -> int | None:
    import psycopg2

    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f"{NS}.{table}",))
        if cur.fetchone()[0] is None:
            return None
        cur.execute(f'SELECT count(*) FROM "{NS}"."{table}"')
        return cur.fetchone()[0]


@pytest.mark.parametrize("streaming", ["1", "0"])
def test_a_download_cut_at_a_line_boundary_fails_transient_and_loads_nothing(
    hook, dap_emulator, database_url, monkeypatch, streaming
) -> None:
    monkeypatch.setenv("CD2_STREAMING", streaming)
    dap_emulator.inject_fault("truncated_gzip", table="users", line_boundary=True)
    with pytest.raises(DapTransientError, match="TruncatedDownloadError") as failure:
        run(hook, Action.INIT, "users")
    assert "ended before its gzip stream did" in str(failure.value)
    assert failure.value.error.category is ErrorCategory.TRANSIENT
    assert dap_emulator.faults()[0]["fired"] == 1
    assert table_sync_row(database_url, "users") is None
    assert not table_rows(database_url, "users"), "no row of the cut download was loaded"

    assert run(hook, Action.INIT, "users").outcome == "initialized"
    assert dap_emulator.truth(NS, "users") == replica_truth(database_url, NS, "users")


@pytest.mark.parametrize("streaming", ["1", "0"])
def test_a_sync_download_cut_at_a_line_boundary_moves_no_watermark(
    hook, dap_emulator, database_url, monkeypatch, streaming
) -> None:
    monkeypatch.setenv("CD2_STREAMING", streaming)
    run(hook, Action.INIT, "users")
    before = replica_truth(database_url, NS, "users")
    watermark = table_sync_row(database_url, "users")
    dap_emulator.advance(changes=20)
    dap_emulator.inject_fault("truncated_gzip", table="users", line_boundary=True)
    with pytest.raises(DapTransientError, match="TruncatedDownloadError"):
        run(hook, Action.SYNC, "users")
    assert table_sync_row(database_url, "users") == watermark, "watermark not moved"
    assert replica_truth(database_url, NS, "users") == before, "nothing of the cut download was applied"

    assert run(hook, Action.SYNC, "users").outcome == "synced"
    assert dap_emulator.truth(NS, "users") == replica_truth(database_url, NS, "users")
