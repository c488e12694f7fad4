"""Writes behind the reader in the DAP child's streaming sync: the next object read while PostgreSQL
writes the last batch, and an object written in quarter batches; the same replica either way.

Everything runs the real client over HTTP against the emulator into a real PostgreSQL, through
``replicate_driver.py`` or :class:`DapHook` (the product's own child process).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cd2.contract import Action
from cd2.hooks.dap import DapHook
from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.control import start_emulator
from local_dap.truth import replica_truth
from tests.plugins.cd2.dap_child import driving
from tests.plugins.cd2.dap_child.driving import MODES, NS, run, run_in_mode, table_sync_row
from tests.support.paths import DAP_PYTHON

HELD_KEY = 81_212
# Every INSERT into the synced table (the upsert of a batch) waits for an advisory lock the test holds.
HOLD_INSERTS = f"""
CREATE OR REPLACE FUNCTION wait_for_the_test() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_advisory_xact_lock_shared({HELD_KEY}); RETURN NULL; END $$;
CREATE TRIGGER wait_for_the_test BEFORE INSERT ON {NS}.users FOR EACH STATEMENT
EXECUTE FUNCTION wait_for_the_test();
"""


@pytest.fixture
def parted_emulator():
    """Jobs of many small objects (40 rows each)."""
    with start_emulator(seed=5, rows=1000, part_rows=40) as emulator:
        yield emulator


def downloads(emulator, table: str) -> int:
    return sum(
        1
        for request in emulator.requests()
        if request.get("endpoint") == "download"
        and request.get("table") == table
        and request.get("status") == 200
    )


def test_a_sync_reads_the_next_object_while_postgresql_writes_the_last(
    parted_emulator, database_url, monkeypatch
) -> None:
    """With batch 1's upsert held in the server, the child goes on: it reads object 2 (so object 3, the
    next prefetch, downloads), then waits; released, the sync completes and equals the source."""
    import psycopg2

    monkeypatch.setenv("AIRFLOW_CONN_DAP_DEFAULT", json.dumps(dap_connection(parted_emulator)))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CD2_POSTGRES", json.dumps(postgres_connection(database_url + "?sslmode=disable"))
    )
    monkeypatch.setenv("CD2_DAP_PYTHON", str(DAP_PYTHON))
    monkeypatch.setenv("CD2_FAST_SYNC", "0")  # the write-behind serves the client's loader
    hook = DapHook()
    run(hook, Action.INIT, "users")
    watermark = table_sync_row(database_url, "users")
    parted_emulator.advance(changes=200, tables=["users"], change_mix={"update": 90, "delete": 5})
    parted_emulator.clear_requests()

    holder = psycopg2.connect(database_url)
    holder.autocommit = True
    try:
        with holder.cursor() as cur:
            cur.execute(HOLD_INSERTS)
            cur.execute("SELECT pg_advisory_lock(%s)", (HELD_KEY,))
        with ThreadPoolExecutor(1) as pool:
            sync = pool.submit(run, hook, Action.SYNC, "users")

            def held_upserts() -> int:
                with holder.cursor() as cur:
                    cur.execute(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event = 'advisory' AND query ILIKE 'INSERT INTO%users%'"
                    )
                    return cur.fetchone()[0]

            deadline = time.monotonic() + 120
            while not (held_upserts() and downloads(parted_emulator, "users") >= 3):
                assert not sync.done(), sync.result()
                assert time.monotonic() < deadline, (held_upserts(), downloads(parted_emulator, "users"))
                time.sleep(0.05)
            time.sleep(1)  # the child has nothing more to do until batch 1 is written
            assert held_upserts() == 1, "one write at a time"
            assert downloads(parted_emulator, "users") == 3, (
                "one object read ahead of the write, one prefetched"
            )
            assert table_sync_row(database_url, "users") == watermark
            with holder.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (HELD_KEY,))
            assert sync.result(timeout=300).outcome == "synced"
        assert downloads(parted_emulator, "users") >= 4, "the job had more objects than were read ahead"
        with holder.cursor() as cur:
            cur.execute(f"DROP TRIGGER wait_for_the_test ON {NS}.users")
    finally:
        holder.close()
    assert parted_emulator.truth(NS, "users") == replica_truth(database_url, NS, "users")
    assert table_sync_row(database_url, "users") != watermark


def test_a_streaming_sync_writes_an_object_in_quarter_batches(postgres_server) -> None:
    """One incremental object of 30,000 rows: written in the streaming sync's smaller batches (so reading
    one overlaps writing the last), in the client's one batch of up to 100,000 otherwise; the same
    replica either way."""
    changed = 30_000
    urls = {mode: postgres_server.create_database(f"quarter_batches_{mode}") for mode in MODES}
    executions, batch_rows, truths = {}, {}, {}
    with start_emulator(seed=9, rows=500) as emulator:
        for mode, url in urls.items():
            run_in_mode(emulator, url, "init", NS, "accounts", mode)
            driving.count_statements(postgres_server, url, f"{NS}.accounts")
        emulator.advance(changes=changed, tables=[f"{NS}.accounts"], change_mix={"insert": 1})
        for mode, url in urls.items():
            batch_rows[mode] = run_in_mode(emulator, url, "sync", NS, "accounts", mode)["sync_batch_rows"]
            executions[mode] = driving.statement_executions(postgres_server, url)["INSERT"]
            truths[mode] = replica_truth(url, NS, "accounts")
        truth = emulator.truth(NS, "accounts")
    assert batch_rows["streaming"] < changed <= batch_rows["download_then_load"], batch_rows
    assert executions == {mode: -(-changed // rows) for mode, rows in batch_rows.items()}
    assert executions["streaming"] > 1
    assert truths["streaming"] == truths["download_then_load"] == truth
    assert truth.count == 500 + changed
