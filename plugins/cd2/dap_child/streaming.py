"""Stream a job's objects through the DAP client one at a time, check every download ends its gzip stream,
and keep ``$TMPDIR`` from filling up.

What the child's patches of the client (:mod:`cd2.dap_child.patches`, bodies in its ``client_bodies``)
take from here:

- ``download_check`` (always): ``dap.api.DAPSession.download_resource`` becomes the same download (same
  URL, headers, file name, path-traversal guard, ``DownloadError`` on an HTTP error, chunks gunzipped
  with ``zlib.decompressobj(16 + MAX_WBITS)``), plus three checks the client lacks:
  1. the gzip stream reached its end (``decompressor.eof``; zlib then checked the trailer's CRC and
     length too), else :class:`~cd2.dap_child.errors.TruncatedDownloadError` (transient: the retry
     downloads again) is raised before a row of that object is loaded;
  2. the disk guard (:class:`DiskGuard`, rule below), else :class:`~cd2.dap_child.errors.DiskSpaceError`
     (permanent), also raised for ``ENOSPC``;
  3. gunzip and write run in a worker thread, 1 MiB at a time (zlib releases the GIL), so they overlap
     the load.
- ``streaming`` (unless ``CD2_STREAMING=0``): ``SqlOpInit.run`` and ``SqlOpSync.run`` become the
  client's own steps and calls in the client's order (schema, table_sync check, query job,
  ``explorer.synchronize``, load, metadata write last), except that ``download_objects`` of every object
  into one temporary folder followed by one load of the folder becomes a pipeline (:class:`ObjectStream`):
  each object is downloaded (the client's ``download_object``) into a folder of its own, loaded by the
  client's own ``init_insert_data_from_files_to_db`` / ``sync_insert_data_from_files_to_db`` (its parser,
  types, validation, 100k-row batches, COPY / upsert / delete SQL), then deleted, while the next
  ``CD2_STREAMING_PREFETCH`` objects (default 1) download. Objects are loaded in the job's order
  (condensed output holds each key once, so the order of objects does not change the result). The first
  object is on disk before ``explorer.synchronize`` runs, so a disk or download failure of a one-object
  job leaves the table untouched. The metadata (``table_sync``: watermark) is still written after the
  last object is loaded; a crash part-way leaves what the runner already handles: an init without a
  ``table_sync`` row (dropped and redone), a sync whose watermark did not move (re-run idempotently).
  With it, ``SqlOpSync.upsert_rows`` becomes :func:`behind_the_reader` (inside the streaming sync only;
  elsewhere it is the client's) and ``INSERT_BATCH_SIZE`` 100,000 becomes ``SYNC_BATCH_ROWS``: the
  client's per-batch write (validation, upsert, delete) is unchanged but runs behind the reader
  (:class:`WriteBehind`): the call returns once the previous batch's write has finished and this one has
  started, so the client parses the next batch (of this object or the next) while PostgreSQL merges the
  last. Writes stay one at a time, in the client's order, on its connection; a write's error is raised at
  the next batch or before the metadata write, so the watermark still moves only after every batch is
  written.

Disk rule (:class:`DiskGuard`): a reserve of 1/8 of the ``$TMPDIR`` filesystem, at most 64 MiB, is never
used. While an object downloads, its final size is projected as bytes written x Content-Length /
compressed bytes read (checked at every 4 MiB written); when the projected rest exceeds free space minus
the reserve, or free space falls under the reserve, the task fails permanently naming the folder, the
space needed and the space free. Without a Content-Length only the reserve is checked. Before the
pipeline starts another download while objects are already on disk, it waits until free space minus the
reserve holds the largest object seen so far once per download in flight. So a table fits in a disk that
holds about ``prefetch + 1`` objects, whatever the table's size, and one object larger than the disk fails
fast, within its first megabytes.

How to remove it: when Instructure's client streams objects and checks the gzip end itself, verify it
(tests/plugins/cd2/dap_child/test_streaming.py against the new version), then delete this module, the two
registry entries and their bodies, and the two errors in ``cd2.dap_child.errors``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

from cd2.dap_child.errors import DapEnvironmentError, DiskSpaceError

logger = logging.getLogger(__name__)

PREFETCH_SETTING = "CD2_STREAMING_PREFETCH"
DEFAULT_PREFETCH = 1
DOWNLOAD_CHUNK = 1024 * 1024
CHECK_EVERY_BYTES = 4 * 1024 * 1024
MAX_RESERVE_BYTES = 64 * 1024 * 1024
MIB = 1024 * 1024
# A quarter of the client's 100k: small enough that reading one batch overlaps writing the last within
# one object, large enough that a statement per batch costs nothing (measured in docs/design.md).
SYNC_BATCH_ROWS = 25_000


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

    def __init__(self, clock: LoadClock) -> None:
        self.clock = clock
        self.pending: asyncio.Task[None] | None = None

    async def submit(self, write: Any, *args: Any, **kwargs: Any) -> None:
        await self.drain()
        self.pending = asyncio.create_task(self._timed(write, args, kwargs))

    async def _timed(self, write: Any, args: tuple, kwargs: dict) -> None:
        with self.clock.running():
            await write(*args, **kwargs)

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


@contextlib.asynccontextmanager
async def writes_behind(clock: LoadClock) -> AsyncIterator[WriteBehind]:
    """While inside, the client's sync writes (:func:`behind_the_reader`) go behind the reader."""
    writer = WriteBehind(clock)
    context = _write_behind.set(writer)
    try:
        yield writer
    finally:
        _write_behind.reset(context)
        await writer.cancel()


def behind_the_reader(client_upsert_rows: Any) -> Any:
    """``SqlOpSync.upsert_rows``: behind the reader inside :func:`writes_behind`, the client's own elsewhere."""

    async def upsert_rows(*args: Any, **kwargs: Any) -> None:
        writer = _write_behind.get()
        if writer is None:
            await client_upsert_rows(*args, **kwargs)
        else:
            await writer.submit(client_upsert_rows, *args, **kwargs)

    return upsert_rows


def _folder_bytes(folder: str) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(parent, name))
            except OSError:
                pass
    return total
