"""Benchmark big tables end to end: stock ``dap initdb``/``syncdb``, the product's init/sync task with its
fast path (``CD2_FAST_INIT`` / ``CD2_FAST_SYNC``) off and on, and a raw ``COPY`` of the same rows.

    CD2_DAP_PYTHON=.venv/dap/bin/python CD2_TOOLS_BIN=.venv/tools/bin \\
        .venv/airflow-3.3.1/bin/python scripts/bench_streaming.py [--rows 1000000,5000000] \\
        [--table canvas.accounts] [--skip-sync] [--skip-stock]

Prints figures, one table per run; not a test. For each size, one emulator serves a CD2-shaped table of
that many rows in parts of ``--part-rows`` rows. Its part cache is warmed first (the whole snapshot
downloaded once), and its warm serving rate is printed beside every end-to-end figure; the snapshot is
then downloaded once more and kept, gunzipped, for the raw COPY. Then the init, each arm into its own
database of a throwaway PostgreSQL:

- stock: the ``dap`` CLI (``initdb``, later ``syncdb``) of the DAP virtualenv, nothing of ours loaded
  (its connection string in ``DAP_CONNECTION_STRING``, not in its argv);
- product, fast path off ("before"): the product's task code path without Airflow's scheduler:
  ``DapHook.run_table_job`` (what the replicate operator calls) in this process, which runs the child
  ``python -m cd2.dap_child`` with its accelerated reader and object streaming on (the defaults), and
  ``CD2_FAST_INIT=0`` (the hook passes it on): the client's own loader;
- product, 1 connection: the fast path on, every batch on the client's one connection
  (``CD2_FAST_INIT_CONNECTIONS=1``);
- product ("after"): the same with the fast path on (the default): each object's TSV bytes go by COPY
  into a temporary text table and PostgreSQL converts them (plugins/cd2/dap_child/fast_load.py), a big
  object's batches on two connections side by side;
- raw COPY: a plain text-format ``COPY ... FROM STDIN`` of the kept files from this process (psycopg2)
  into a copy of the table in the product's database, its primary key and NOT NULL constraints kept
  (``raw_copy_seconds`` of scripts/bench_loader.py); its wall is the COPY statements' alone (no
  download, no DDL, no child): the floor the init's wall is held to (target: within 1.5x). The table's
  columns must take the TSV text as it is: no array or lookup columns (canvas.accounts has none).

Per arm: wall, rows/s, CPU seconds of the client (the ``dap`` CLI or the DAP child: the rusage of that
waited-for child; this process's own for the raw COPY), of the PostgreSQL server (every process of it,
exited backends included) and of the emulator; the peak size of the arm's own ``$TMPDIR`` (sampled
every 50 ms; also in units of the job's largest object as the client writes it, gunzipped) and the
child's peak RSS (VmHWM); then the ratios of each product arm to stock and to the raw COPY, and after /
before (fast path on / off). The product arms' phase times follow: the child's download and load sums
over objects (they overlap, so the wall can be less than their sum). Between arms, outside every
measure, the loaded table is ``VACUUM ANALYZE``d and the server checkpoints, so that one arm's
autovacuum and dirty buffers are not counted in the next arm's server CPU.

Then, unless ``--skip-sync``, the emulator changes the table, ``--sync-updates`` (default 10%) of its
rows updated and ``--sync-deletes`` (default 1%) hard-deleted (counts printed), and stock and product
with its fast sync off and on (``CD2_FAST_SYNC``) sync their databases; the same figures are printed.
``--skip-stock`` leaves the (slow) stock arms out, for development; the ratios to stock are then missing.

The server's ``shared_buffers`` is ``--shared-buffers`` (default 1GB): the deploy's Aurora Serverless v2
(``mwaa_infra``, at most 4 ACU = about 8 GiB by default) keeps half to three quarters of its memory as
buffers, and a benchmark on PostgreSQL's own 128MB default measures evictions of a 5M-row table, for every
arm.
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
import urllib.request
import zlib
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
sys.path.insert(0, str(REPO_ROOT / "plugins"))
sys.path.insert(0, str(REPO_ROOT / "scripts"))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="cd2-bench-airflow-"))

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from bench_emulator import _call, _download  # noqa: E402
from bench_loader import raw_copy_seconds  # noqa: E402

from local_dap.airflow_home import dap_connection, postgres_connection  # noqa: E402
from local_dap.control import start_emulator  # noqa: E402
from local_dap.paths import DAP_BIN, DAP_PYTHON  # noqa: E402
from local_dap.postgres import temporary_server  # noqa: E402

PHASES = re.compile(r"streamed (\d+) objects: downloads ([\d.]+) s, loads ([\d.]+) s")
# The fast load's one line when a table loads through the client's own loader instead (fast_load.py).
FALLBACK = "not the fast path"
STOCK, BEFORE, AFTER, RAW_COPY = "stock dap CLI", "product, fast path off", "product", "raw COPY"
ONE_CONNECTION = "product, 1 connection"
# The switch and the patch of the fast path of each action (plugins/cd2/dap_child/fast_load.py).
FAST = {"init": ("CD2_FAST_INIT", "fast_init"), "sync": ("CD2_FAST_SYNC", "fast_sync")}
NAN = float("nan")


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
    """CPU seconds (user + system) spent during a ``with`` block by the client, the PostgreSQL server
    (every process of it, exited backends included) and the emulator. The client is this script's
    children it waited for during the block (``client="children"``: the stock CLI or the DAP child; their
    own waited-for children included) or this process itself (``client="self"``: the raw COPY's psycopg2).
    Their sum over the machine's cores is a floor for the wall time here.

    A server or emulator tree is read from ``/proc``: each process's own CPU plus its reaped children's
    (``cutime``/``cstime``). A backend that has just exited is, for a millisecond or so, neither listed
    nor yet in the postmaster's ``cutime`` (seen on Linux 6.18), and the backends of a client that has
    just closed its connections exit right when a block ends (the raw COPY's: lost in one reading of
    ten): so each end of a block waits until two readings 50 ms apart list the same processes, none of
    them a zombie, and takes the later one."""

    TICK = os.sysconf("SC_CLK_TCK")
    SETTLE_SECONDS = 5.0

    def __init__(self, server_pid: int, emulator_pid: int, client: str = "children") -> None:
        self.pids = {"server": server_pid, "emulator": emulator_pid}
        self.who = {"children": resource.RUSAGE_CHILDREN, "self": resource.RUSAGE_SELF}[client]
        self.seconds: dict[str, float] = {}

    @staticmethod
    def _processes() -> dict[int, tuple[int, str, int]]:
        """Every process's parent, state and CPU ticks with its reaped children's (one /proc read)."""
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry)] = (int(fields[1]), fields[0], sum(int(value) for value in fields[11:15]))
        return stats

    @classmethod
    def _trees(cls, pids: list[int]) -> tuple[list[float], frozenset[int], bool]:
        """Each tree's CPU seconds, the processes of the trees, and whether one of them is a zombie."""
        stats = cls._processes()
        totals, members = [], set()
        for pid in pids:
            total, todo = 0, [pid]
            while todo:
                current = todo.pop()
                if current in stats:
                    total += stats[current][2]
                    members.add(current)
                todo.extend(child for child, (parent, _, _) in stats.items() if parent == current)
            totals.append(total / cls.TICK)
        return totals, frozenset(members), any(stats[pid][1] == "Z" for pid in members)

    def _settled_trees(self) -> dict[str, float]:
        """The trees' CPU seconds once two readings 50 ms apart list the same processes and no zombie."""
        deadline = time.monotonic() + self.SETTLE_SECONDS
        previous = None
        while True:
            totals, members, zombie = self._trees(list(self.pids.values()))
            if (members == previous and not zombie) or time.monotonic() > deadline:
                return dict(zip(self.pids, totals, strict=True))
            previous = members
            time.sleep(0.05)

    def _client(self) -> float:
        usage = resource.getrusage(self.who)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> CpuTime:
        # the trees settle before the client's reading, and after it at the end: the waits' own CPU
        # (this process's, the raw COPY's client) stays out
        trees = self._settled_trees()
        self._start = {"client": self._client()} | trees
        return self

    def __exit__(self, *exc: object) -> None:
        client = self._client()
        end = {"client": client} | self._settled_trees()
        self.seconds = {name: end[name] - self._start[name] for name in end}


class PhaseLog:
    """Picks the child's ``streamed N objects: downloads X s, loads Y s`` line off the hook's relayed log,
    and the fast path's line saying a table loads through the client's own loader."""

    def __init__(self) -> None:
        self.found: tuple[int, float, float] | None = None
        self.fallback: str | None = None

    def wrap(self, log):
        watcher = self

        class Tee:
            def __getattr__(self, name):
                return getattr(log, name)

            def log(self, level, message, *args, **kwargs):
                text = message % args if args else message
                match = PHASES.search(text)
                if match:
                    watcher.found = (int(match.group(1)), float(match.group(2)), float(match.group(3)))
                if FALLBACK in text:
                    watcher.fallback = text
                return log.log(level, message, *args, **kwargs)

        return Tee()


@dataclass
class Arm:
    """One arm's run: its wall seconds and CPU, and for the client arms the peak ``$TMPDIR`` bytes; for
    the product's, the child's result and phase times."""

    name: str
    seconds: float
    cpu: CpuTime
    peak: int | None = None
    result: Any = None
    phases: PhaseLog | None = None


def stock(emulator, url: str, command: str, table: str, tmpdir: Path) -> tuple[float, int]:
    namespace, name = table.split(".")
    # the connection string (it holds the server's password) in the environment, not in argv
    env = emulator.client_env(TMPDIR=str(tmpdir), DAP_CONNECTION_STRING=url)
    with PeakSize(tmpdir) as peak:
        started = time.monotonic()
        result = subprocess.run(
            [str(DAP_BIN / "dap"), "--non-interactive", "--no-tracking", "--loglevel", "warning", command,
             "--namespace", namespace, "--table", name],
            env=env, capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"dap {command} failed:\n{result.stderr[-3000:]}")
    return seconds, peak.peak


def product(
    emulator,
    url: str,
    action: str,
    table: str,
    tmpdir: Path,
    fast: bool | None = None,
    settings: dict | None = None,
):
    """The product's task for one table; ``fast`` sets the action's fast path switch (``CD2_FAST_INIT`` or
    ``CD2_FAST_SYNC``; None: unset, the default, on); ``settings``: more environment for the child. Checks
    the child applied its patch or not, as asked."""
    from cd2.contract import Action, TableJob
    from cd2.hooks.dap import DapHook

    os.environ["AIRFLOW_CONN_DAP_DEFAULT"] = json.dumps(dap_connection(emulator))
    os.environ["AIRFLOW_CONN_CD2_POSTGRES"] = json.dumps(postgres_connection(url + "?sslmode=disable"))
    os.environ["CD2_DAP_PYTHON"] = str(DAP_PYTHON)
    os.environ["TMPDIR"] = str(tmpdir)
    switch, patch = FAST[action]
    os.environ.pop(switch, None)
    if fast is not None:
        os.environ[switch] = "1" if fast else "0"
    os.environ.update(settings or {})
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
        for name in ("TMPDIR", switch, *(settings or {})):
            os.environ.pop(name, None)
    active = patch in (result.patches or [])
    if active != (fast is not False):
        raise RuntimeError(f"asked for {patch} {fast}, the child's active patches: {result.patches}")
    return seconds, peak.peak, result, phases


def run_arm(name: str, cpu: CpuTime, run) -> Arm:
    """Run one client arm (``run()`` -> stock's or product's answer) inside its CPU measure."""
    with cpu:
        answer = run()
    if len(answer) == 2:
        return Arm(name, answer[0], cpu, peak=answer[1])
    seconds, peak, result, phases = answer
    return Arm(name, seconds, cpu, peak=peak, result=result, phases=phases)


def count(pg, database: str, table: str) -> int:
    conn = pg.connect(database)
    try:
        with conn.cursor() as cur:
            namespace, name = table.split(".")
            cur.execute(f'SELECT count(*) FROM "{namespace}"."{name}"')
            return cur.fetchone()[0]
    finally:
        conn.close()


def settle(pg, database: str, table: str) -> None:
    """Between arms, outside the measures: the loaded table vacuumed and analyzed (autovacuum would do it
    during the next arm) and a checkpoint (the dirty buffers written now, not during the next arm)."""
    namespace, name = table.split(".")
    conn = pg.connect(database)
    try:
        with conn.cursor() as cur:
            cur.execute(f'VACUUM ANALYZE "{namespace}"."{name}"')
            cur.execute("CHECKPOINT")
    finally:
        conn.close()


def init_arms(pg, emulator, args, rows: int, work: Path, server_pid: int, files: list[Path]) -> list[Arm]:
    """Stock, product with its fast init off, product (on), each into its own database; then a raw COPY of
    ``files`` into a copy of the table in the product's database."""
    emulator_pid = emulator.process.pid
    runs = []
    if not args.skip_stock:
        runs.append((STOCK, "stock", None))
    runs += [(BEFORE, "product_off", False), (ONE_CONNECTION, "product_one", True), (AFTER, "product", True)]
    arms = []
    for name, key, fast in runs:
        database = f"bench_{key}_{rows}"
        url = pg.create_database(database)
        settings = {"CD2_FAST_INIT_CONNECTIONS": "1"} if name == ONE_CONNECTION else None
        tmpdir = work / f"{key}-{rows}"
        tmpdir.mkdir()
        if fast is None:
            run = partial(stock, emulator, url, "initdb", args.table, tmpdir)
        else:
            run = partial(product, emulator, url, "init", args.table, tmpdir, fast, settings)
        arm = run_arm(name, CpuTime(server_pid, emulator_pid), run)
        loaded = count(pg, database, args.table)
        if loaded != rows:
            raise RuntimeError(f"{name}: {loaded:,} rows in the table, not {rows:,}")
        settle(pg, database, args.table)
        arms.append(arm)
    with CpuTime(server_pid, emulator_pid, client="self") as cpu:
        seconds = raw_copy_seconds(pg, f"bench_product_{rows}", args.table, files, staging=False)
    arms.append(Arm(RAW_COPY, seconds, cpu))
    return arms


def sync_arms(pg, emulator, args, rows: int, work: Path, server_pid: int) -> list[Arm]:
    """Stock, product with its fast sync off and on, each syncing the database its init filled."""
    emulator_pid = emulator.process.pid
    runs = [] if args.skip_stock else [(STOCK, "stock", None)]
    runs += [(BEFORE, "product_off", False), (AFTER, "product", True)]
    arms = []
    for name, key, fast in runs:
        database = f"bench_{key}_{rows}"
        url, tmpdir = pg.url(database), work / f"{key}-{rows}"
        if fast is None:
            run = partial(stock, emulator, url, "syncdb", args.table, tmpdir)
        else:
            run = partial(product, emulator, url, "sync", args.table, tmpdir, fast)
        arms.append(run_arm(name, CpuTime(server_pid, emulator_pid), run))
        settle(pg, database, args.table)
    return arms


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator > 0 else "-"


def report(label: str, table: str, rows: int, serving: float, largest_object: int, arms: list[Arm]) -> None:
    """One table: a line per arm, the ratios between arms, the product arms' phases."""
    lines = [
        f"{label}: {rows:,} rows of {table} | emulator serving {serving:,.0f} rows/s (warm cache) | largest "
        f"object {largest_object / 2**20:.1f} MiB gunzipped | {os.cpu_count()} cores",
        f"  {'arm':<24}{'wall s':>9}{'rows/s':>11}{'client CPU s':>14}{'server CPU s':>14}"
        f"{'emulator CPU s':>16}{'peak TMPDIR MiB':>17}{'child RSS MB':>14}",
    ]
    for arm in arms:
        cpu = arm.cpu.seconds
        peak = f"{arm.peak / 2**20:.1f}" if arm.peak is not None else "-"
        rss = f"{arm.result.peak_rss_mb:.0f}" if arm.result is not None and arm.result.peak_rss_mb else "-"
        lines.append(
            f"  {arm.name:<24}{arm.seconds:>9.1f}{rows / arm.seconds:>11,.0f}{cpu['client']:>14.1f}"
            f"{cpu['server']:>14.1f}{cpu['emulator']:>16.1f}{peak:>17}{rss:>14}"
        )
    lines.append(
        "  client: the `dap` CLI, the DAP child, or this script's psycopg2 for the raw COPY (its wall: the "
        "COPY statements only)"
    )
    by_name = {arm.name: arm for arm in arms}
    pairs = [
        (BEFORE, STOCK, ""),
        (AFTER, STOCK, ""),
        (BEFORE, RAW_COPY, ""),
        (ONE_CONNECTION, RAW_COPY, ""),
        (AFTER, RAW_COPY, "  (target: wall <= 1.5x)"),
        (AFTER, BEFORE, "  (after / before)"),
    ]
    pairs = [(a, b, note) for a, b, note in pairs if a in by_name and b in by_name]
    if pairs:
        lines.append(f"  {'ratio':<44}{'wall':>8}{'client CPU':>12}{'server CPU':>12}{'client+server':>15}")
    for a, b, note in pairs:
        x, y = by_name[a], by_name[b]
        cx, cy = x.cpu.seconds, y.cpu.seconds
        lines.append(
            f"  {a + ' / ' + b:<44}{_ratio(x.seconds, y.seconds):>8}{_ratio(cx['client'], cy['client']):>12}"
            f"{_ratio(cx['server'], cy['server']):>12}"
            f"{_ratio(cx['client'] + cx['server'], cy['client'] + cy['server']):>15}{note}"
        )
    for arm in arms:
        if arm.result is None:
            continue
        objects, download_s, load_s = (arm.phases.found if arm.phases else None) or (0, NAN, NAN)
        slower = max(download_s, load_s)
        child = arm.result.duration_seconds or NAN
        lines.append(
            f"  {arm.name}: {objects} objects: download {download_s:.1f} s, load {load_s:.1f} s, child wall "
            f"{child:.1f} s = {child / slower:.2f}x the slower phase; peak TMPDIR "
            f"{arm.peak / largest_object:.2f}x the largest object"
        )
        if arm.phases and arm.phases.fallback:
            lines.append(f"  {arm.name}: NOT the fast path: {arm.phases.fallback}")
    print("\n".join(lines), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1000000,5000000", help="comma-separated table sizes")
    parser.add_argument("--table", default="canvas.accounts")
    parser.add_argument("--part-rows", type=int, default=100_000)
    parser.add_argument("--sync-updates", type=float, default=0.10, help="updates per row for the sync")
    parser.add_argument("--sync-deletes", type=float, default=0.01, help="hard deletes per row for the sync")
    parser.add_argument("--skip-sync", action="store_true", help="the init only")
    parser.add_argument("--skip-stock", action="store_true", help="no stock CLI arms (development only)")
    parser.add_argument(
        "--shared-buffers",
        default="1GB",
        help="the server's shared_buffers (PostgreSQL's own default, 128MB, holds a tenth of a 5M-row table)",
    )
    args = parser.parse_args()
    namespace, name = args.table.split(".")
    work = Path(tempfile.mkdtemp(prefix="cd2-bench-streaming-"))
    print("{} cores, load average (1/5/15 min) {:.1f} {:.1f} {:.1f}".format(os.cpu_count(), *os.getloadavg()))
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
                    kept = work / f"snapshot-{rows}"
                    files = keep_snapshot(emulator, namespace, name, kept)
                    in_files = sum(lines for lines, _ in map(_count_lines, files))
                    if in_files != rows:
                        raise RuntimeError(f"the kept snapshot holds {in_files:,} rows, not {rows:,}")
                    arms = init_arms(pg, emulator, args, rows, work, server_pid, files)
                    shutil.rmtree(kept)
                    report("init", args.table, rows, serving, largest, arms)
                    if args.skip_sync:
                        continue
                    change_mix = {"update": args.sync_updates, "delete": args.sync_deletes}
                    changes = int(rows * (args.sync_updates + args.sync_deletes))
                    made = emulator.advance(changes=changes, change_mix=change_mix)["changes"][args.table]
                    since = watermark(pg, f"bench_product_{rows}", args.table)
                    serve_incremental(emulator, namespace, name, since)  # generates and caches the parts
                    served, warm_s, largest = serve_incremental(emulator, namespace, name, since)
                    print(f"sync changes made by the emulator: {made}", flush=True)
                    arms = sync_arms(pg, emulator, args, rows, work, server_pid)
                    report("sync", args.table, sum(made.values()), served / warm_s, largest, arms)
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


def _job_objects(emulator, namespace: str, name: str, since: str | None) -> tuple[str, list[dict]]:
    """A token and the objects of a snapshot (``since`` None) or incremental job, as the client asks."""
    token = _call(emulator, "POST", "/ids/auth/login", None, form="grant_type=client_credentials")[
        "access_token"
    ]
    query = {"format": "tsv", "mode": "condensed"} | ({"since": since} if since else {})
    job = _call(emulator, "POST", f"/dap/query/{namespace}/table/{name}/data", token, query)
    job = _call(emulator, "GET", f"/dap/job/{job['id']}", token)
    return token, job["objects"]


def _object_url(emulator, token: str, obj: dict) -> str:
    return _call(emulator, "POST", "/dap/object/url", token, [obj])["urls"][obj["id"]]["url"]


def serve_snapshot(emulator, namespace: str, name: str) -> tuple[int, float, int]:
    """Download a whole snapshot, 4 objects at a time, each URL asked for just before its download
    (the emulator's signed URLs expire after 15 minutes, sooner than a first pass over 5M rows)."""
    return serve_incremental(emulator, namespace, name, None)


def serve_incremental(emulator, namespace: str, name: str, since: str | None) -> tuple[int, float, int]:
    """Download the incremental since ``since`` as the client will ask for it; rows, seconds and the
    largest object's gunzipped bytes."""
    started = time.monotonic()
    token, objects = _job_objects(emulator, namespace, name, since)

    def download(obj: dict) -> tuple[int, int]:
        return _download(_object_url(emulator, token, obj))

    with ThreadPoolExecutor(4) as pool:
        found = list(pool.map(download, objects))
    return sum(rows for rows, _ in found), time.monotonic() - started, max(size for _, size in found)


def keep_snapshot(emulator, namespace: str, name: str, folder: Path) -> list[Path]:
    """Download a whole snapshot into ``folder``, one gunzipped TSV file per object (the bytes the client
    writes to ``$TMPDIR``), 4 at a time; the files in the job's order."""
    folder.mkdir()
    token, objects = _job_objects(emulator, namespace, name, None)

    def keep(numbered: tuple[int, dict]) -> Path:
        number, obj = numbered
        path = folder / f"part-{number:05d}.tsv"
        decompressor = zlib.decompressobj(31)
        with urllib.request.urlopen(_object_url(emulator, token, obj), timeout=3600) as response:
            with path.open("wb") as out:
                while chunk := response.read(1 << 16):
                    out.write(decompressor.decompress(chunk))
                out.write(decompressor.flush())
        if not decompressor.eof:
            raise RuntimeError(f"object {obj['id']}: the gzip stream ended early")
        return path

    with ThreadPoolExecutor(4) as pool:
        return list(pool.map(keep, enumerate(objects)))


def _count_lines(path: Path) -> tuple[int, int]:
    """Rows (lines after the header) and bytes of a kept file."""
    lines = 0
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            lines += chunk.count(b"\n")
    return lines - 1, path.stat().st_size


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
