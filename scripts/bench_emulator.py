"""Benchmark the local DAP emulator (prints figures; not a test).

Run from the repository root with an interpreter that has psycopg2 (the Airflow virtualenv):

    .venv/airflow-3.3.1/bin/python scripts/bench_emulator.py [--rows 1000000] [--table accounts] [--skip-initdb]

Prints, for snapshots of 100k and ``--rows`` rows: rows/s served on a cold part cache (the emulator
generates every part) and again warm (served from the cache), and the emulator's peak RSS; then the wall
time of ``dap initdb`` for that table into a throwaway local PostgreSQL.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import time
import urllib.request
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from local_dap.control import EmulatorProcess, start_emulator  # noqa: E402
from local_dap.paths import DAP_BIN  # noqa: E402


def _call(emulator: EmulatorProcess, method: str, path: str, token: str | None, body=None, form=None) -> dict:
    headers = {"Content-Type": "application/json"}
    data = None if body is None else json.dumps(body).encode()
    if form is not None:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        data = form.encode()
    if token is None:
        raw = f"{emulator.client_id}:{emulator.client_secret}".encode()
        headers["Authorization"] = "Basic " + base64.b64encode(raw).decode()
    else:
        headers["Authorization"] = "Bearer " + token
    request = urllib.request.Request(emulator.base_url + path, data=data, method=method, headers=headers)
    with urllib.request.urlopen(request, timeout=3600) as response:
        return json.loads(response.read())


def _download(url: str) -> tuple[int, int]:
    """Rows and gunzipped bytes of one object (the bytes the client writes to ``$TMPDIR``)."""
    decompressor = zlib.decompressobj(31)
    lines = size = 0
    with urllib.request.urlopen(url, timeout=3600) as response:
        while chunk := response.read(1 << 16):
            data = decompressor.decompress(chunk)
            lines += data.count(b"\n")
            size += len(data)
    return lines - 1, size  # header


def serve_snapshot(emulator: EmulatorProcess, namespace: str, table: str) -> tuple[int, float]:
    """Download a whole TSV snapshot the way the client does (4 parts at a time); rows and seconds."""
    token = _call(emulator, "POST", "/ids/auth/login", None, form="grant_type=client_credentials")[
        "access_token"
    ]
    started = time.monotonic()
    job = _call(emulator, "POST", f"/dap/query/{namespace}/table/{table}/data", token,
                {"format": "tsv", "mode": "condensed"})  # fmt: skip
    job = _call(emulator, "GET", f"/dap/job/{job['id']}", token)
    urls = [
        _call(emulator, "POST", "/dap/object/url", token, [obj])["urls"][obj["id"]]["url"]
        for obj in job["objects"]
    ]
    with ThreadPoolExecutor(4) as pool:
        rows = sum(lines for lines, _ in pool.map(_download, urls))
    return rows, time.monotonic() - started


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--namespace", default="canvas")
    parser.add_argument("--table", default="accounts")
    parser.add_argument("--skip-initdb", action="store_true")
    args = parser.parse_args()

    results = {}
    for rows in (100_000, args.rows):
        with start_emulator(rows=rows) as emulator:
            cold = serve_snapshot(emulator, args.namespace, args.table)
            warm = serve_snapshot(emulator, args.namespace, args.table)
            results[rows] = (cold, warm, peak_rss_kib(emulator.process.pid))
    for rows, (cold, warm, rss) in results.items():
        print(
            f"snapshot {args.namespace}.{args.table} {rows:>9,} rows: cold (generating) {cold[0]:,} rows in "
            f"{cold[1]:.1f} s = {cold[0] / cold[1]:,.0f} rows/s; warm (cached) {warm[0] / warm[1]:,.0f} rows/s; "
            f"emulator peak RSS {rss / 1024:.1f} MiB"
        )
    small, large = results[100_000][2], results[args.rows][2]
    print(f"peak RSS ratio {args.rows:,} vs 100,000 rows: {large / small:.2f}x (must be <= 1.5x)")

    if args.skip_initdb:
        return
    from local_dap.postgres import temporary_server

    with temporary_server() as pg, start_emulator(rows=args.rows) as emulator:
        url = pg.create_database("bench")
        started = time.monotonic()
        result = subprocess.run(
            [str(DAP_BIN / "dap"), "--non-interactive", "--no-tracking", "--loglevel", "warning", "initdb",
             "--namespace", args.namespace, "--table", args.table, "--connection-string", url],
            env=emulator.client_env(), capture_output=True, text=True,
        )  # fmt: skip
        seconds = time.monotonic() - started
        conn = pg.connect("bench")
        with conn.cursor() as cur:
            cur.execute(f'SELECT count(*) FROM "{args.namespace}"."{args.table}"')
            loaded = cur.fetchone()[0]
        conn.close()
        print(
            f"dap initdb {args.namespace}.{args.table} {args.rows:,} rows: exit {result.returncode}, "
            f"{loaded:,} rows loaded in {seconds:.1f} s = {loaded / seconds:,.0f} rows/s"
        )


if __name__ == "__main__":
    main()
