"""Run cd2_replica locally twice with ``airflow dags test`` and print each run's per-table summary.

Default: a throwaway PostgreSQL and the DAP API emulator (enforcing the API's limits at ten times their
speed, the product pacing to match); the first run initializes every table, then
the emulator's clock advances and the second run synchronizes them. With ``DAP_API_URL``,
``DAP_CLIENT_ID``, ``DAP_CLIENT_SECRET`` and ``CD2_DATABASE_URL`` set, it runs against the real API and
that database instead (no advance between runs). ``CD2_CONFIG`` may hold the ``cd2_config`` Variable
(JSON), e.g. ``{"include": ["accounts", "courses"]}``.

Run it with the Airflow environment's interpreter (``make run``)::

    .venv/airflow-3.3.1/bin/python scripts/run_local.py
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from local_dap.airflow_home import (  # noqa: E402
    AirflowEnvironment,
    DagRunResult,
    dap_connection,
    postgres_connection,
)
from local_dap.postgres import temporary_server  # noqa: E402

REAL_API_VARIABLES = ("DAP_API_URL", "DAP_CLIENT_ID", "DAP_CLIENT_SECRET", "CD2_DATABASE_URL")
# The emulator enforces the API's published limits ten times faster (5 jobs per 6 s), and the product
# paces to that window: the local run shows the pacing without a minute's wait per five tables.
EMULATOR_TIME_SCALE = 10.0


def print_summary(label: str, result: DagRunResult, airflow: AirflowEnvironment) -> None:
    facts = airflow.xcom(result.run_id, "notify") if result.run_id else None
    print(f"\n=== {label}: run {result.run_id} ended {result.state} ===")
    if not facts:
        print("(no summary: the notify task did not run; last output follows)")
        print(result.output[-3000:])
        return
    counts = facts["counts"]
    print(", ".join(f"{count} {outcome}" for outcome, count in counts.items()))
    if facts.get("problem"):
        print(f"Problem: {facts['problem']}")
    for table in facts["tables"]:
        rows = f", {table['rows']} rows" if table["rows"] is not None else ""
        error = f": {table['error']}" if table["error"] else ""
        print(
            f"  {table['table']:<40} {table['outcome']:<12} {table['duration_seconds'] or 0:>8.1f} s{rows}{error}"
        )


def main() -> int:
    config = json.loads(os.environ.get("CD2_CONFIG") or "{}")
    real_api = all(os.environ.get(name) for name in REAL_API_VARIABLES)
    if any(os.environ.get(name) for name in REAL_API_VARIABLES) and not real_api:
        missing = [name for name in REAL_API_VARIABLES if not os.environ.get(name)]
        print(f"To run against the real API, also set {', '.join(missing)}", file=sys.stderr)
        return 2
    airflow = AirflowEnvironment.create()
    print(f"Airflow home: {airflow.home}")
    with ExitStack() as stack:
        if real_api:
            emulator = None
            dap = {
                "conn_type": "https",
                "host": os.environ["DAP_API_URL"],
                "login": os.environ["DAP_CLIENT_ID"],
                "password": os.environ["DAP_CLIENT_SECRET"],
            }
            database_url = os.environ["CD2_DATABASE_URL"]
            print("Against the real DAP API and CD2_DATABASE_URL")
        else:
            from local_dap.control import start_emulator

            server = stack.enter_context(temporary_server())
            emulator = stack.enter_context(
                start_emulator(
                    rows=int(os.environ.get("CD2_EMULATOR_ROWS", "50")),
                    rate_limits=True,
                    time_scale=EMULATOR_TIME_SCALE,
                )
            )
            config.setdefault("api_limit_window_seconds", 60 / EMULATOR_TIME_SCALE)
            database_url = server.create_database("cd2_replica")
            dap = dap_connection(emulator)
            print(f"Against the DAP emulator at {emulator.base_url} and a throwaway PostgreSQL")
        connections = {"dap_default": dap, "cd2_postgres": postgres_connection(database_url)}
        first = airflow.dags_test(connections=connections, config=config)
        print_summary("First run", first, airflow)
        if emulator is not None:
            emulator.advance(changes=20)
            print("\n(emulator advanced: 20 changes per table)")
        second = airflow.dags_test(connections=connections, config=config)
        print_summary("Second run", second, airflow)
    airflow.remove()
    return 0 if first.state == second.state == "success" else 1


if __name__ == "__main__":
    raise SystemExit(main())
