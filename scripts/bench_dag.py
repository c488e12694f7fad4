"""Benchmark cd2_replica against the plain ``dap`` CLI (not a test; prints numbers and targets).

1. Wall time of our init task for a 1M-row emulator table vs ``dap initdb`` on the same data
   (target: within 1.10x).
2. Peak RSS while initializing 100k vs 1M rows (target: within 1.5x), for the DAP child process (where
   the data flows) and for the whole ``airflow dags test`` process tree.
3. Parse time of dags/cd2_replica.py vs an empty DAG file (target: within 1.2x).

Run with the Airflow environment's interpreter: ``.venv/airflow-3.3.1/bin/python scripts/bench_dag.py``.
The stock client loads ~3,200 rows/s, so the CLI's 1M-row init alone takes several minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from local_dap.airflow_home import (  # noqa: E402
    AIRFLOW_PYTHON,
    AirflowEnvironment,
    dap_connection,
    postgres_connection,
)
from local_dap.control import start_emulator  # noqa: E402
from local_dap.paths import DAP_BIN  # noqa: E402
from local_dap.postgres import temporary_server  # noqa: E402

EMPTY_DAG = """
from airflow.sdk import dag


@dag(dag_id="empty", schedule=None, catchup=False)
def empty():
    pass


empty()
"""

PARSE_PROBE = """
import sys, time
from airflow.dag_processing.dagbag import DagBag
started = time.perf_counter()
bag = DagBag(dag_folder=sys.argv[1])
elapsed = time.perf_counter() - started
assert not bag.import_errors, bag.import_errors
print(elapsed)
"""


def init_with_dag(airflow: AirflowEnvironment, server, emulator, table: str) -> dict:
    """Initialize ``table`` through the DAG; return the init task's duration and peak memory figures."""
    database = f"bench_dag_{int(time.time())}"
    server.create_database(database)
    connections = {
        "dap_default": dap_connection(emulator),
        "cd2_postgres": postgres_connection(server.url(database)),
    }
    result = airflow.dags_test(connections=connections, config={"include": [table]}, timeout=3600)
    if result.state != "success":
        raise SystemExit(f"DAG run failed:\n{result.output[-5000:]}")
    init = airflow.xcom(result.run_id, "table.init", map_index=0)
    (duration,) = airflow._query(
        "SELECT duration FROM task_instance WHERE run_id = ? AND task_id = 'table.init'", result.run_id
    )[0]
    return {
        "init_task_seconds": duration,
        "child_seconds": init["duration_seconds"],
        "child_peak_rss_mb": init["peak_rss_mb"],
        "tree_peak_rss_mb": airflow.last_peak_rss_mb,
        "rows": init["rows"],
    }


def init_with_cli(server, emulator, table: str) -> float:
    namespace, name = table.split(".")
    database = f"bench_cli_{int(time.time())}"
    url = server.create_database(database)
    env = emulator.client_env()
    started = time.monotonic()
    subprocess.run(
        [str(DAP_BIN / "dap"), "--no-tracking", "--non-interactive", "initdb", "--namespace", namespace,
         "--table", name, "--connection-string", url],
        env=env, check=True, capture_output=True,
    )  # fmt: skip
    return time.monotonic() - started


def parse_seconds(path: Path, airflow: AirflowEnvironment, repeats: int) -> tuple[float, float]:
    """Median seconds to parse ``path``: with Airflow already imported, and as a whole fresh process."""
    times, process_times = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        completed = subprocess.run(
            [str(AIRFLOW_PYTHON), "-c", PARSE_PROBE, str(path)],
            env=airflow.base_env(),
            capture_output=True,
            text=True,
            check=True,
        )
        process_times.append(time.perf_counter() - started)
        times.append(float(completed.stdout.strip().splitlines()[-1]))
    return statistics.median(times), statistics.median(process_times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="canvas.users")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--small-rows", type=int, default=100_000)
    parser.add_argument("--parse-repeats", type=int, default=7)
    parser.add_argument("--skip-cli", action="store_true", help="skip the (slow) plain CLI baseline")
    args = parser.parse_args()

    airflow = AirflowEnvironment.create()
    report: dict = {}

    with tempfile.TemporaryDirectory() as folder:
        empty = Path(folder) / "empty_dag.py"
        empty.write_text(EMPTY_DAG)
        ours, ours_process = parse_seconds(REPO_ROOT / "dags" / "cd2_replica.py", airflow, args.parse_repeats)
        baseline, baseline_process = parse_seconds(empty, airflow, args.parse_repeats)
    report["parse"] = {
        "cd2_replica_s": ours,
        "empty_s": baseline,
        "cd2_replica_process_s": ours_process,
        "empty_process_s": baseline_process,
    }
    print(f"Parse time (DagBag, Airflow already imported): cd2_replica.py {ours * 1000:.0f} ms vs empty DAG "
          f"{baseline * 1000:.0f} ms = {ours / baseline:.2f}x (target <= 1.2x)", flush=True)  # fmt: skip
    print(f"Parse time (fresh process: import Airflow, DagBag): cd2_replica.py {ours_process:.2f} s vs "
          f"empty DAG {baseline_process:.2f} s = {ours_process / baseline_process:.2f}x (target <= 1.2x)",
          flush=True)  # fmt: skip

    with temporary_server() as server, start_emulator(rows=args.small_rows, job_polls=0) as emulator:
        small = init_with_dag(airflow, server, emulator, args.table)
        print(f"DAG init, {small['rows']} rows: task {small['init_task_seconds']:.1f} s, "
              f"child peak RSS {small['child_peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
        emulator.reset(rows=args.rows)
        large = init_with_dag(airflow, server, emulator, args.table)
        print(f"DAG init, {large['rows']} rows: task {large['init_task_seconds']:.1f} s, "
              f"child peak RSS {large['child_peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
        report |= {"dag_small": small, "dag_large": large}
        child_ratio = large["child_peak_rss_mb"] / small["child_peak_rss_mb"]
        tree_ratio = large["tree_peak_rss_mb"] / small["tree_peak_rss_mb"]
        print(f"Peak RSS {args.rows} vs {args.small_rows} rows: DAP child {large['child_peak_rss_mb']:.0f} / "
              f"{small['child_peak_rss_mb']:.0f} MB = {child_ratio:.2f}x; airflow process tree "
              f"{large['tree_peak_rss_mb']:.0f} / {small['tree_peak_rss_mb']:.0f} MB = {tree_ratio:.2f}x "
              "(target <= 1.5x)", flush=True)  # fmt: skip
        if not args.skip_cli:
            cli = init_with_cli(server, emulator, args.table)
            ratio = large["init_task_seconds"] / cli
            report["cli_large_seconds"] = round(cli, 1)
            print(f"Init of {args.rows} rows: our init task {large['init_task_seconds']:.1f} s vs plain "
                  f"`dap initdb` {cli:.1f} s = {ratio:.2f}x (target <= 1.10x)", flush=True)  # fmt: skip
            # The same with the client's stock reader: what our wrapping itself costs.
            os.environ["CD2_ACCELERATED_READER"] = "0"
            stock = init_with_dag(airflow, server, emulator, args.table)
            report["dag_large_stock_reader"] = stock
            print(f"Init of {args.rows} rows with the stock reader (CD2_ACCELERATED_READER=0): our init task "
                  f"{stock['init_task_seconds']:.1f} s vs plain `dap initdb` {cli:.1f} s = "
                  f"{stock['init_task_seconds'] / cli:.2f}x (target <= 1.10x)", flush=True)  # fmt: skip
    airflow.remove()
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("CD2_DAP_PYTHON", str(DAP_BIN / "python"))
    raise SystemExit(main())
