"""Run ``replicate_driver.py`` (the DAP client as our child runs it) on the DAP interpreter, and count the
statements it executes on a table."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.paths import DAP_PYTHON

DRIVER = Path(__file__).resolve().parent / "replicate_driver.py"


def run_driver(
    emulator, database_url: str, operation: str, namespace: str, table: str, **settings: str
) -> dict:
    """Its ``DRIVER_RESULT``; ``settings`` are environment variables (e.g. ``CD2_STREAMING="0"``)."""
    env = emulator.client_env(CD2_REPLICA_URL=database_url, **settings)
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
