"""Stream a job's objects through the DAP client one at a time, check every download ends its gzip stream,
and keep ``$TMPDIR`` from filling up (:mod:`cd2.dap_child.disk_guard`).

What the child's patches of the client (:mod:`cd2.dap_child.patches`, bodies in its ``client_bodies``)
take from here:

- ``download_check`` (always): ``dap.api.DAPSession.download_resource`` becomes the same download (same
  URL, headers, file name, path-traversal guard, ``DownloadError`` on an HTTP error, chunks gunzipped
  with ``zlib.decompressobj(16 + MAX_WBITS)``), plus three checks the client lacks:
  1. the gzip stream reached its end (``decompressor.eof``; zlib then checked the trailer's CRC and
     length too), else :class:`~cd2.dap_child.errors.TruncatedDownloadError` (transient: the retry
     downloads again) is raised before a row of that object is loaded;
  2. the disk guard (:class:`~cd2.dap_child.disk_guard.DiskGuard`), else
     :class:`~cd2.dap_child.errors.DiskSpaceError` (permanent), also raised for ``ENOSPC``;
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
  With it, the sync writes behind the reader (:mod:`cd2.dap_child.write_behind`).

How to remove it: when Instructure's client streams objects and checks the gzip end itself, verify it
(test_streaming.py, test_disk_guard.py and test_write_behind.py in tests/plugins/cd2/dap_child/ against
the new version), then delete this module, ``disk_guard`` and ``write_behind``, the two registry entries
and their bodies, and the two errors in ``cd2.dap_child.errors``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
import time
from collections import deque
from typing import Any

from cd2.dap_child import session
from cd2.dap_child.disk_guard import DiskGuard
from cd2.dap_child.write_behind import LoadClock

logger = logging.getLogger(__name__)

PREFETCH_SETTING = "CD2_STREAMING_PREFETCH"
DEFAULT_PREFETCH = 1
DOWNLOAD_CHUNK = 1024 * 1024


def prefetch() -> int:
    """How many objects may download while one loads (``CD2_STREAMING_PREFETCH``, default 1, at least 0)."""
    return session.whole_number(PREFETCH_SETTING, DEFAULT_PREFETCH, 0)


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


def _folder_bytes(folder: str) -> int:
    total = 0
    for parent, _, files in os.walk(folder):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(parent, name))
            except OSError:
                pass
    return total
