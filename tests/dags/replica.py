"""Running cd2_replica for DAG-level tests: ``airflow dags test`` against a fresh database, the emulator
and moto's SNS, with the checks every run gets (one notification, no secret anywhere)."""

from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from urllib.parse import quote

from local_dap.airflow_home import AirflowEnvironment, DagRunResult, dap_connection, postgres_connection
from local_dap.truth import replica_truth
from tests.support.paths import DAP_PYTHON, REPO_ROOT

FRESH_ENOUGH = 24 * 365 * 10
# Takes a table's lock with the child's own code (cd2.dap_child.locks) and holds it until stdin closes.
HOLD_TABLE = """
import asyncio, os, sys
from cd2.dap_child import locks
async def hold():
    conn = await locks.connect_as(os.environ["CD2_DATABASE_URL"], sys.argv[2])
    await locks.lock_table(conn, sys.argv[1], 0)
    print("held", flush=True)
    await asyncio.to_thread(sys.stdin.read)
asyncio.run(hold())
"""


@contextmanager
def table_held(url: str, label: str, holder: str):
    """Another run (``holder``) working on ``label`` while the block runs."""
    env = os.environ | {"CD2_DATABASE_URL": url, "PYTHONPATH": str(REPO_ROOT / "plugins")}
    with subprocess.Popen(
        [str(DAP_PYTHON), "-c", HOLD_TABLE, label, holder],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as process:
        assert process.stdout.readline() == "held\n"
        try:
            yield
        finally:
            process.stdin.close()


class Replica:
    def __init__(self, airflow_env: AirflowEnvironment, emulator, server, sns, name: str) -> None:
        self.airflow, self.emulator, self.server, self.sns = airflow_env, emulator, server, sns
        self.database = name
        self.url = server.create_database(name)
        self.secrets = [emulator.client_secret, server.password, quote(server.password, safe="")]

    def connections(self) -> dict:
        return {
            "dap_default": dap_connection(self.emulator),
            "cd2_postgres": postgres_connection(self.url + "?sslmode=disable"),
            "aws_default": self.sns.connection,
        }

    def asset_uri(self, label: str) -> str:
        """The table's asset URI: the postgres provider's convention, host:port/database/schema/table."""
        namespace, table = label.split(".")
        return f"postgres://{self.server.host}:{self.server.port}/{self.database}/{namespace}/{table}"

    def run(
        self, config: dict | None = None, conf: dict | None = None, env: dict | None = None
    ) -> tuple[DagRunResult, dict]:
        """One DAG run; returns it and the facts of the one notification it published."""
        # The emulator's clock starts on 2026-01-01: a bound this wide keeps its tables fresh.
        config = {
            "include": ["accounts", "canvas.users"],
            "sns_topic_arn": self.sns.topic_arn,
            "freshness_hours": FRESH_ENOUGH,
        } | (config or {})
        result = self.airflow.dags_test(
            connections=self.connections(), config=config, conf=conf, env=self.sns.env | (env or {})
        )
        assert result.run_id, result.output[-5000:]
        notes = self.sns.received()
        assert len(notes) == 1, f"expected one notification, got {len(notes)}:\n{result.output[-5000:]}"
        self.assert_no_secret(result, notes)
        return result, notes[0]

    def rerun(self, task_id: str, run_id: str, map_index: int):
        """Run one task instance of an existing run again; its output must hold no secret either."""
        config = {"include": ["accounts", "canvas.users"]}
        completed = self.airflow.tasks_test(
            task_id,
            run_id,
            map_index=map_index,
            connections=self.connections(),
            config=config,
            env=self.sns.env,
        )
        assert not any(secret in completed.stdout for secret in self.secrets)
        return completed

    def assert_no_secret(self, result: DagRunResult, notes: list[dict]) -> None:
        places = {
            # ``airflow dags test`` writes the task logs to its output.
            "task logs": result.output + self.airflow.task_logs(result.run_id),
            "XComs": json.dumps(self.airflow.xcoms(result.run_id), default=str),
            "SNS message": json.dumps(notes),
        }
        for place, text in places.items():
            for secret in self.secrets:
                assert secret not in text, f"a secret appears in the {place}"

    def assert_in_step(self, tables: list[str]) -> None:
        for label in tables:
            namespace, table = label.split(".")
            assert self.emulator.truth(namespace, table) == replica_truth(self.url, namespace, table), label

    def snapshot(self) -> tuple:
        """What a plan run must leave as it was: the metadata rows, and every replica table's truth."""
        with self.server.connect(self.database) as conn, conn.cursor() as cur:
            cur.execute("SELECT * FROM instructure_dap.table_sync ORDER BY source_namespace, source_table")
            table_sync = cur.fetchall()
            cur.execute(
                "SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema "
                "NOT IN ('pg_catalog', 'information_schema', 'cd2_replica') ORDER BY 1, 2"
            )
            tables = cur.fetchall()
        truths = [replica_truth(self.url, schema, name) for schema, name in tables if schema == "canvas"]
        return table_sync, tables, truths

    def break_half_way(self, table: str) -> None:
        """Leave ``table`` as an init killed mid-load does: some rows, no table_sync row."""
        with self.server.connect(self.database) as conn, conn.cursor() as cur:
            cur.execute(f"DELETE FROM canvas.{table} WHERE id % 2 = 0")
            cur.execute("DELETE FROM instructure_dap.table_sync WHERE source_table = %s", (table,))
