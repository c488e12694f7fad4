"""Benchmark the DAP client's loader: stock, with our accelerated reader, and a raw COPY of the same rows.

    .venv/airflow-3.3.1/bin/python scripts/bench_loader.py [--sizes 200000,1000000] [--table canvas.scores]

For each size, the DAP API emulator serves a CD2-shaped table with that many rows, and the client
replicates it into PostgreSQL (a throwaway server, or ``CD2_TEST_DATABASE_URL``) in child processes on
the DAP interpreter (tests/plugins/cd2/dap_child/replicate_driver.py), one process per run:

- init: stock client (``CD2_ACCELERATED_READER=0``; the same ``SQLReplicator.initialize`` that
  ``dap initdb`` runs), then with the accelerator, each into its own database; then a raw
  ``COPY ... FROM STDIN`` (text format) of the very TSV files the client loaded, into a copy of the table.
- sync: the emulator updates 10% of the rows and hard-deletes 1% (``SYNC_CHANGE_MIX``), then stock
  (``CD2_ACCELERATED_READER=0 CD2_BULK_UPSERT=0``) and accelerated syncs, and a raw COPY of the same
  incremental files into a staging table.

rows/s is rows in the files / time the client spent reading the downloaded files into the database
(``load``: parse, batches, COPY or upsert/delete); download time is the emulator's speed, not the
client's, and is printed apart. Peak RSS is the accelerated child's (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from local_dap.control import EmulatorProcess, start_emulator  # noqa: E402
from local_dap.paths import DAP_PYTHON  # noqa: E402
from local_dap.postgres import PostgresServer, server_for_tests  # noqa: E402

DRIVER = REPO_ROOT / "tests" / "plugins" / "cd2" / "dap_child" / "replicate_driver.py"
RESULT_PREFIX = "DRIVER_RESULT "
# Changes per row of the table, by kind: the big-tables issue's sync.
SYNC_CHANGE_MIX = {"update": 0.10, "delete": 0.01}


def run_child(
    emulator: EmulatorProcess, url: str, operation: str, table: str, accelerated: bool, keep: Path
) -> dict:
    """One init or sync in a fresh child process; the driver's timings and peak RSS."""
    namespace, name = table.split(".")
    env = emulator.client_env(
        CD2_DATABASE_URL=url,
        CD2_ACCELERATED_READER="1" if accelerated else "0",
        CD2_BULK_UPSERT="1" if accelerated else "0",
        CD2_DRIVER_KEEP_FILES=str(keep),
    )
    started = time.perf_counter()
    result = subprocess.run(
        [str(DAP_PYTHON), str(DRIVER), operation, namespace, name], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        raise RuntimeError(f"{operation} {table} failed:\n{result.stderr[-4000:]}")
    line = next(x for x in result.stdout.splitlines() if x.startswith(RESULT_PREFIX))
    outcome = json.loads(line.removeprefix(RESULT_PREFIX))
    if outcome["accelerated"] != accelerated:
        raise RuntimeError(f"expected accelerated={accelerated}, the child says {outcome}")
    outcome["process_seconds"] = time.perf_counter() - started
    return outcome


def tsv_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.tsv"))


def count_rows(files: list[Path]) -> tuple[int, int]:
    """Rows in the files, and how many of them are deletes (``meta.action`` D)."""
    rows = deletes = 0
    for path in files:
        with path.open("rb") as stream:
            header = stream.readline().rstrip(b"\n").split(b"\t")
            action = header.index(b"meta.action") if b"meta.action" in header else None
            for line in stream:
                rows += 1
                if action is not None and line.split(b"\t", action + 1)[action] == b"D":
                    deletes += 1
    return rows, deletes


def column_name(label: str) -> str:
    """TSV header label to column: ``meta.ts`` -> ``meta_ts``, ``key.id``/``value.x`` -> ``id``/``x``."""
    kind, _, name = label.partition(".")
    return f"meta_{name}" if kind == "meta" else name


def raw_copy_seconds(
    server: PostgresServer, dbname: str, table: str, files: list[Path], staging: bool
) -> float:
    """Time a plain text-format COPY of the files into a copy of the table (meta columns added).

    For init, the copy keeps the table's primary key and NOT NULL constraints, like the real table; for
    sync (``staging``), it is a bare staging table, since delete rows carry NULLs in NOT NULL columns.
    """
    namespace, name = table.split(".")
    target = f'"{namespace}"."raw_copy_{name}"'
    source = f'"{namespace}"."{name}"'
    conn = server.connect(dbname)
    try:
        with conn.cursor() as cur:
            cur.execute(f"DROP TABLE IF EXISTS {target}")
            if staging:
                cur.execute(f"CREATE TABLE {target} AS SELECT * FROM {source} WITH NO DATA")
                cur.execute(f"ALTER TABLE {target} ADD COLUMN meta_ts timestamp, ADD COLUMN meta_action text")
            else:
                cur.execute(f"CREATE TABLE {target} (meta_ts timestamp, LIKE {source} INCLUDING ALL)")
            seconds = 0.0
            for path in files:
                with path.open("rb") as stream:
                    header = stream.readline().rstrip(b"\n").decode().split("\t")
                    columns = ", ".join(f'"{column_name(label)}"' for label in header)
                    started = time.perf_counter()
                    cur.copy_expert(f"COPY {target} ({columns}) FROM STDIN", stream, size=1024 * 1024)
                    seconds += time.perf_counter() - started
            cur.execute(f"DROP TABLE {target}")
            return seconds
    finally:
        conn.close()


def bench_size(server: PostgresServer, rows: int, table: str, work: Path) -> dict:
    """Init and sync of one table of ``rows`` rows: stock, accelerated and raw COPY."""
    urls = {mode: server.create_database(f"bench_{mode}_{rows}") for mode in ("stock", "accelerated")}
    results: dict[str, dict] = {}
    with start_emulator(seed=1, rows=rows) as emulator:
        for operation in ("init", "sync"):
            if operation == "sync":
                changes = int(rows * sum(SYNC_CHANGE_MIX.values()))
                emulator.advance(changes=changes, tables=[table], change_mix=SYNC_CHANGE_MIX)
            runs = {}
            for mode in ("stock", "accelerated"):
                keep = work / f"{rows}-{operation}-{mode}"
                runs[mode] = run_child(emulator, urls[mode], operation, table, mode == "accelerated", keep)
                print(f"  {rows:>9,} {operation} {mode:<11} {json.dumps(runs[mode])}", flush=True)
            files = tsv_files(work / f"{rows}-{operation}-accelerated")
            file_rows, deletes = count_rows(files)
            stock_rows, _ = count_rows(tsv_files(work / f"{rows}-{operation}-stock"))
            if stock_rows != file_rows:
                raise RuntimeError(
                    f"stock and accelerated runs got different files: {stock_rows} != {file_rows}"
                )
            copy_seconds = raw_copy_seconds(
                server, urls["accelerated"].rsplit("/", 1)[1], table, files, staging=operation == "sync"
            )
            results[operation] = {"rows": file_rows, "deletes": deletes, "copy_seconds": copy_seconds, **runs}
            for mode in ("stock", "accelerated"):
                shutil.rmtree(work / f"{rows}-{operation}-{mode}")
    return results


def rate(rows: int, seconds: float) -> float:
    return rows / seconds if seconds > 0 else float("inf")


def print_report(table: str, results: dict[int, dict]) -> None:
    for operation in ("init", "sync"):
        print(f"\n{table} {operation}: rows/s while loading the downloaded files (download time apart)")
        print(
            f"{'rows':>9} {'deletes':>8} {'stock':>9} {'ours':>9} {'raw COPY':>9} "
            f"{'ours/stock':>10} {'COPY/ours':>9} {'download s':>10} {'RSS MiB':>8}"
        )
        for size in sorted(results):
            r = results[size][operation]
            stock = rate(r["rows"], r["stock"]["load_seconds"])
            ours = rate(r["rows"], r["accelerated"]["load_seconds"])
            copy = rate(r["rows"], r["copy_seconds"])
            print(
                f"{r['rows']:>9,} {r['deletes']:>8,} {stock:>9,.0f} {ours:>9,.0f} {copy:>9,.0f} "
                f"{ours / stock:>9.1f}x {copy / ours:>8.2f}x {r['accelerated']['download_seconds']:>10.1f} "
                f"{r['accelerated']['max_rss_kib'] / 1024:>8.0f}"
            )
    if len(results) > 1:
        smallest, largest = min(results), max(results)
        for operation in ("init", "sync"):
            small = results[smallest][operation]["accelerated"]["max_rss_kib"]
            large = results[largest][operation]["accelerated"]["max_rss_kib"]
            print(
                f"\npeak RSS of the accelerated {operation} child: {small / 1024:.0f} MiB at {smallest:,} rows, "
                f"{large / 1024:.0f} MiB at {largest:,} rows ({large / small:.2f}x)"
            )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200000,1000000", help="comma-separated row counts")
    parser.add_argument("--table", default="canvas.scores", help="built-in emulator table (no array columns)")
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    print(f"client {DAP_PYTHON}, table {args.table}, sizes {sizes}, {os.cpu_count()} CPUs", flush=True)
    print("load average at start (1/5/15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()), flush=True)
    results = {}
    with server_for_tests() as server, tempfile.TemporaryDirectory(prefix="cd2-bench-") as work:
        for rows in sizes:
            results[rows] = bench_size(server, rows, args.table, Path(work))
    print("load average at end (1/5/15 min): {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print_report(args.table, results)


if __name__ == "__main__":
    main()
