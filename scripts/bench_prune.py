"""Benchmark ``keep_days`` pruning of a big log table: the prune's time, and what a concurrent reader waits.

    .venv/airflow-3.3.1/bin/python scripts/bench_prune.py [--rows 1000000] [--keep-fraction 0.5] [--advance-days 1]

Prints figures; not a test. A throwaway PostgreSQL (or ``CD2_TEST_DATABASE_URL``), its ``shared_buffers``
set to ``--shared-buffers`` as in bench_streaming.py, gets ``canvas_logs.web_logs`` shaped as the DAP client
makes it (``id uuid`` primary key, ``"timestamp"`` a ``timestamp without time zone`` of naive UTC) with
``--rows`` rows of about 250 bytes, their timestamps spread evenly over ``--span-days`` days and inserted in
time order, as syncs append them; then ``VACUUM ANALYZE``.

``cd2.dap_child.history.prune`` then runs twice, in a child process on the DAP interpreter (the module
imports the client), every statement it runs timed:

- first: watermark the newest row, ``keep_days`` the span times ``--keep-fraction``; it creates the index on
  ``timestamp`` concurrently, then deletes the other rows (about ``1 - keep_fraction`` of them);
- after a ``VACUUM`` (autovacuum's work between daily syncs): the watermark ``--advance-days`` later, so
  that many days more have aged out; the index exists.

Throughout, a reader on its own connection loops ``SELECT count(*)`` and a lookup by primary key (of a row
no prune deletes), each timed; its latencies during each prune are printed beside a baseline of
``--baseline-seconds`` taken first, with no prune running.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import datetime, timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "plugins"))

NAMESPACE, NAME = "canvas_logs", "web_logs"
TABLE = f"{NAMESPACE}.{NAME}"
START = datetime(2025, 1, 1)  # the oldest row's timestamp (naive UTC)
AGENT = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36"
CREATE = f"""
CREATE SCHEMA {NAMESPACE};
CREATE TABLE {TABLE} (
    id uuid NOT NULL, "timestamp" timestamp without time zone NOT NULL, user_id bigint, course_id bigint,
    url text NOT NULL, http_method smallint NOT NULL, http_status smallint NOT NULL, remote_ip inet NOT NULL,
    interaction_micros integer NOT NULL, session_id uuid, participated boolean NOT NULL, user_agent varchar(255)
)"""
FILL = f"""
INSERT INTO {TABLE} SELECT gen_random_uuid(), %(start)s::timestamp + i * (%(span)s::interval / %(rows)s),
    10000 + i %% 50000, 100 + i %% 5000, '/courses/' || (100 + i %% 5000) || '/modules/items/' || i
    || '?module_item_id=' || md5(i::text), i %% 7, 200 + i %% 10, '10.0.0.0'::inet + i %% 16000000,
    (i::bigint * 7919) %% 2000000, gen_random_uuid(), i %% 3 = 0, %(agent)s
FROM generate_series(0, %(rows)s - 1) AS i"""
QUERIES = {
    "count(*)": f"SELECT count(*) FROM {TABLE}",
    "lookup by id": f"SELECT * FROM {TABLE} WHERE id = %s",
}


class TimedConnection:
    """An asyncpg connection whose ``execute`` records each statement's first word and seconds."""

    def __init__(self, conn) -> None:
        self._conn, self.statements = conn, []

    def __getattr__(self, name: str):
        return getattr(self._conn, name)

    async def execute(self, query: str, *args):
        started = time.perf_counter()
        try:
            return await self._conn.execute(query, *args)
        finally:
            self.statements.append((query.split()[0], time.perf_counter() - started))


async def child(url: str, keep_days: float, watermark: datetime) -> None:
    """Run one prune (on the DAP interpreter); print ``ready`` before it and its figures as JSON after."""
    import asyncpg

    from cd2.contract import TableRef
    from cd2.dap_child import history

    conn = await asyncpg.connect(url)
    timed = TimedConnection(conn)
    print("ready", flush=True)
    started = time.perf_counter()
    deleted, longest = await history.prune(timed, TableRef(NAMESPACE, NAME), keep_days, watermark)
    wall = time.perf_counter() - started
    await conn.close()
    seconds = defaultdict(float)
    for word, spent in timed.statements:
        seconds[word] += spent
    batches = sum(word == "DELETE" for word, _ in timed.statements)
    figures = {"wall": wall, "deleted": deleted, "longest": longest, "batches": batches, **seconds}
    print(json.dumps(figures), flush=True)


class Reader(threading.Thread):
    """Loops the reader's queries on its own connection; latencies by (phase, query) while a phase is set."""

    def __init__(self, server, dbname: str, keys: list[str]) -> None:
        super().__init__(daemon=True)
        self.server, self.dbname, self.keys = server, dbname, keys
        self.phase: str | None = None
        self.latencies: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.stop = threading.Event()

    def run(self) -> None:
        conn = self.server.connect(self.dbname)
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = '120s'")
            while not self.stop.is_set():
                for label, query in QUERIES.items():
                    phase, started = self.phase, time.perf_counter()
                    cur.execute(query, (random.choice(self.keys),) if "%s" in query else None)
                    cur.fetchall()
                    if phase is not None:
                        self.latencies[phase, label].append(time.perf_counter() - started)
        conn.close()


def run_prune(reader: Reader, phase: str, url: str, keep_days: float, watermark: datetime) -> dict:
    """One prune in a child on the DAP interpreter, the reader's phase set while it runs."""
    from local_dap.paths import DAP_PYTHON

    command = [str(DAP_PYTHON), __file__, "--child", url, str(keep_days), watermark.isoformat()]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as process:
        for line in process.stdout:
            if line.strip() == "ready":
                reader.phase = phase
            elif line.startswith("{"):
                reader.phase = None
                figures = json.loads(line)
    if process.returncode != 0:
        raise RuntimeError(f"the prune child failed (exit {process.returncode})")
    print(
        f"{phase}: watermark {watermark:%Y-%m-%d %H:%M}, keep_days {keep_days:g}: deleted {figures['deleted']:,} "
        f"rows in {figures['batches']} batch(es); wall {figures['wall']:.2f} s (CREATE INDEX CONCURRENTLY "
        f"{figures.get('CREATE', 0):.2f} s, DELETEs {figures.get('DELETE', 0):.2f} s), longest batch "
        f"{figures['longest']:.3f} s",
        flush=True,
    )
    return figures


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--span-days", type=float, default=60, help="days the rows' timestamps span")
    parser.add_argument(
        "--keep-fraction", type=float, default=0.5, help="share of the span the first prune keeps"
    )
    parser.add_argument(
        "--advance-days", type=float, default=1, help="watermark advance before the second prune"
    )
    parser.add_argument("--baseline-seconds", type=float, default=5)
    parser.add_argument("--shared-buffers", default="1GB")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        url, keep_days, watermark = args.child
        asyncio.run(child(url, float(keep_days), datetime.fromisoformat(watermark)))
        return

    from local_dap.postgres import server_for_tests

    span = timedelta(days=args.span_days)
    newest = START + span * (args.rows - 1) / args.rows
    keep_days = args.span_days * args.keep_fraction
    with server_for_tests() as server:
        if server.restartable:
            admin = server.connect()
            admin.cursor().execute("ALTER SYSTEM SET shared_buffers = %s", (args.shared_buffers,))
            admin.close()
            server.restart()
        url = server.create_database("bench_prune")
        dbname = url.rsplit("/", 1)[1]
        conn = server.connect(dbname)
        with conn.cursor() as cur:
            started = time.perf_counter()
            cur.execute(CREATE)
            cur.execute(FILL, {"start": START, "span": span, "rows": args.rows, "agent": AGENT})
            cur.execute(f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id)")
            cur.execute(f"VACUUM ANALYZE {TABLE}")
            cur.execute(f"SELECT pg_table_size('{TABLE}'), avg(pg_column_size(t.*)) FROM {TABLE} t")
            size, row_bytes = cur.fetchone()
            kept_after_both = newest + timedelta(days=args.advance_days - keep_days)
            cur.execute(
                f'SELECT id::text FROM {TABLE} WHERE "timestamp" >= %s ORDER BY random() LIMIT 1000',
                (kept_after_both,),
            )
            keys = [row[0] for row in cur.fetchall()]
        print(
            f"PostgreSQL {server.server_version}, shared_buffers {args.shared_buffers}; {TABLE}: {args.rows:,} "
            f"rows of {row_bytes:.0f} bytes on average, {size / 2**20:.0f} MiB without indexes, "
            f"filled in {time.perf_counter() - started:.1f} s",
            flush=True,
        )
        reader = Reader(server, dbname, keys)
        reader.start()
        reader.phase = "baseline"
        time.sleep(args.baseline_seconds)
        reader.phase = None
        run_prune(reader, "prune 1", url, keep_days, newest)
        with conn.cursor() as cur:
            cur.execute(f"VACUUM {TABLE}")
        run_prune(reader, "prune 2", url, keep_days, newest + timedelta(days=args.advance_days))
        reader.stop.set()
        reader.join()
        with conn.cursor() as cur:
            cur.execute(f'SELECT count(*), min("timestamp") FROM {TABLE}')
            remaining, oldest = cur.fetchone()
            cur.execute(
                "SELECT pg_relation_size(indexrelid) FROM pg_index WHERE indrelid = %s::regclass "
                "AND NOT indisprimary",
                (TABLE,),
            )
            (index_size,) = cur.fetchone()
        conn.close()
    print(
        f"rows left {remaining:,}, the oldest at {oldest:%Y-%m-%d %H:%M}; the prune's index on timestamp "
        f"{index_size / 2**20:.1f} MiB ({index_size / size:.1%} of the table as filled)"
    )
    print(f"\nreader latency, ms   {'queries':>8} {'p50':>8} {'p99':>8} {'max':>8}")
    for label in QUERIES:
        for phase in ("baseline", "prune 1", "prune 2"):
            values = reader.latencies[phase, label]
            if not values:
                print(f"{label:<12} {phase:<8} {0:>8}  (the prune ended before a query of it did)")
                continue
            p50, p99, top = (
                1000 * x for x in (percentile(values, 0.5), percentile(values, 0.99), max(values))
            )
            print(f"{label:<12} {phase:<8} {len(values):>8} {p50:>8.1f} {p99:>8.1f} {top:>8.1f}")


if __name__ == "__main__":
    main()
