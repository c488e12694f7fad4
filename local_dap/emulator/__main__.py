"""Run the emulator: ``python -m local_dap.emulator --host 127.0.0.1 --port 8080 [--schemas DIR] ...``.

The first line printed is the base URL (with the port actually bound, so ``--port 0`` works). The accepted
client id and secret come from ``--client-id``/``--client-secret`` or, to keep them out of argv, from
``DAP_EMULATOR_CLIENT_ID``/``DAP_EMULATOR_CLIENT_SECRET``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path

from aiohttp import web

from .builtin import builtin_tables
from .cache import PartCache
from .schema import NAMESPACES, TableDef, table_from_schema
from .server import Emulator, Settings, make_app


def load_schemas(directory: Path, tables: list[TableDef]) -> list[TableDef]:
    """Add or replace tables from ``DIR/<namespace>/<table>.json`` schema documents."""
    by_name = {(t.namespace, t.name): t for t in tables}
    for path in sorted(directory.glob("*/*.json")):
        namespace, name = path.parent.name, path.stem
        if namespace not in NAMESPACES:
            raise SystemExit(f"{path}: namespace {namespace!r} is not one of {', '.join(NAMESPACES)}")
        by_name[(namespace, name)] = table_from_schema(namespace, name, json.loads(path.read_text()))
    return list(by_name.values())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m local_dap.emulator", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    parser.add_argument("--schemas", type=Path, help="directory of <namespace>/<table>.json schema documents")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows", type=int, default=100, help="base rows per table")
    parser.add_argument("--part-rows", type=int, default=100_000, help="rows per part file")
    parser.add_argument(
        "--job-polls", type=int, default=0, help="answers 'waiting'/'running' before complete"
    )
    parser.add_argument("--step-seconds", type=int, default=3600, help="logical time per clock advance")
    parser.add_argument(
        "--rate-limits", action="store_true", help="enforce the published per-endpoint limits"
    )
    parser.add_argument(
        "--time-scale", type=float, default=1.0, help="10 turns '5 per minute' into '5 per 6 s'"
    )
    parser.add_argument("--client-id", default=os.environ.get("DAP_EMULATOR_CLIENT_ID", "emulator-client"))
    parser.add_argument(
        "--client-secret", default=os.environ.get("DAP_EMULATOR_CLIENT_SECRET", "emulator-secret")
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="where generated part files are kept and served from (default: a temporary folder, removed at exit)",
    )
    parser.add_argument("--no-cache", action="store_true", help="generate every download on the fly")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    tables = builtin_tables()
    if args.schemas:
        tables = load_schemas(args.schemas, tables)
    settings = Settings(
        client_id=args.client_id,
        client_secret=args.client_secret,
        seed=args.seed,
        rows=args.rows,
        part_rows=args.part_rows,
        job_polls=args.job_polls,
        step_seconds=args.step_seconds,
        rate_limits=args.rate_limits,
        time_scale=args.time_scale,
        tables=tables,
    )
    emulator = Emulator(settings)
    if not args.no_cache:
        emulator.cache = PartCache(args.cache_dir or Path(tempfile.mkdtemp(prefix="dap-emulator-cache-")))
    runner = web.AppRunner(make_app(emulator), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, args.host, args.port)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    print(f"http://{args.host}:{port}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        if emulator.cache is not None and args.cache_dir is None:
            shutil.rmtree(emulator.cache.folder, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    signal.signal(signal.SIGTERM, _interrupt)  # stop() terminates us: clean up the cache folder too
    try:
        asyncio.run(serve(parse_args(argv)))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
