"""The real ``dap`` CLI and the real ``SQLReplicator`` replicate every built-in table from the emulator
into PostgreSQL, across clock advances, and the replica equals the emulator's truth after each step."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from local_dap.emulator.builtin import builtin_tables
from local_dap.truth import replica_truth
from tests.local_dap.emulator.conftest import run_dap, run_library

BUILTIN = {}
for _t in builtin_tables():
    BUILTIN.setdefault(_t.namespace, []).append(_t.name)


def _assert_replica_equals_truth(emulator, database_url: str) -> None:
    for namespace, tables in BUILTIN.items():
        for table in tables:
            expected = emulator.truth(namespace, table)
            assert replica_truth(database_url, namespace, table) == expected, f"{namespace}.{table}"


def test_cli_replicates_every_builtin_table_across_advances(emulator, database_url):
    listed = run_dap(emulator, "list", "--namespace", "canvas")
    assert listed.returncode == 0, listed.output
    assert all(name in listed.output for name in BUILTIN["canvas"])

    for namespace, tables in BUILTIN.items():
        init = run_dap(emulator, "initdb", "--namespace", namespace, "--table", ",".join(tables),
                       "--connection-string", database_url)  # fmt: skip
        assert init.returncode == 0, init.output
    _assert_replica_equals_truth(emulator, database_url)

    kinds = {"insert": 0, "update": 0, "soft_delete": 0, "delete": 0}
    for _ in range(3):
        made = emulator.advance(changes=12)
        for counts in made["changes"].values():
            for kind, n in counts.items():
                kinds[kind] += n
        for namespace, tables in BUILTIN.items():
            sync = run_dap(emulator, "syncdb", "--namespace", namespace, "--table", ",".join(tables),
                           "--connection-string", database_url)  # fmt: skip
            assert sync.returncode == 0, sync.output
        _assert_replica_equals_truth(emulator, database_url)
    assert all(n > 0 for n in kinds.values()), kinds

    listdb = run_dap(emulator, "listdb", "--namespace", "canvas", "--connection-string", database_url)
    assert listdb.returncode == 0, listdb.output
    assert "accounts" in listdb.output and "submissions" in listdb.output

    dropped = run_dap(emulator, "dropdb", "--namespace", "catalog", "--table", "products",
                      "--connection-string", database_url)  # fmt: skip
    assert dropped.returncode == 0, dropped.output
    conn = __import__("psycopg2").connect(database_url)
    with conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('catalog.products'), count(*) FROM instructure_dap.table_sync "
                    "WHERE source_namespace = 'catalog'")  # fmt: skip
        assert cur.fetchone() == (None, 0)
    conn.close()


def test_library_replicates_every_builtin_table_across_advances(emulator, postgres_server):
    """One table per process, as facts.md requires; each table in its own database so they run in parallel."""
    labels = [(ns, t) for ns, tables in BUILTIN.items() for t in tables]
    urls = {label: postgres_server.create_database(f"lib_{label[0]}_{label[1]}") for label in labels}

    def replicate(action: str) -> None:
        with ThreadPoolExecutor(4) as pool:
            results = list(pool.map(lambda label: run_library(emulator, action, *label, urls[label]), labels))
        assert all(r["ok"] for r in results), results
        for (ns, table), url in urls.items():
            assert replica_truth(url, ns, table) == emulator.truth(ns, table), f"{ns}.{table} after {action}"

    replicate("init")
    for _ in range(2):
        emulator.advance(changes=15)
        replicate("sync")
