"""Stream a job's objects through the DAP client one at a time, check every download ends its gzip stream,
and keep ``$TMPDIR`` from filling up.

What it patches (instructure-dap-client 2.3.1, versions in ``VERIFIED_CLIENT_VERSIONS`` only):

- ``dap.api.DAPSession.download_resource`` (always, unless the version is unverified): the same download
  (same URL, headers, file name, path-traversal guard, ``DownloadError`` on an HTTP error, chunks
  gunzipped with ``zlib.decompressobj(16 + MAX_WBITS)``), plus three checks the client lacks:
  1. the gzip stream reached its end (``decompressor.eof``; zlib then checked the trailer's CRC and
     length too), else :class:`~cd2.dap_child.errors.TruncatedDownloadError` (transient: the retry
     downloads again) is raised before a row of that object is loaded;
  2. the disk guard (:class:`DiskGuard`, rule below), else :class:`~cd2.dap_child.errors.DiskSpaceError`
     (permanent), also raised for ``ENOSPC``;
  3. gunzip and write run in a worker thread, 1 MiB at a time (zlib releases the GIL), so they overlap
     the load.
- ``dap.replicator.sql_op_init.SqlOpInit.run`` and ``dap.replicator.sql_op_sync.SqlOpSync.run`` (unless
  ``CD2_STREAMING=0``): the client's own steps and calls in the client's order (schema, table_sync
  check, query job, ``explorer.synchronize``, load, metadata write last), except that
  ``download_objects`` of every object into one temporary folder followed by one load of the folder
  becomes a pipeline (:class:`ObjectStream`): each object is downloaded (the client's
  ``download_object``) into a folder of its own, loaded by the client's own
  ``init_insert_data_from_files_to_db`` / ``sync_insert_data_from_files_to_db`` (its parser, types,
  validation, 100k-row batches, COPY / upsert / delete SQL), then deleted, while the next
  ``CD2_STREAMING_PREFETCH`` objects (default 1) download. Objects are loaded in the job's order
  (condensed output holds each key once, so the order of objects does not change the result). The first
  object is on disk before ``explorer.synchronize`` runs, so a disk or download failure of a one-object
  job leaves the table untouched. The metadata (``table_sync``: watermark) is still written after the
  last object is loaded; a crash part-way leaves what the runner already handles: an init without a
  ``table_sync`` row (dropped and redone), a sync whose watermark did not move (re-run idempotently).
- ``dap.replicator.sql_op_sync.SqlOpSync.upsert_rows`` (with streaming, inside the streaming sync only;
  elsewhere it is the client's) and ``dap.replicator.sql_op_sync.INSERT_BATCH_SIZE`` (100,000 ->
  ``SYNC_BATCH_ROWS``): the client's per-batch write (validation, upsert, delete) is unchanged but runs
  behind the reader (:class:`WriteBehind`): the call returns once the previous batch's write has
  finished and this one has started, so the client parses the next batch (of this object or the next)
  while PostgreSQL merges the last. Writes stay one at a time, in the client's order, on its connection;
  a write's error is raised at the next batch or before the metadata write, so the watermark still moves
  only after every batch is written.

Disk rule (:class:`DiskGuard`): a reserve of 1/8 of the ``$TMPDIR`` filesystem, at most 64 MiB, is never
used. While an object downloads, its final size is projected as bytes written x Content-Length /
compressed bytes read (checked at every 4 MiB written); when the projected rest exceeds free space minus
the reserve, or free space falls under the reserve, the task fails permanently naming the folder, the
space needed and the space free. Without a Content-Length only the reserve is checked. Before the
pipeline starts another download while objects are already on disk, it waits until free space minus the
reserve holds the largest object seen so far once per download in flight. So a table fits in a disk that
holds about ``prefetch + 1`` objects, whatever the table's size, and one object larger than the disk fails
fast, within its first megabytes.

It is meant for the DAP child process only (one table per process). Call :func:`install` first thing,
before any dap replicator module is used. ``CD2_STREAMING=0`` (or ``false``/``no``/``off``) restores the
client's download-everything-then-load path (the gzip and disk checks stay).

How to remove it: when Instructure's client streams objects and checks the gzip end itself, verify it
(tests/plugins/cd2/dap_child/test_streaming.py against the new version), then delete this module, its
``install()`` call in ``cd2.dap_child.__main__`` and the two errors in ``cd2.dap_child.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import errno
import importlib
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

from cd2.dap_child.client_version import CLIENT_DISTRIBUTION, switched_on, verified_version
from cd2.dap_child.errors import DapEnvironmentError, DiskSpaceError, TruncatedDownloadError

logger = logging.getLogger(__name__)

VERIFIED_CLIENT_VERSIONS = frozenset({"2.3.1"})
SETTING = "CD2_STREAMING"
PREFETCH_SETTING = "CD2_STREAMING_PREFETCH"
DEFAULT_PREFETCH = 1
DOWNLOAD_CHUNK = 1024 * 1024
CHECK_EVERY_BYTES = 4 * 1024 * 1024
MAX_RESERVE_BYTES = 64 * 1024 * 1024
MIB = 1024 * 1024
# A quarter of the client's 100k: small enough that reading one batch overlaps writing the last within
# one object, large enough that a statement per batch costs nothing (measured in docs/design.md).
SYNC_BATCH_ROWS = 25_000

_installed: dict[str, bool] = {}


def is_enabled() -> bool:
    """Whether ``CD2_STREAMING`` leaves the download/load pipeline on (the default)."""
    return switched_on(SETTING)


def prefetch() -> int:
    """How many objects may download while one loads (``CD2_STREAMING_PREFETCH``, default 1, at least 0)."""
    raw = os.environ.get(PREFETCH_SETTING, "").strip()
    if not raw:
        return DEFAULT_PREFETCH
    try:
        value = int(raw)
    except ValueError:
        raise DapEnvironmentError(f"{PREFETCH_SETTING}={raw!r} is not a whole number") from None
    if value < 0:
        raise DapEnvironmentError(f"{PREFETCH_SETTING}={raw!r} must be 0 or more")
    return value


# -- the disk guard --------------------------------------------------------------------------------


class DiskGuard:
    """Free space in one folder's filesystem, against what the objects about to land there need."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        total = shutil.disk_usage(folder).total
        self.reserve = min(MAX_RESERVE_BYTES, total // 8)

    def free(self) -> int:
        return shutil.disk_usage(self.folder).free

    def usable(self) -> int:
        return self.free() - self.reserve

    def error(self, needed: int, free: int | None = None) -> DiskSpaceError:
        free = self.free() if free is None else free
        return DiskSpaceError(
            f"not enough space in TMPDIR {self.folder}: the next download needs about "
            f"{needed / MIB:,.0f} MiB more, {free / MIB:,.0f} MiB are free and "
            f"{self.reserve / MIB:,.0f} MiB are kept in reserve; free space there or point TMPDIR "
            "at a larger disk"
        )

    def check(self, written: int, read: int, content_length: int | None) -> None:
        """Fail when the rest of this download (projected from its compression ratio) cannot fit."""
        free = self.free()
        if content_length and read:
            rest = max(0, int(written * content_length / read) - written)
        else:
            rest = 0
        if free - self.reserve < rest or free < self.reserve:
            raise self.error(rest or self.reserve - free, free)


# -- the patched download --------------------------------------------------------------------------


async def download_resource(self: Any, resource: Any, output_directory: str, decompress: bool = False) -> str:
    """``DAPSession.download_resource`` with a gzip end check and the disk guard (see the module doc)."""
    from dap.api import DownloadError

    os.makedirs(output_directory, exist_ok=True)
    url = str(resource.url)
    file_name = os.path.basename(urlparse(url).path)
    file_path = os.path.join(output_directory, file_name)
    if decompress:
        file_path = file_path.removesuffix(".gz")
    output_root = os.path.realpath(output_directory)
    resolved_path = os.path.realpath(file_path)
    if os.path.commonpath([output_root, resolved_path]) != output_root:
        raise DownloadError(f"refusing to write outside the output directory: {file_name}")

    guard = DiskGuard(output_directory)
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS) if decompress else None
    read = written = checked = 0
    logger.debug("Downloading: %s to %s", file_name, resolved_path)
    with open(resolved_path, "wb") as output_file:

        def write(chunk: bytes) -> int:
            data = decompressor.decompress(chunk) if decompressor else chunk
            try:
                output_file.write(data)
            except OSError as error:
                if error.errno == errno.ENOSPC:
                    raise guard.error(len(data), 0) from error
                raise
            return len(data)

        async with self._resources_download_client.get(url, headers=self._headers) as response:
            if not response.ok:
                raise DownloadError(f"Request failed with HTTP status code: {response.status}")
            content_length = response.content_length
            async for chunk in response.content.iter_chunked(DOWNLOAD_CHUNK):
                read += len(chunk)
                written += await asyncio.to_thread(write, chunk)
                if written - checked >= CHECK_EVERY_BYTES:
                    checked = written
                    guard.check(written, read, content_length)
    if decompressor is not None and not decompressor.eof:
        os.unlink(resolved_path)
        raise TruncatedDownloadError(
            f"the download of {file_name} ended before its gzip stream did ({read:,} bytes received"
            + (f" of {content_length:,} announced" if content_length else "")
            + "): the file is incomplete, nothing of it was loaded"
        )
    logger.debug("Download complete of %s (%s bytes, %s gunzipped)", file_name, read, written)
    return file_path


# -- the pipeline ----------------------------------------------------------------------------------


class ObjectStream:
    """Download a job's objects ahead of the loader, at most ``prefetch`` beyond the one loading.

    ``async with ObjectStream(session, objects) as stream``, then ``await stream.first_ready()``
    (optional: the first object is on disk), then ``async for folder in stream``: each folder holds one
    downloaded, gunzipped object and is deleted when the loop moves on.
    """

    def __init__(self, session: Any, objects: list[Any], prefetch_count: int | None = None) -> None:
        self.session = session
        self.objects = list(objects)
        self.window = (prefetch() if prefetch_count is None else prefetch_count) + 1
        self.root = ""
        self.guard: DiskGuard | None = None
        self.pending: deque[asyncio.Task[str]] = deque()
        self.next_index = 0
        self.loading = False
        self.largest = 0
        self.peak_bytes = 0
        self.download_seconds = 0.0
        self.load_clock = LoadClock()

    async def __aenter__(self) -> ObjectStream:
        self.root = tempfile.mkdtemp(prefix="cd2-objects-")
        self.guard = DiskGuard(self.root)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self.pending:
            task.cancel()
        await asyncio.gather(*self.pending, return_exceptions=True)
        self.pending.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    async def _download(self, index: int, obj: Any) -> str:
        folder = os.path.join(self.root, f"{index:06d}")
        started = time.perf_counter()
        await self.session.download_object(obj, folder, decompress=True)
        self.download_seconds += time.perf_counter() - started
        return folder

    def _room(self) -> bool:
        in_flight = sum(1 for task in self.pending if not task.done())
        return self.guard.usable() >= self.largest * (in_flight + 1)

    def _top_up(self) -> None:
        while self.next_index < len(self.objects) and len(self.pending) + self.loading < self.window:
            if (self.pending or self.loading) and not self._room():
                logger.info("waiting for a loaded object to be deleted before downloading the next")
                break
            index = self.next_index
            self.pending.append(asyncio.create_task(self._download(index, self.objects[index])))
            self.next_index += 1

    async def first_ready(self) -> None:
        """Wait until the first object is on disk (raising its download's error)."""
        self._top_up()
        if self.pending:
            await asyncio.wait({self.pending[0]})
            self.pending[0].result()

    def __aiter__(self):
        return self._folders()

    async def _folders(self):
        while self.pending or self.next_index < len(self.objects):
            self._top_up()
            folder = await self.pending.popleft()
            size = _folder_bytes(folder)
            self.largest = max(self.largest, size)
            self.loading = True
            self._top_up()
            self.peak_bytes = max(self.peak_bytes, _folder_bytes(self.root))
            try:
                with self.load_clock.running():
                    yield folder
            finally:
                shutil.rmtree(folder, ignore_errors=True)
                self.loading = False

    def log_summary(self) -> None:
        logger.info(
            "streamed %d objects: downloads %.1f s, loads %.1f s, at most %d bytes on disk when a load started",
            len(self.objects),
            self.download_seconds,
            self.load_clock.seconds,
            self.peak_bytes,
        )


class LoadClock:
    """Wall time during which the loader reads an object or writes a batch (the two overlap in a sync)."""

    def __init__(self) -> None:
        self.active = 0
        self.since = 0.0
        self.seconds = 0.0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if not self.active:
            self.since = time.perf_counter()
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            if not self.active:
                self.seconds += time.perf_counter() - self.since


class WriteBehind:
    """The client's per-batch sync writes, one at a time and in order, each running while the next is read.

    :meth:`submit` waits for the write in flight (raising its error), then starts this one and returns;
    :meth:`drain` waits for the last; :meth:`cancel` stops one still running (after another error).
    """

    def __init__(self, write: Any, clock: LoadClock) -> None:
        self.write = write
        self.clock = clock
        self.pending: asyncio.Task[None] | None = None

    async def submit(self, *args: Any, **kwargs: Any) -> None:
        await self.drain()
        self.pending = asyncio.create_task(self._timed(args, kwargs))

    async def _timed(self, args: tuple, kwargs: dict) -> None:
        with self.clock.running():
            await self.write(*args, **kwargs)

    async def drain(self) -> None:
        task, self.pending = self.pending, None
        if task is not None:
            await task

    async def cancel(self) -> None:
        task, self.pending = self.pending, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


_write_behind: contextvars.ContextVar[WriteBehind | None] = contextvars.ContextVar(
    "cd2_write_behind", default=None
)
_client_upsert_rows: Any = None


async def upsert_rows(*args: Any, **kwargs: Any) -> None:
    """``SqlOpSync.upsert_rows``: behind the reader inside a streaming sync, the client's own elsewhere."""
    writer = _write_behind.get()
    if writer is None:
        await _client_upsert_rows(*args, **kwargs)
    else:
        await writer.submit(*args, **kwargs)


def _folder_bytes(folder: str) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(parent, name))
            except OSError:
                pass
    return total


# -- the client's two operations, streaming --------------------------------------------------------


async def init_run(self: Any) -> None:
    """``SqlOpInit.run``, loading each object as it arrives (see the module doc)."""
    from dap import ui
    from dap.dap_types import Format, Mode, SnapshotQuery
    from dap.replicator import meta_schema
    from dap.replicator.sql_metatable_handler import get_table_meta_record, initdb_insert_table_metadata
    from dap.replicator.sql_op import fetch_schema_for_table

    if not self.session:
        raise ValueError("Internal error: session is not set")
    ui.info("Fetching schema and synchronizing with local schema")
    entity_type, schema, versioned_schema = await fetch_schema_for_table(
        self.session, self.namespace, self.table_name
    )
    # The client's order: its DDL first (init always runs into a fresh stage, see staging.py).
    await self.explorer.synchronize(modules=[meta_schema, self.namespace_module])
    if await get_table_meta_record(self.conn, self.namespace, self.table_name):
        raise ValueError("Table already initialized. Please run syncdb to update it.")
    table_data = await self.session.get_table_data(
        self.namespace, self.table_name, SnapshotQuery(format=Format.TSV, mode=Mode.condensed)
    )
    async with ObjectStream(self.session, table_data.objects) as stream:
        async for folder in stream:
            await self.init_insert_data_from_files_to_db(self.conn, entity_type, folder)
    stream.log_summary()
    await initdb_insert_table_metadata(
        self.conn, self.namespace, table_data, schema, self.table_name, versioned_schema
    )


async def sync_run(self: Any) -> None:
    """``SqlOpSync.run``, loading each object as it arrives (see the module doc)."""
    from dap import ui
    from dap.dap_types import Format, IncrementalQuery, Mode
    from dap.replicator import meta_schema
    from dap.replicator.sql_metatable_handler import get_table_meta_record, sync_upsert_table_metadata
    from dap.replicator.sql_op import UTC_TIMEZONE, fetch_schema_for_table

    if not self.session:
        raise ValueError("Internal error: session is not set")
    ui.info("Fetching schema and synchronizing with local schema")
    entity_type, schema, versioned_schema = await fetch_schema_for_table(
        self.session, self.namespace, self.table_name
    )
    table_meta = await get_table_meta_record(self.conn, self.namespace, self.table_name)
    if not table_meta:
        raise ValueError("Table not initialized. Please run initdb first.")
    result = await self.session.get_table_data(
        self.namespace,
        self.table_name,
        IncrementalQuery(
            format=Format.TSV,
            mode=Mode.condensed,
            since=table_meta.timestamp.replace(tzinfo=UTC_TIMEZONE),
            until=None,
        ),
    )
    async with ObjectStream(self.session, result.objects) as stream:
        await stream.first_ready()
        await self.explorer.synchronize(modules=[meta_schema, self.namespace_module])
        writer = WriteBehind(_client_upsert_rows, stream.load_clock)
        context = _write_behind.set(writer)
        try:
            async for folder in stream:
                await self.sync_insert_data_from_files_to_db(
                    self.conn, entity_type, folder, self.namespace, self.table_name, self.dialect
                )
            await writer.drain()
        finally:
            _write_behind.reset(context)
            await writer.cancel()
    stream.log_summary()
    await sync_upsert_table_metadata(
        self.conn, self.namespace, result, schema, table_meta, self.table_name, versioned_schema
    )


# -- installing ------------------------------------------------------------------------------------


def install() -> dict[str, bool]:
    """Patch the client (see the module doc); return which parts are active: ``download`` and ``streaming``.

    Safe to call more than once.
    """
    global _client_upsert_rows
    if _installed:
        return dict(_installed)
    version = verified_version(
        "object streaming and download checks",
        VERIFIED_CLIENT_VERSIONS,
        "the client downloads whole tables to TMPDIR and does not notice truncated downloads",
    )
    if version is None:
        return {"download": False, "streaming": False}
    api = importlib.import_module("dap.api")
    api.DAPSession.download_resource = download_resource
    _installed["download"] = True
    _installed["streaming"] = False
    if is_enabled():
        sql_op_sync = importlib.import_module("dap.replicator.sql_op_sync")
        importlib.import_module("dap.replicator.sql_op_init").SqlOpInit.run = init_run
        sql_op_sync.SqlOpSync.run = sync_run
        _client_upsert_rows = sql_op_sync.SqlOpSync.upsert_rows
        sql_op_sync.SqlOpSync.upsert_rows = staticmethod(upsert_rows)
        sql_op_sync.INSERT_BATCH_SIZE = SYNC_BATCH_ROWS
        _installed["streaming"] = True
        logger.info("object streaming installed for %s %s", CLIENT_DISTRIBUTION, version)
    else:
        logger.info("object streaming turned off by %s; the client downloads every object first", SETTING)
    return dict(_installed)
