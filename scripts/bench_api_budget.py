"""Benchmark: a full pass of N tables against the rate-limited emulator, under the real scheduler.

    CD2_AIRFLOW_PYTHON=.venv/airflow-3.3.1/bin/python PYTHONPATH=. \\
        .venv/airflow-3.3.1/bin/python scripts/bench_api_budget.py --tables 90 --time-scale 2 [--foreign-consumer]

The emulator serves the built-in tables plus generated CD2-shaped ones (a shared schema under names from
../shared/cd2/tables.txt), enforcing the published limits at ``--time-scale``. Prints, for the init
pass and for a sync pass after an advance: wall, floor (jobs / create-job budget, plus the longest
table once it has its job), ratio (and the ratio to the budget alone, in whole windows), when the first and
last jobs were created, 429 responses sent (emulator request log), failed attempts, Airflow's CPU seconds per
task; then, after one more advance, the stock ``dap syncdb --table all`` wall on the same emulator and target. ``--foreign-consumer``: another
consumer of the same credentials creates 2 jobs a minute (scaled) throughout; the floor is then
recomputed for the budget left. ``--skip-stock`` leaves out the stock CLI's run.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

from local_dap.airflow_home import dap_connection, postgres_connection
from local_dap.control import start_emulator, write_extra_tables
from local_dap.deployment import Deployment
from local_dap.emulator.builtin import builtin_tables
from local_dap.paths import DAP_BIN
from local_dap.postgres import temporary_server
from local_dap.truth import replica_truth

CREATE_JOB_LIMIT = 5
BUILTIN_CANVAS_TABLES = sum(table.namespace == "canvas" for table in builtin_tables())


FOREIGN = {"jobs": 0, "429s": 0}


def foreign_consumer(emulator, window: float, stop: threading.Event) -> None:
    """Another user of the same client id: 2 create-job calls a minute (scaled)."""
    token = emulator.login()
    while not stop.wait(window / 2):
        status = emulator.create_job("canvas", "accounts", token)
        FOREIGN["jobs"] += status < 400
        FOREIGN["429s"] += status == 429


def run_pass(airflow: Deployment, emulator, name: str, window: float, budget: float) -> dict:
    emulator.clear_requests()
    foreign_before = dict(FOREIGN)
    sampler = airflow.sample_cpu()
    started = time.monotonic()
    triggered_at = time.time()
    run_id = airflow.trigger()
    state = airflow.wait_for_run(run_id, timeout=7200)
    wall = time.monotonic() - started
    cpu = sampler.stop()
    tasks = airflow.task_instances(run_id)
    requests = emulator.requests()
    ours = [r for r in requests if r["endpoint"] == "data"]
    foreign = {key: FOREIGN[key] - foreign_before[key] for key in FOREIGN}
    jobs = sum(1 for r in ours if r["status"] < 400) - foreign["jobs"]
    job_times = sorted(r["time"] - triggered_at for r in ours if r["status"] < 400)
    # The longest table once it has its job: from its (last) successful create-job call to the end of
    # the task that made it. Nothing can finish sooner after the budget's last token.
    longest_after_job = 0.0
    for ti in tasks:
        if ti.task_id.startswith("table.") and ti.state == "success" and ti.end_date:
            ended = datetime.fromisoformat(ti.end_date).timestamp()
            created = [
                r["time"] for r in ours if r["status"] < 400 and r["table"] == ti.label.split(".", 1)[1]
                and r["time"] < ended
            ]  # fmt: skip
            if created:
                longest_after_job = max(longest_after_job, ended - max(created))
    # The floor: the time the budget needs to hand out this many jobs (90 tables, 5 a minute: 18
    # minutes) plus the longest table. The budget alone, rounded up to whole windows, is printed beside it.
    floor = jobs / budget * window + longest_after_job
    return {
        "pass": name,
        "state": state,
        "tables": sum(1 for ti in tasks if ti.task_id == "table.sync"),
        "jobs": jobs,
        "wall_s": round(wall, 1),
        "floor_s": round(floor, 1),
        "ratio": round(wall / floor, 2) if floor else None,
        "budget_only_floor_s": math.ceil(jobs / budget) * window,
        "ratio_to_budget_only": round(wall / (math.ceil(jobs / budget) * window), 2) if jobs else None,
        "longest_table_after_job_s": round(longest_after_job, 1),
        "first_job_after_trigger_s": round(job_times[0], 1) if job_times else None,
        "last_job_after_trigger_s": round(job_times[-1], 1) if job_times else None,
        "429s": sum(1 for r in requests if r["status"] == 429) - foreign["429s"],
        "foreign_jobs": foreign["jobs"],
        "foreign_429s": foreign["429s"],
        "failed_attempts": sum(max(0, ti.try_number - 1) for ti in tasks)
        + sum(ti.state == "failed" for ti in tasks),
        "airflow_cpu_s_per_task": round(cpu["airflow"] / max(1, sum(ti.try_number > 0 for ti in tasks)), 2),
        "dap_child_cpu_s": round(cpu["dap_child"], 1),
        "run_id": run_id,
    }


def stock_syncdb_all(emulator, target: str) -> dict:
    """The stock CLI on the same emulator and target: one more advance, then `dap syncdb --table all`."""
    emulator.advance(changes=20)
    emulator.clear_requests()
    started = time.monotonic()
    stock_run = subprocess.run(
        [str(DAP_BIN / "dap"), "--non-interactive", "syncdb", "--namespace", "canvas", "--table", "all",
         "--connection-string", target],
        env=emulator.client_env(), check=False, capture_output=True,
    )  # fmt: skip
    return {
        "stock_syncdb_all_wall_s": round(time.monotonic() - started, 1),
        "stock_syncdb_exit_code": stock_run.returncode,
        "stock_429s": sum(1 for r in emulator.requests() if r["status"] == 429),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=90)
    parser.add_argument("--time-scale", type=float, default=2.0)
    parser.add_argument("--rows", type=int, default=50)
    parser.add_argument("--max-active-tables", type=int, default=8)
    parser.add_argument("--parallelism", type=int, default=16)
    parser.add_argument("--foreign-consumer", action="store_true")
    parser.add_argument("--skip-stock", action="store_true", help="no stock `dap syncdb --table all` run")
    args = parser.parse_args()
    window = 60 / args.time_scale
    budget = CREATE_JOB_LIMIT - (2 if args.foreign_consumer else 0)
    schemas = Path(tempfile.mkdtemp(prefix="cd2-bench-schemas-"))
    write_extra_tables(max(0, args.tables - BUILTIN_CANVAS_TABLES), schemas)
    stop = threading.Event()
    try:
        with (
            temporary_server() as server,
            start_emulator(
                rows=args.rows, rate_limits=True, time_scale=args.time_scale, schemas=schemas
            ) as emulator,
        ):
            target = server.create_database("bench_target")
            connections = {
                "dap_default": dap_connection(emulator),
                "cd2_postgres": postgres_connection(target),
                "aws_default": {"conn_type": "aws"},
            }
            config = {"namespaces": ["canvas"], "api_limit_window_seconds": window}
            env = {"AIRFLOW__CD2__MAX_ACTIVE_TABLES": str(args.max_active_tables)}
            if args.foreign_consumer:
                threading.Thread(target=foreign_consumer, args=(emulator, window, stop), daemon=True).start()
            with Deployment.start(
                server, connections=connections, config=config, env=env, parallelism=args.parallelism
            ) as airflow:
                airflow.unpause()
                results = [run_pass(airflow, emulator, "init", window, budget)]
                emulator.advance(changes=20)
                results.append(run_pass(airflow, emulator, "sync", window, budget))
                tables = [
                    ti.label
                    for ti in airflow.task_instances(results[-1]["run_id"])
                    if ti.task_id == "table.sync"
                ]
            unequal = [
                t for t in tables if emulator.truth(*t.split(".")) != replica_truth(target, *t.split("."))
            ]
            stop.set()
            stock = {} if args.skip_stock else stock_syncdb_all(emulator, target)
    finally:
        stop.set()
        shutil.rmtree(schemas, ignore_errors=True)
    print(json.dumps({"args": vars(args), "passes": results, "replica_unequal": unequal, **stock}, indent=1))


if __name__ == "__main__":
    main()
