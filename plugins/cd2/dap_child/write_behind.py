"""Write a streaming sync's batches behind the reader: the client parses the next batch while PostgreSQL
writes the last.

What the child's ``streaming`` patch (:mod:`cd2.dap_child.patches`, its ``sync_run`` body in
``client_bodies``) takes from here: ``SqlOpSync.upsert_rows`` becomes :func:`behind_the_reader` (inside
the streaming sync only; elsewhere it is the client's) and ``INSERT_BATCH_SIZE`` 100,000 becomes
``SYNC_BATCH_ROWS``: the client's per-batch write (validation, upsert, delete) is unchanged but runs
behind the reader (:class:`WriteBehind`): the call returns once the previous batch's write has finished
and this one has started, so the client parses the next batch (of this object or the next) while
PostgreSQL merges the last. Writes stay one at a time, in the client's order, on its connection; a
write's error is raised at the next batch or before the metadata write, so the watermark still moves only
after every batch is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

# A quarter of the client's 100k: small enough that reading one batch overlaps writing the last within
# one object, large enough that a statement per batch costs nothing (measured in docs/design.md).
SYNC_BATCH_ROWS = 25_000


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
