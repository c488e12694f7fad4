"""Object streaming in the DAP child: same replica as the client's own path, truncated downloads caught,
a small ``$TMPDIR`` enough for a big table, and one object too big for it refused before the table is touched.

Everything runs the real client over HTTP against the emulator into a real PostgreSQL: the equivalence
through ``replicate_driver.py`` (two modes side by side), the rest through :class:`DapHook` (the product's
own child process).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cd2.contract import Action, ErrorCategory, TableJob
from cd2.hooks.dap import DapHook, DapPermanentError, DapTransientError
from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.control import start_emulator
from local_dap.emulator.builtin import builtin_tables
from local_dap.truth import replica_truth
from tests.plugins.cd2.dap_child import driving
from tests.support.paths import DAP_PYTHON

HERE = Path(__file__).resolve().parent
BUILTIN_TABLES = [(t.namespace, t.name) for t in builtin_tables()]
MODES = {"download_then_load": "0", "streaming": "1"}


def run_driver(emulator, database_url: str, operation: str, namespace: str, table: str, mode: str) -> dict:
    return driving.run_driver(emulator, database_url, operation, namespace, table, CD2_STREAMING=MODES[mode])


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
            result = run_driver(emulator, urls[mode], operation, namespace, table, mode)
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

NS = "canvas"


@pytest.fixture
def hook(dap_emulator, database_url, monkeypatch) -> DapHook:
    dap_emulator.reset()
    monkeypatch.setenv("AIRFLOW_CONN_DAP_DEFAULT", json.dumps(dap_connection(dap_emulator)))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CD2_POSTGRES", json.dumps(postgres_connection(database_url + "?sslmode=disable"))
    )
    monkeypatch.setenv("CD2_DAP_PYTHON", str(DAP_PYTHON))
    return DapHook()


def run(hook: DapHook, action: Action, table: str):
    return hook.run_table_job(TableJob(action=action, namespace=NS, table=table))


def table_sync_row(database_url: str, table: str) -> tuple | None:
    import psycopg2

    with psycopg2.connect(database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('instructure_dap.table_sync') IS NOT NULL")
        if not cur.fetchone()[0]:
            return None
        cur.execute(
            "SELECT timestamp, schema_version FROM instructure_dap.table_sync "
            "WHERE source_namespace = %s AND source_table = %s",
            (NS, table),
        )
        return cur.fetchone()


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


# -- writes behind the reader ---------------------------------------------------------------------------

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
            run_driver(emulator, url, "init", NS, "accounts", mode)
            driving.count_statements(postgres_server, url, f"{NS}.accounts")
        emulator.advance(changes=changed, tables=[f"{NS}.accounts"], change_mix={"insert": 1})
        for mode, url in urls.items():
            batch_rows[mode] = run_driver(emulator, url, "sync", NS, "accounts", mode)["sync_batch_rows"]
            executions[mode] = driving.statement_executions(postgres_server, url)["INSERT"]
            truths[mode] = replica_truth(url, NS, "accounts")
        truth = emulator.truth(NS, "accounts")
    assert batch_rows["streaming"] < changed <= batch_rows["download_then_load"], batch_rows
    assert executions == {mode: -(-changed // rows) for mode, rows in batch_rows.items()}
    assert executions["streaming"] > 1
    assert truths["streaming"] == truths["download_then_load"] == truth
    assert truth.count == 500 + changed


# -- a small $TMPDIR ------------------------------------------------------------------------------------

TMPFS_MIB = 2


@pytest.fixture
def small_tmpdir(monkeypatch):
    """``TMPDIR`` on a 2 MiB tmpfs (the tests run as root in CI and here); skipped where mount is refused."""
    folder = tempfile.mkdtemp(prefix="cd2-small-tmp-")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m", "tmpfs", folder],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        os.rmdir(folder)
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    monkeypatch.setenv("TMPDIR", folder)
    try:
        yield folder
    finally:
        subprocess.run(["umount", folder], check=False)
        os.rmdir(folder)


@pytest.fixture
def big_emulator():
    """Enough accounts rows that their TSV is several times the small TMPDIR, in parts of ~1/5 of it."""
    with start_emulator(seed=3, rows=25_000, part_rows=2_000) as emulator:
        yield emulator


@pytest.fixture
def big_hook(big_emulator, database_url, monkeypatch) -> DapHook:
    monkeypatch.setenv("AIRFLOW_CONN_DAP_DEFAULT", json.dumps(dap_connection(big_emulator)))
    monkeypatch.setenv(
        "AIRFLOW_CONN_CD2_POSTGRES", json.dumps(postgres_connection(database_url + "?sslmode=disable"))
    )
    monkeypatch.setenv("CD2_DAP_PYTHON", str(DAP_PYTHON))
    return DapHook()


def tsv_bytes(emulator, table: str) -> int:
    """The gunzipped size of the table's snapshot as the emulator serves it."""
    import urllib.request
    import zlib

    token_request = urllib.request.Request(
        emulator.base_url + "/ids/auth/login",
        data=b"grant_type=client_credentials",
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "Authorization": "Basic "
            + base64.b64encode(f"{emulator.client_id}:{emulator.client_secret}".encode()).decode(),
        },
    )
    token = json.loads(urllib.request.urlopen(token_request).read())["access_token"]

    def call(method: str, path: str, body) -> dict:
        request = urllib.request.Request(
            emulator.base_url + path,
            data=json.dumps(body).encode() if body is not None else None,
            method=method,
            headers={"Content-Type": "application/json", "Authorization": "Bearer " + token},
        )
        return json.loads(urllib.request.urlopen(request).read())

    job = call("POST", f"/dap/query/{NS}/table/{table}/data", {"format": "tsv", "mode": "condensed"})
    job = call("GET", f"/dap/job/{job['id']}", None)
    total = 0
    for obj in job["objects"]:
        url = call("POST", "/dap/object/url", [obj])["urls"][obj["id"]]["url"]
        total += len(zlib.decompress(urllib.request.urlopen(url).read(), 31))
    return total


def test_a_table_larger_than_tmpdir_initializes_completely(
    big_hook, big_emulator, database_url, small_tmpdir
) -> None:
    size = tsv_bytes(big_emulator, "accounts")
    assert size > 2 * TMPFS_MIB * 1024 * 1024, f"the table's TSV ({size:,} bytes) must exceed TMPDIR"
    result = run(big_hook, Action.INIT, "accounts")
    assert (result.outcome, result.rows) == ("initialized", 25_000)
    assert big_emulator.truth(NS, "accounts") == replica_truth(database_url, NS, "accounts")
    assert os.listdir(small_tmpdir) == [], "nothing left behind in TMPDIR"


def test_an_object_larger_than_tmpdir_fails_fast_and_leaves_the_replica_untouched(
    big_hook, big_emulator, database_url, small_tmpdir, monkeypatch
) -> None:
    monkeypatch.delenv("TMPDIR")  # the first copy is built on the ordinary temp folder
    assert run(big_hook, Action.INIT, "accounts").outcome == "initialized"
    before = replica_truth(database_url, NS, "accounts")
    watermark = table_sync_row(database_url, "accounts")

    big_emulator.advance(changes=20_000)  # one incremental object far larger than the small TMPDIR
    big_emulator.configure(part_rows=1_000_000)
    monkeypatch.setenv("TMPDIR", small_tmpdir)
    with pytest.raises(DapPermanentError, match="DiskSpaceError") as failure:
        run(big_hook, Action.SYNC, "accounts")
    message = str(failure.value)
    assert f"not enough space in TMPDIR {small_tmpdir}" in message
    assert "MiB more" in message and "MiB are free" in message
    assert failure.value.error.category is ErrorCategory.PERMANENT
    assert replica_truth(database_url, NS, "accounts") == before, "previous copy untouched"
    assert table_sync_row(database_url, "accounts") == watermark
    assert os.listdir(small_tmpdir) == []
