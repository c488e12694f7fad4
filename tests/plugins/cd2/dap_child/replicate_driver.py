"""Replicate one table with the DAP client, the way our child process does; run with the DAP interpreter.

    DAP_PYTHON replicate_driver.py init|sync NAMESPACE TABLE

Like the child, it first applies patches of the client from the registry (:mod:`cd2.dap_child.patches`):
the accelerated reader and the set-based upserts (so ``CD2_ACCELERATED_READER=0 CD2_BULK_UPSERT=0`` runs
the stock client), then runs ``SQLReplicator.version_upgrade`` and ``initialize`` or ``synchronize`` with
usage tracking off. Secrets come from the environment, never argv: ``DAP_API_URL``, ``DAP_CLIENT_ID``,
``DAP_CLIENT_SECRET`` and ``CD2_DATABASE_URL`` (a ``postgresql://`` URL, by the child's name for it).

Prints one line ``DRIVER_RESULT {json}`` with ``accelerated`` and ``bulk_upsert`` (whether each patch is
active), ``reader``
(the reader class the client's init/sync modules use), ``sync_batch_rows`` (the rows the client's sync
writes per statement), ``seconds`` (the operation alone, after imports),
``download_seconds`` (the client downloading and gunzipping the objects), ``load_seconds`` (the client
reading the downloaded files into the database: the part the accelerator speeds up) and ``max_rss_kib``
(the process's peak resident set size). With ``CD2_STREAMING`` set (``1`` or ``0``), it also applies the
``download_check`` and ``streaming`` patches as the child does and reports which are active as
``streaming`` (``{"download": ..., "streaming": ...}``); unset, the client's own download path runs
unpatched. With ``CD2_FAST_INIT`` or ``CD2_FAST_SYNC`` set, it applies the ``fast_init`` or ``fast_sync`` patch too
(reported in ``fast_load``, with the tables that loaded through the client's loader instead and why, and
in ``side_by_side`` the batches each connection of the fast init's own loaded).
The timings wrap the client's own methods without changing them.
With ``CD2_DRIVER_KEEP_FILES=DIR``, the downloaded TSV files are also copied to DIR (for a raw COPY of
the very same bytes in the benchmark), outside the download and load timings.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import logging
import os
import resource
import shutil
import sys
import time
from pathlib import Path

PLUGINS_DIR = Path(__file__).resolve().parents[4] / "plugins"
RESULT_PREFIX = "DRIVER_RESULT "
FAST_LOADS = {"fast_init": "CD2_FAST_INIT", "fast_sync": "CD2_FAST_SYNC"}


def time_calls(owner: type, name: str, seconds: dict[str, float], label: str) -> None:
    """Add the wall time of every call of the async method ``owner.name`` to ``seconds[label]``."""
    is_static = isinstance(inspect.getattr_static(owner, name), staticmethod)
    original = getattr(owner, name)

    @functools.wraps(original)
    async def timed(*args, **kwargs):
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            seconds[label] = seconds.get(label, 0.0) + time.perf_counter() - started

    setattr(owner, name, staticmethod(timed) if is_static else timed)


def keep_downloads(directory: Path) -> None:
    """Copy every file the client downloads into ``directory`` as well."""
    from dap.api import DAPSession

    original = DAPSession.download_objects

    @functools.wraps(original)
    async def download_and_keep(*args, **kwargs):
        paths = await original(*args, **kwargs)
        directory.mkdir(parents=True, exist_ok=True)
        for path in paths:
            shutil.copy(path, directory / Path(path).name)
        return paths

    DAPSession.download_objects = download_and_keep


async def replicate(operation: str, namespace: str, table: str) -> None:
    from dap.api import DAPClient
    from dap.dap_types import Credentials
    from dap.integration.database import DatabaseConnection
    from dap.replicator.sql import SQLReplicator

    credentials = Credentials.create(
        client_id=os.environ["DAP_CLIENT_ID"], client_secret=os.environ["DAP_CLIENT_SECRET"]
    )
    async with DAPClient(os.environ["DAP_API_URL"], credentials, tracking=False) as session:
        replicator = SQLReplicator(session, DatabaseConnection(os.environ["CD2_DATABASE_URL"]))
        await replicator.version_upgrade()
        if operation == "init":
            await replicator.initialize(namespace, table)
        else:
            await replicator.synchronize(namespace, table)


def main(argv: list[str]) -> None:
    operation, namespace, table = argv
    if operation not in {"init", "sync"}:
        raise SystemExit(f"operation must be init or sync, not {operation!r}")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    sys.path.insert(0, str(PLUGINS_DIR))
    from cd2.dap_child import fast_load, patches

    streams = "CD2_STREAMING" in os.environ  # else the client's own download-then-load path, unpatched
    names = ["accelerated_reader", "bulk_upsert"] + (["download_check", "streaming"] if streams else [])
    # each unset: the client's own loader (the accelerated reader's)
    names += [name for name, switch in FAST_LOADS.items() if switch in os.environ]
    active = patches.apply(patches.named(*names))
    accelerated = "accelerated_reader" in active
    bulk = "bulk_upsert" in active
    streaming = None
    if streams:
        streaming = {"download": "download_check" in active, "streaming": "streaming" in active}
    from dap.api import DAPSession
    from dap.replicator import sql_op_init, sql_op_sync

    readers = {sql_op_init.AsyncTextReader.__name__, sql_op_sync.AsyncTextReader.__name__}
    phases: dict[str, float] = {"download_seconds": 0.0, "load_seconds": 0.0}
    time_calls(DAPSession, "download_objects", phases, "download_seconds")
    time_calls(sql_op_init.SqlOpInit, "init_insert_data_from_files_to_db", phases, "load_seconds")
    time_calls(sql_op_sync.SqlOpSync, "sync_insert_data_from_files_to_db", phases, "load_seconds")
    if os.environ.get("CD2_DRIVER_KEEP_FILES"):
        keep_downloads(Path(os.environ["CD2_DRIVER_KEEP_FILES"]))
    started = time.perf_counter()
    asyncio.run(replicate(operation, namespace, table))
    seconds = time.perf_counter() - started
    result = {
        "accelerated": accelerated,
        "bulk_upsert": bulk,
        "fast_load": {name: name in active for name in FAST_LOADS},
        "fast_load_refused": {label: str(why) for label, why in fast_load.refused.items()},
        "side_by_side": {label: dict(counts) for label, counts in fast_load.batches_side_by_side.items()},
        "streaming": streaming,
        "reader": ",".join(sorted(readers)),
        "sync_batch_rows": sql_op_sync.INSERT_BATCH_SIZE,
        "seconds": seconds,
        **phases,
        "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }
    print(RESULT_PREFIX + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
