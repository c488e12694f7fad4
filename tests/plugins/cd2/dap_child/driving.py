"""Run ``replicate_driver.py`` (the DAP client as our child runs it) on the DAP interpreter, and count the
statements it executes on a table."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cd2.contract import Action, TableJob, TableResult
from cd2.hooks.dap import DapHook
from tests.support.paths import DAP_PYTHON

DRIVER = Path(__file__).resolve().parent / "replicate_driver.py"
NS = "canvas"
# CD2_STREAMING for each way of loading a job's objects.
MODES = {"download_then_load": "0", "streaming": "1"}


def run_driver(
    emulator, database_url: str, operation: str, namespace: str, table: str, **settings: str
) -> dict:
    """Its ``DRIVER_RESULT``; ``settings`` are environment variables (e.g. ``CD2_STREAMING="0"``)."""
    env = emulator.client_env(CD2_DATABASE_URL=database_url, **settings)
    result = subprocess.run(
        [str(DAP_PYTHON), str(DRIVER), operation, namespace, table],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{settings} {operation} {namespace}.{table}:\n{result.stderr[-3000:]}"
    line = next(x for x in result.stdout.splitlines() if x.startswith("DRIVER_RESULT "))
    return json.loads(line.removeprefix("DRIVER_RESULT "))


def run_in_mode(emulator, database_url: str, operation: str, namespace: str, table: str, mode: str) -> dict:
    """:func:`run_driver` with objects loaded as ``mode`` (a key of :data:`MODES`) says."""
    return run_driver(emulator, database_url, operation, namespace, table, CD2_STREAMING=MODES[mode])


def run(hook: DapHook, action: Action, table: str) -> TableResult:
    """One table job of ``NS`` through the product's own child process."""
    return hook.run_table_job(TableJob(action=action, namespace=NS, table=table))


def table_sync_row(database_url: str, table: str) -> tuple | None:
    """The client's watermark and schema version of ``NS.table`` (None: no row, or no table_sync)."""
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


# Statement-level triggers fire once per statement execution: executemany executes once per record.
COUNT_STATEMENTS = """
CREATE TABLE public.statements (operation text PRIMARY KEY, executions int NOT NULL);
INSERT INTO public.statements VALUES ('INSERT', 0), ('DELETE', 0);
CREATE FUNCTION public.count_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE public.statements SET executions = executions + 1 WHERE operation = TG_OP;
  RETURN NULL;
END $$;
CREATE TRIGGER count_inserts AFTER INSERT ON {table} FOR EACH STATEMENT
  EXECUTE FUNCTION public.count_statement();
CREATE TRIGGER count_deletes AFTER DELETE ON {table} FOR EACH STATEMENT
  EXECUTE FUNCTION public.count_statement();
"""


def count_statements(postgres_server, database_url: str, table: str) -> None:
    """From now on, count the ``INSERT`` and ``DELETE`` statements executed on ``table`` (``ns.name``)."""
    conn = postgres_server.connect(database_url.rsplit("/", 1)[1])
    with conn, conn.cursor() as cur:
        cur.execute(COUNT_STATEMENTS.format(table=table))
    conn.close()


def statement_executions(postgres_server, database_url: str) -> dict[str, int]:
    """``{"INSERT": n, "DELETE": m}`` since :func:`count_statements`."""
    conn = postgres_server.connect(database_url.rsplit("/", 1)[1])
    with conn, conn.cursor() as cur:
        cur.execute("SELECT operation, executions FROM public.statements")
        executions = dict(cur.fetchall())
    conn.close()
    return executions
