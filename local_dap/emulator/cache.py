"""Part files generated once per table state, then served from disk (as the real API serves prepared files).

A part's cache key is everything its bytes depend on: the seed and base rows, the table's name and schema history
and change-log length, the job's format, mode and time range, and the part's rows. Any change (a clock
advance, a schema change, a reset with other settings) gives new keys, so a stale file is never served.
The folder is the emulator's own (``--cache-dir``, default a temporary folder removed at exit).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path


class PartCache:
    """Gzipped part files on disk, keyed by what they contain."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder or tempfile.mkdtemp(prefix="dap-emulator-cache-"))
        self.folder.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, asyncio.Lock] = {}
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).hexdigest()[:32]

    async def path(self, key: str, generate: Callable[[], Iterable[bytes]]) -> Path:
        """The file for ``key``, generated (in a thread, once even under concurrent requests) if missing."""
        target = self.folder / f"{key}.part"  # no .gz suffix: aiohttp would add Content-Encoding
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            if target.exists():
                self.hits += 1
                return target
            self.misses += 1
            await asyncio.to_thread(_write, target, generate)
        return target


def _write(target: Path, generate: Callable[[], Iterable[bytes]]) -> None:
    partial = target.with_suffix(".writing")
    with open(partial, "wb") as output:
        for chunk in generate():
            output.write(chunk)
    os.replace(partial, target)
