"""Peak memory of one table task as MWAA runs it: task supervisor + task process + DAP child together.

    .venv/airflow-3.3.1/bin/python scripts/bench_task_memory.py [--rows 30000,1000000] [--table canvas.accounts]

Prints figures; not a test. For each size, a real deployment (``local_dap.deployment``: PostgreSQL
metadata DB, LocalExecutor, api-server, scheduler, dag-processor) runs the DAG for one table of that
many rows (sync says init needed, then init), triggered through /api/v2. Every 100 ms the script finds
each running DAP child (``cd2.dap_child`` in its command line), its parent (the task process) and its
grandparent (the task supervisor the executor forked), and adds up their resident memory (VmRSS, and
PSS, which counts pages they share once); it prints the peak of those sums, and of each part, over the run.
"""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from local_dap.airflow_home import dap_connection, postgres_connection  # noqa: E402
from local_dap.control import start_emulator  # noqa: E402
from local_dap.deployment import Deployment  # noqa: E402
from local_dap.postgres import temporary_server  # noqa: E402
from local_dap.truth import replica_truth  # noqa: E402

MARK = b"cd2.dap_child"


def _status(pid: int) -> dict[str, str]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def _rss_kib(fields: dict[str, str]) -> int:
    return int(fields.get("VmRSS", "0 kB").split()[0])


def _pss_kib(pid: int) -> int:
    """Proportional set size: shared pages (the forked supervisor and task share many) counted once."""
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


class TaskMemory(threading.Thread):
    """Peak of (supervisor + task process + DAP child) resident memory, sampled from /proc."""

    def __init__(self, sessions: set[int], interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.sessions = (
            sessions  # the deployment's components: other DAP children on the machine are not ours
        )
        self.interval = interval
        self.peak = {"total": 0, "total_pss": 0, "supervisor": 0, "task": 0, "child": 0}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    if MARK not in (entry / "cmdline").read_bytes():
                        continue
                    stat = (entry / "stat").read_text()
                    if int(stat[stat.rindex(")") + 2 :].split()[3]) not in self.sessions:
                        continue
                    child = _status(int(entry.name))
                    task = _status(int(child["PPid"]))
                    supervisor = _status(int(task["PPid"]))
                    pss = sum(_pss_kib(int(x)) for x in (entry.name, child["PPid"], task["PPid"]))
                except (OSError, KeyError, ValueError):
                    continue
                parts = {"supervisor": _rss_kib(supervisor), "task": _rss_kib(task), "child": _rss_kib(child)}
                for name, kib in parts.items():
                    self.peak[name] = max(self.peak[name], kib)
                self.peak["total"] = max(self.peak["total"], sum(parts.values()))
                self.peak["total_pss"] = max(self.peak["total_pss"], pss)

    def stop(self) -> dict[str, int]:
        self._stop_event.set()
        self.join()
        return self.peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="30000,1000000")
    parser.add_argument("--table", default="canvas.accounts")
    args = parser.parse_args()
    namespace, name = args.table.split(".")
    with temporary_server() as pg:
        for rows in [int(r) for r in args.rows.split(",")]:
            url = pg.create_database(f"memory_{rows}")
            with start_emulator(rows=rows) as emulator:
                connections = {
                    "dap_default": dap_connection(emulator),
                    "cd2_postgres": postgres_connection(url + "?sslmode=disable"),
                    "aws_default": {"conn_type": "aws"},
                }
                config = {"include": [args.table]}
                with Deployment.start(pg, connections=connections, config=config) as airflow:
                    airflow.unpause()
                    sampler = TaskMemory({p.pid for p in airflow.processes.values()})
                    sampler.start()
                    run_id = airflow.trigger(conf={"tables": [args.table]})
                    state = airflow.wait_for_run(run_id, timeout=3600)
                    peak = sampler.stop()
                equal = emulator.truth(namespace, name) == replica_truth(url, namespace, name)
            print(
                f"{args.table} {rows:,} rows: run {state}, replica equals source: {equal}; peak RSS of one table "
                f"task {peak['total'] / 1024:.0f} MiB RSS, {peak['total_pss'] / 1024:.0f} MiB PSS (supervisor {peak['supervisor'] / 1024:.0f}, task process "
                f"{peak['task'] / 1024:.0f}, DAP child {peak['child'] / 1024:.0f} MiB; each part's own peak)",
                flush=True,
            )


if __name__ == "__main__":
    main()
