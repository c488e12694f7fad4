"""Benchmark big tables end to end: stock ``dap initdb``/``syncdb`` against the product's init/sync task.

    .venv/airflow-3.3.1/bin/python scripts/bench_streaming.py [--rows 1000000,5000000] [--table canvas.accounts]

Prints figures; not a test. For each size, one emulator serves a CD2-shaped table of that many rows in
parts of ``--part-rows`` rows. Its part cache is warmed first (the whole snapshot downloaded once), and
its warm serving rate is printed beside every end-to-end figure. Then, each into its own database of a
throwaway PostgreSQL:

- stock: the ``dap`` CLI (``initdb``, later ``syncdb``) of the DAP virtualenv, nothing of ours loaded;
- product: the product's task code path without Airflow's scheduler: ``DapHook.run_table_job`` (what the
  replicate operator calls), which runs the child ``python -m cd2.dap_child`` with its accelerated reader
  and object streaming on (the defaults).

Each arm gets its own ``$TMPDIR``, sampled every 50 ms for its peak size; the product's peak is also
given in units of the job's largest object as the client writes it (gunzipped). The child reports its
peak RSS (VmHWM) and its download and load phase times (the sums over objects; they overlap, so the wall
can be less than their sum). Then the emulator changes the table, ``--sync-updates`` (default 10%) of its rows
updated and ``--sync-deletes`` (default 1%) hard-deleted (counts printed), and both arms sync; the same
figures are printed.

The server's ``shared_buffers`` is ``--shared-buffers`` (default 1GB): the deploy's Aurora Serverless v2
(``mwaa_infra``, at most 4 ACU = about 8 GiB by default) keeps half to three quarters of its memory as
buffers, and a benchmark on PostgreSQL's own 128MB default measures evictions of a 5M-row table, for both
arms.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "plugins"))
sys.path.insert(0, str(REPO_ROOT / "scripts"))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cd2-bench-airflow-"))

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from bench_emulator import _call, _download  # noqa: E402

from local_dap.airflow_home import dap_connection, postgres_connection  # noqa: E402
from local_dap.control import start_emulator  # noqa: E402
from local_dap.paths import DAP_BIN, DAP_PYTHON  # noqa: E402
from local_dap.postgres import temporary_server  # noqa: E402

PHASES = re.compile(r"streamed (\d+) objects: downloads ([\d.]+) s, loads ([\d.]+) s")


class PeakSize:
    """Samples the total size of the files under a folder in a thread; ``peak`` in bytes."""

    def __init__(self, folder: Path, interval: float = 0.05) -> None:
        self.folder, self.interval, self.peak = folder, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for parent, _, files in os.walk(self.folder):
                for name in files:
                    try:
                        total += os.path.getsize(os.path.join(parent, name))
                    except OSError:
                        pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSize:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


class CpuTime:
    """CPU seconds (user + system) spent during a ``with`` block by the client (this script's children it
    waited for: the stock CLI or the DAP child), the PostgreSQL server (every process of it, exited backends
    included) and the emulator. Their sum over the machine's cores is a floor for the wall time here."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, server_pid: int, emulator_pid: int) -> None:
        self.pids = {"server": server_pid, "emulator": emulator_pid}
        self.seconds: dict[str, float] = {}

    @classmethod
    def _trees(cls, pids: list[int]) -> list[float]:
        """Each process's CPU with its reaped children's, plus that of its live descendants (one /proc read)."""
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry)] = (int(fields[1]), sum(int(value) for value in fields[11:15]))
        totals = []
        for pid in pids:
            total, todo = 0, [pid]
            while todo:
                current = todo.pop()
                total += stats.get(current, (0, 0))[1]
                todo.extend(child for child, (parent, _) in stats.items() if parent == current)
            totals.append(total / cls.TICK)
        return totals

    def _now(self) -> dict[str, float]:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        trees = self._trees(list(self.pids.values()))
        return {"client": usage.ru_utime + usage.ru_stime} | dict(zip(self.pids, trees, strict=True))

    def __enter__(self) -> CpuTime:
        self._start = self._now()
        return self

    def __exit__(self, *exc: object) -> None:
        end = self._now()
        self.seconds = {name: end[name] - self._start[name] for name in end}

    def describe(self) -> str:
        total = sum(self.seconds.values())
        parts = ", ".join(f"{name} {value:.1f}" for name, value in self.seconds.items())
        return f"CPU s {parts}; sum / {os.cpu_count()} cores = {total / os.cpu_count():.1f} s"


class PhaseLog:
    """Picks the child's ``streamed N objects: downloads X s, loads Y s`` line off the hook's relayed log."""

    def __init__(self) -> None:
        self.found: tuple[int, float, float] | None = None

    def wrap(self, log):
        watcher = self

        class Tee:
            def __getattr__(self, name):
                return getattr(log, name)

            def log(self, level, message, *args, **kwargs):
                match = PHASES.search(message % args if args else message)
                if match:
                    watcher.found = (int(match.group(1)), float(match.group(2)), float(match.group(3)))
                return log.log(level, message, *args, **kwargs)

        return Tee()


def stock(emulator, url: str, command: str, table: str, tmpdir: Path) -> tuple[float, int]:
    namespace, name = table.split(".")
    env = emulator.client_env(TMPDIR=str(tmpdir))
    with PeakSize(tmpdir) as peak:
        started = time.monotonic()
        result = subprocess.run(
            [str(DAP_BIN / "dap"), "--non-interactive", "--no-tracking", "--loglevel", "warning", command,
             "--namespace", namespace, "--table", name, "--connection-string", url],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"dap {command} failed:\n{result.stderr[-3000:]}")
    return seconds, peak.peak


def product(emulator, url: str, action: str, table: str, tmpdir: Path):
    from cd2.contract import Action, TableJob
    from cd2.hooks.dap import DapHook

    os.environ["AIRFLOW_CONN_DAP_DEFAULT"] = json.dumps(dap_connection(emulator))
    os.environ["AIRFLOW_CONN_CD2_POSTGRES"] = json.dumps(postgres_connection(url + "?sslmode=disable"))
    os.environ["CD2_DAP_PYTHON"] = str(DAP_PYTHON)
    os.environ["TMPDIR"] = str(tmpdir)
    phases = PhaseLog()

    class WatchedHook(DapHook):
        """The hook, its relayed child log lines also read for the phase times."""

        @property
        def log(self):
            return phases.wrap(super().log)

    namespace, name = table.split(".")
    try:
        with PeakSize(tmpdir) as peak:
            started = time.monotonic()
            job = TableJob(action=Action(action), namespace=namespace, table=name)
            result = WatchedHook().run_table_job(job)
            seconds = time.monotonic() - started
    finally:
        os.environ.pop("TMPDIR")
    return seconds, peak.peak, result, phases.found


def both_arms(emulator, urls: dict, dirs: dict, action: str, table: str, server_pid: int):
    """The stock CLI's ``dap <action>db``, then the product's task, each with its CPU time."""
    cpu = {arm: CpuTime(server_pid, emulator.process.pid) for arm in urls}
    with cpu["stock"]:
        stock_s, stock_peak = stock(emulator, urls["stock"], f"{action}db", table, dirs["stock"])
    with cpu["product"]:
        ours = product(emulator, urls["product"], action, table, dirs["product"])
    return stock_s, stock_peak, ours, cpu


def count(pg, database: str, table: str) -> int:
    conn = pg.connect(database)
    try:
        with conn.cursor() as cur:
            namespace, name = table.split(".")
            cur.execute(f'SELECT count(*) FROM "{namespace}"."{name}"')
            return cur.fetchone()[0]
    finally:
        conn.close()


def report(
    label: str,
    rows: int,
    stock_s: float,
    stock_peak: int,
    ours: tuple,
    serving: float,
    largest_object: int,
    cpu: dict[str, CpuTime],
):
    seconds, peak, result, found = ours
    objects, download_s, load_s = found or (0, float("nan"), float("nan"))
    slower = max(download_s, load_s)
    print(
        f"{label}: {rows:,} rows | emulator serving {serving:,.0f} rows/s (warm cache)\n"
        f"  stock dap CLI : {stock_s:7.1f} s = {rows / stock_s:9,.0f} rows/s, peak TMPDIR {stock_peak / 2**20:8.1f} MiB\n"
        f"  product task  : {seconds:7.1f} s = {rows / seconds:9,.0f} rows/s, peak TMPDIR {peak / 2**20:8.1f} MiB "
        f"({peak / largest_object:.2f}x the largest object, {largest_object / 2**20:.1f} MiB), "
        f"child peak RSS {result.peak_rss_mb} MB\n"
        f"  ratio product/stock: {stock_s / seconds:.1f}x | {objects} objects: download {download_s:.1f} s, "
        f"load {load_s:.1f} s, child wall {result.duration_seconds:.1f} s = {result.duration_seconds / slower:.2f}x "
        "the slower phase\n"
        f"  stock dap CLI : {cpu['stock'].describe()}\n"
        f"  product task  : {cpu['product'].describe()}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,5000000", help="comma-separated table sizes")
    parser.add_argument("--table", default="canvas.accounts")
    parser.add_argument("--part-rows", type=int, default=100_000)
    parser.add_argument("--sync-updates", type=float, default=0.10, help="updates per row for the sync")
    parser.add_argument("--sync-deletes", type=float, default=0.01, help="hard deletes per row for the sync")
    parser.add_argument("--skip-sync", action="store_true")
    parser.add_argument(
        "--shared-buffers",
        default="1GB",
        help="the server's shared_buffers (PostgreSQL's own default, 128MB, holds a tenth of a 5M-row table)",
    )
    args = parser.parse_args()
    namespace, name = args.table.split(".")
    work = Path(tempfile.mkdtemp(prefix="cd2-bench-streaming-"))
    try:
        with temporary_server() as pg:
            server_pid = configure(pg, args.shared_buffers)
            for rows in [int(r) for r in args.rows.split(",")]:
                with start_emulator(rows=rows, part_rows=args.part_rows) as emulator:
                    _, generate_s, _ = serve_snapshot(emulator, namespace, name)
                    served, warm_s, largest = serve_snapshot(emulator, namespace, name)
                    serving = served / warm_s
                    print(f"emulator {args.table} {rows:,} rows: first pass (generating) {served / generate_s:,.0f} "
                          f"rows/s, warm cache {serving:,.0f} rows/s", flush=True)  # fmt: skip
                    urls = {arm: pg.create_database(f"bench_{arm}_{rows}") for arm in ("stock", "product")}
                    dirs = {arm: work / f"{arm}-{rows}" for arm in urls}
                    for folder in dirs.values():
                        folder.mkdir()
                    stock_s, stock_peak, ours, cpu = both_arms(
                        emulator, urls, dirs, "init", args.table, server_pid
                    )
                    assert count(pg, f"bench_stock_{rows}", args.table) == rows
                    assert count(pg, f"bench_product_{rows}", args.table) == rows
                    report("init", rows, stock_s, stock_peak, ours, serving, largest, cpu)
                    if args.skip_sync:
                        continue
                    change_mix = {"update": args.sync_updates, "delete": args.sync_deletes}
                    changes = int(rows * (args.sync_updates + args.sync_deletes))
                    made = emulator.advance(changes=changes, change_mix=change_mix)["changes"][args.table]
                    since = watermark(pg, f"bench_stock_{rows}", args.table)
                    serve_incremental(emulator, namespace, name, since)  # generates and caches the parts
                    served, warm_s, largest = serve_incremental(emulator, namespace, name, since)
                    print(f"sync changes made by the emulator: {made}", flush=True)
                    stock_s, stock_peak, ours, cpu = both_arms(
                        emulator, urls, dirs, "sync", args.table, server_pid
                    )
                    changed = sum(made.values())
                    report("sync", changed, stock_s, stock_peak, ours, served / warm_s, largest, cpu)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def configure(pg, shared_buffers: str) -> int:
    """Size the server's buffer cache like a production database's (see the module doc), restart it and
    return the postmaster's process id."""
    conn = pg.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("ALTER SYSTEM SET shared_buffers = %s", (shared_buffers,))
    finally:
        conn.close()
    pg.restart()
    conn = pg.connect()
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = Path(f"/proc/{cur.fetchone()[0]}/stat").read_text()
    finally:
        conn.close()
    print(f"PostgreSQL {pg.server_version}, shared_buffers {shared_buffers}", flush=True)
    return int(backend.rsplit(")", 1)[1].split()[1])


def serve_snapshot(emulator, namespace: str, name: str) -> tuple[int, float, int]:
    """Download a whole snapshot, 4 objects at a time, each URL asked for just before its download
    (the emulator's signed URLs expire after 15 minutes, sooner than a first pass over 5M rows)."""
    return serve_incremental(emulator, namespace, name, None)


def serve_incremental(emulator, namespace: str, name: str, since: str | None) -> tuple[int, float, int]:
    """Download the incremental since ``since`` as the client will ask for it; rows, seconds and the
    largest object's gunzipped bytes."""
    token = _call(emulator, "POST", "/ids/auth/login", None, form="grant_type=client_credentials")[
        "access_token"
    ]
    started = time.monotonic()
    query = {"format": "tsv", "mode": "condensed"} | ({"since": since} if since else {})
    job = _call(emulator, "POST", f"/dap/query/{namespace}/table/{name}/data", token, query)
    job = _call(emulator, "GET", f"/dap/job/{job['id']}", token)

    def download(obj: dict) -> tuple[int, int]:
        return _download(_call(emulator, "POST", "/dap/object/url", token, [obj])["urls"][obj["id"]]["url"])

    with ThreadPoolExecutor(4) as pool:
        objects = list(pool.map(download, job["objects"]))
    return sum(rows for rows, _ in objects), time.monotonic() - started, max(size for _, size in objects)


def watermark(pg, database: str, table: str) -> str:
    conn = pg.connect(database)
    try:
        with conn.cursor() as cur:
            namespace, name = table.split(".")
            cur.execute(
                "SELECT timestamp FROM instructure_dap.table_sync WHERE source_namespace = %s AND source_table = %s",
                (namespace, name),
            )
            return cur.fetchone()[0].isoformat() + "Z"
    finally:
        conn.close()


if __name__ == "__main__":
    main()
