"""Benchmark cd2_replica against the plain ``dap`` CLI (not a test; prints numbers and targets).

1. Wall time of our init task for a 1M-row emulator table vs ``dap initdb`` on the same data
   (target: within 1.10x).
2. Peak RSS while initializing 100k vs 1M rows (target: within 1.5x), for the DAP child process (where
   the data flows) and for the whole ``airflow dags test`` process tree.
3. Parse time of dags/cd2_replica.py vs an empty DAG file (target: within 1.2x).

4. With ``--worker-cpu`` (alone, instead of 1-3): the worker's CPU per million rows initialized (target:
   about 2 s, a quarter of the 7.4 s measured before the fast init). ``airflow dags test`` of the DAG
   initializing ``--table`` at each size of ``--worker-cpu-rows`` (default 10,000 and 1,000,000 rows),
   with ``CD2_FAST_INIT=0`` (before) and ``=1`` (after), each run into a fresh database, the emulator's
   part cache warmed first; per run, the CPU seconds (user + system) of all processes of the run: the
   ``airflow dags test`` process and its descendants, the DAP children included; not PostgreSQL's, not
   the emulator's. Then the difference largest - smallest size, before and after: at 1M - 10k rows, the
   worker's CPU per million rows; at other sizes it is also scaled to a million rows.
   ``--worker-cpu-repeats N`` runs each N times (the medians count): a run's fixed cost (importing
   Airflow, parsing, the other tasks) is 15-20 CPU s and, on a busy machine, varies by a few seconds
   from one run to the next, as much as the difference measured; the DAP children's own share of the
   difference (sampled) is printed too.

   How the CPU is counted: every level of the run's process tree waits for its children: this script
   for ``airflow`` (``os.wait4``), ``dags test`` runs the tasks in its own process, and the hook waits
   for each DAP child (``Popen.wait``). So the rusage of this script's waited-for children
   (``getrusage(RUSAGE_CHILDREN)``) before and after the run differs by the exact CPU of the whole tree,
   exited children included. PostgreSQL (started by ``pg_ctl``, not this script's child) and the
   emulator (a child, not waited for during the run) stay out of it. A descendant its parent did not
   wait for would be missing from rusage, so psutil also samples the tree every 100 ms and sums each
   process's last sample: a floor (up to 100 ms of each process's last CPU, and processes shorter than
   that, are missed), printed beside and split into the airflow process and the DAP children; a run
   where it exceeds the rusage figure is flagged.

Run with the Airflow environment's interpreter: ``.venv/airflow-3.3.1/bin/python scripts/bench_dag.py``
(``CD2_DAP_PYTHON`` and ``CD2_TOOLS_BIN`` name the DAP and tools virtualenvs when they are not the
repository's ``.venv``). The worker-CPU measure:
``.venv/airflow-3.3.1/bin/python scripts/bench_dag.py --worker-cpu [--worker-cpu-rows 10000,1000000]``.
The stock client loads ~3,200 rows/s, so the CLI's 1M-row init alone takes several minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "scripts"))

from bench_emulator import serve_snapshot  # noqa: E402

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
    env = emulator.client_env(DAP_CONNECTION_STRING=url)  # the server's password: not in argv
    started = time.monotonic()
    subprocess.run(
        [str(DAP_BIN / "dap"), "--no-tracking", "--non-interactive", "initdb", "--namespace", namespace,
         "--table", name],
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
    parser.add_argument(
        "--worker-cpu",
        action="store_true",
        help="only the worker's CPU per million rows, fast init off and on",
    )
    parser.add_argument("--worker-cpu-rows", default="10000,1000000", help="comma-separated table sizes")
    parser.add_argument("--worker-cpu-repeats", type=int, default=1, help="runs per size and switch (median)")
    args = parser.parse_args()

    airflow = AirflowEnvironment.create()
    if args.worker_cpu:
        try:
            worker_cpu(airflow, args.table, sorted(int(r) for r in args.worker_cpu_rows.split(",")), args)
        finally:
            airflow.remove()
        return 0
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


# -- 4. worker CPU per million rows ------------------------------------------------------------------

SWITCHES = {"0": "off (before)", "1": "on (after)"}
TARGET_CPU_PER_MILLION = 7.4 / 4
SAMPLE_SECONDS = 0.1


class TreeCpu:
    """CPU seconds of the processes this process starts during a ``with`` block, with all their
    descendants: ``rusage`` from this process's waited-for children (exact when every level waits for
    its children), ``sampled`` from psutil (the sum of each process's last sample, by kind)."""

    def __init__(self) -> None:
        self.me = psutil.Process()
        self.last: dict[tuple[int, float], tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _kind(process: psutil.Process) -> str:
        command = " ".join(process.cmdline())
        if "cd2.dap_child" in command:
            return "DAP children"
        return "airflow" if "airflow" in command else process.name()

    def _sample(self) -> None:
        for child in self.me.children():
            if child.pid in self.before:
                continue
            try:
                tree = [child, *child.children(recursive=True)]
            except psutil.Error:
                continue
            for process in tree:
                try:
                    with process.oneshot():
                        key = (process.pid, process.create_time())
                        times = process.cpu_times()
                        kind = self.last[key][0] if key in self.last else self._kind(process)
                        self.last[key] = (kind, times.user + times.system)
                except psutil.Error:
                    continue

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(SAMPLE_SECONDS)

    @staticmethod
    def _children_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> TreeCpu:
        self.before = {child.pid for child in self.me.children()}  # the emulator: not the run's
        self._start = self._children_seconds()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.rusage = self._children_seconds() - self._start
        self._stop.set()
        self._thread.join()
        self.sampled: dict[str, float] = {}
        for kind, seconds in self.last.values():
            self.sampled[kind] = self.sampled.get(kind, 0.0) + seconds


def worker_cpu_run(airflow: AirflowEnvironment, server, emulator, table: str, rows: int, switch: str) -> dict:
    """One ``airflow dags test`` initializing ``table`` with ``CD2_FAST_INIT=switch``: its wall and CPU."""
    database = f"bench_cpu_{rows}_{switch}_{time.monotonic_ns()}"
    server.create_database(database)
    connections = {
        "dap_default": dap_connection(emulator),
        "cd2_postgres": postgres_connection(server.url(database)),
    }
    with TreeCpu() as cpu:
        started = time.monotonic()
        result = airflow.dags_test(
            connections=connections, config={"include": [table]}, env={"CD2_FAST_INIT": switch}, timeout=3600
        )
        wall = time.monotonic() - started
    if result.state != "success":
        raise SystemExit(f"DAG run failed:\n{result.output[-5000:]}")
    init = airflow.xcom(result.run_id, "table.init", map_index=0)
    if init["rows"] != rows:
        raise SystemExit(f"the init loaded {init['rows']} rows, not {rows}")
    if ("fast_init" in (init.get("patches") or [])) != (switch == "1"):
        raise SystemExit(f"CD2_FAST_INIT={switch}, yet the child's active patches were {init.get('patches')}")
    fallback = "not the fast path" in airflow.task_logs(result.run_id)
    return {"wall": wall, "rusage": cpu.rusage, "sampled": cpu.sampled, "fallback": fallback}


def worker_cpu(airflow: AirflowEnvironment, table: str, sizes: list[int], args) -> None:
    """Section 4 (see the module doc): one table of figures, then the differences against the target."""
    namespace, name = table.split(".")
    runs: dict[tuple[int, str], list[dict]] = {}
    print(
        "{} cores, load average (1/5/15 min) {:.1f} {:.1f} {:.1f}".format(os.cpu_count(), *os.getloadavg()),
        flush=True,
    )
    with temporary_server() as server:
        for rows in sizes:
            with start_emulator(rows=rows, job_polls=0) as emulator:
                serve_snapshot(emulator, namespace, name)  # generates and caches the parts
                for _ in range(args.worker_cpu_repeats):
                    for switch in SWITCHES:
                        run = worker_cpu_run(airflow, server, emulator, table, rows, switch)
                        runs.setdefault((rows, switch), []).append(run)
                        print(f"  {rows:,} rows, CD2_FAST_INIT={switch}: wall {run['wall']:.1f} s, CPU "
                              f"{run['rusage']:.2f} s", flush=True)  # fmt: skip
    median = {key: statistics.median(run["rusage"] for run in found) for key, found in runs.items()}
    lines = [
        f"Worker CPU of `airflow dags test` initializing {table} (all processes of the run: airflow and its "
        "DAP children; not PostgreSQL's, not the emulator's)",
        "  (medians of the runs; CPU s: rusage, exact; sampled: psutil, a floor)",
        f"  {'rows':>10}  {'fast init':<13}{'wall s':>8}{'CPU s':>8}   {'sampled: airflow':>16}"
        f"{'DAP children':>14}{'sum':>7}  each run's CPU s",
    ]
    for (rows, switch), found in sorted(runs.items()):
        kinds = {kind for run in found for kind in run["sampled"]}
        sampled = {kind: statistics.median(run["sampled"].get(kind, 0.0) for run in found) for kind in kinds}
        flags = []
        if any(sum(run["sampled"].values()) > run["rusage"] + 0.2 for run in found):
            flags.append("SAMPLED > RUSAGE: a process was not waited for")
        if any(run["fallback"] for run in found):
            flags.append("the table fell back to the client's loader")
        lines.append(
            f"  {rows:>10,}  {SWITCHES[switch]:<13}{statistics.median(r['wall'] for r in found):>8.1f}"
            f"{median[rows, switch]:>8.2f}   {sampled.get('airflow', 0.0):>16.2f}"
            f"{sampled.get('DAP children', 0.0):>14.2f}{sum(sampled.values()):>7.2f}  "
            + ", ".join(f"{run['rusage']:.2f}" for run in found)
            + (f"  ({'; '.join(flags)})" if flags else "")
        )
    small, large = sizes[0], sizes[-1]
    if small != large:
        exact = (small, large) == (10_000, 1_000_000)
        scale = 1.0 if exact else 1_000_000 / (large - small)
        children = {
            key: statistics.median(run["sampled"].get("DAP children", 0.0) for run in found)
            for key, found in runs.items()
        }
        per_million, children_per_million = {}, {}
        for switch in SWITCHES:
            difference = median[large, switch] - median[small, switch]
            per_million[switch] = difference * scale
            children_per_million[switch] = (children[large, switch] - children[small, switch]) * scale
            scaled = "" if exact else f" = {per_million[switch]:.2f} s per million rows (scaled)"
            lines.append(
                f"  {large:,} - {small:,} rows, fast init {SWITCHES[switch]}: {difference:.2f} CPU s{scaled}"
            )
        verdict = "met" if per_million["1"] <= TARGET_CPU_PER_MILLION else "NOT met"
        if not exact:
            verdict += (
                f" (scaled from {large - small:,} rows: within the runs' noise of the fixed cost; the measure "
                "is 1,000,000 - 10,000 rows)"
            )
        ratio = per_million["1"] / per_million["0"] if per_million["0"] > 0 else float("nan")
        lines.append(
            f"  worker CPU per million rows: before {per_million['0']:.2f} s, after {per_million['1']:.2f} s "
            f"(after / before {ratio:.2f}x); target <= about {TARGET_CPU_PER_MILLION:.1f} s (a quarter of "
            f"7.4 s): {verdict}"
        )
        lines.append(
            f"  of which the DAP children (psutil-sampled, median; the airflow process's share is the "
            f"rest): before {children_per_million['0']:.2f} s, after {children_per_million['1']:.2f} s per "
            "million rows"
        )
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    os.environ.setdefault("CD2_DAP_PYTHON", str(DAP_BIN / "python"))
    raise SystemExit(main())
