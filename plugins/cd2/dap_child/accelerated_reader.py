"""Feed the DAP client's TSV reader from large buffered reads instead of one thread hop per line.

What it patches: the name ``AsyncTextReader`` inside ``dap.replicator.sql_op_init`` and
``dap.replicator.sql_op_sync`` (instructure-dap-client 2.3.1). Those two modules open each downloaded,
gunzipped TSV file with ``aiofiles.open(path, mode="rb")`` and hand it to
``pysqlsync.data.exchange.AsyncTextReader``, which awaits ``stream.readline()`` once per line. aiofiles
runs every one of those calls in a thread pool, so each line costs a thread round trip: the client loads
3,000-9,000 rows/s, 98% of it reading, 20-60x slower than PostgreSQL's own COPY of the same rows.

The replacement is a subclass of the client's ``AsyncTextReader`` that changes only its ``__init__``: it
wraps the same aiofiles file object in :class:`ChunkedLineReader`, whose ``readline()`` serves lines
out of 4 MiB ``read()`` calls (one thread hop per chunk, not per line). The file is still opened by the
client, in the same binary mode, and lines are split exactly as ``io.BufferedReader.readline`` splits
them (at ``b"\\n"``, newline kept, the last line without one if the file lacks it, then ``b""``), so
``parse_line`` sees identical bytes. Header handling, parsing, type conversion, validation, batching,
COPY/upsert/delete SQL and the metadata writes all remain the client's own code.

It is meant for the DAP child process only (one table per process, its own virtualenv), which installs
it as the ``accelerated_reader`` patch (:mod:`cd2.dap_child.patches`). It is on by default; set
``CD2_ACCELERATED_READER=0`` (or ``false``/``no``/``off``) to run the stock reader.

How to remove it: once Instructure's client reads files without a thread hop per line (see
docs/upstream-report-reader.md), verify the new version's load speed, then delete this module and its
registry entry. Until then, when upgrading the client, re-run the equivalence tests
(tests/plugins/cd2/dap_child/test_accelerated_reader.py) against the new version before adding it to
the registry's verified versions.
"""

from __future__ import annotations

from typing import Any, Protocol

CHUNK_SIZE = 4 * 1024 * 1024


class AsyncReadable(Protocol):
    async def read(self, size: int = -1) -> bytes: ...


class ChunkedLineReader:
    """An async ``readline()`` over a binary async file, fed by large ``read()`` calls.

    Returns the same lines as ``io.BufferedReader.readline()`` on the same bytes.
    """

    def __init__(self, stream: AsyncReadable, chunk_size: int = CHUNK_SIZE) -> None:
        self.stream = stream
        self.chunk_size = chunk_size
        self._buffer = b""
        self._position = 0
        self._at_eof = False

    async def readline(self, limit: int = -1) -> bytes:
        """The next line including its ``b"\\n"``; the unterminated tail at end of file; then ``b""``."""
        newline = self._buffer.find(b"\n", self._position)
        if newline >= 0 and limit < 0:  # the common case: the whole line is in the buffer
            line = self._buffer[self._position : newline + 1]
            self._position = newline + 1
            return line
        parts = []
        while True:
            newline = self._buffer.find(b"\n", self._position)
            if newline >= 0:
                parts.append(self._buffer[self._position : newline + 1])
                self._position = newline + 1
                break
            parts.append(self._buffer[self._position :])
            self._buffer, self._position = b"", 0
            if self._at_eof:
                break
            self._buffer = await self.stream.read(self.chunk_size)
            self._at_eof = not self._buffer
        line = parts[0] if len(parts) == 1 else b"".join(parts)
        if 0 <= limit < len(line):
            self._buffer = line[limit:] + self._buffer[self._position :]
            self._position = 0
            line = line[:limit]
        return line


def make_reader_class(stock_reader: type, chunk_size: int = CHUNK_SIZE) -> type:
    """A subclass of the client's ``AsyncTextReader`` that reads lines through a :class:`ChunkedLineReader`."""

    class AcceleratedTextReader(stock_reader):
        """The client's ``AsyncTextReader``, reading lines through a :class:`ChunkedLineReader`."""

        def __init__(self, stream: Any, names_to_types: dict[str, type]) -> None:
            super().__init__(ChunkedLineReader(stream, chunk_size), names_to_types)

    return AcceleratedTextReader
