"""Keep ``$TMPDIR`` from filling up: free space in its filesystem against what the objects about to land
there need (for the ``download_check`` body in :mod:`cd2.dap_child.patches.client_bodies` and the
pipeline of :mod:`cd2.dap_child.streaming`).

Disk rule (:class:`DiskGuard`): a reserve of 1/8 of the ``$TMPDIR`` filesystem, at most 64 MiB, is never
used. While an object downloads, its final size is projected as bytes written x Content-Length /
compressed bytes read (checked at every 4 MiB written); when the projected rest exceeds free space minus
the reserve, or free space falls under the reserve, the task fails permanently naming the folder, the
space needed and the space free. Without a Content-Length only the reserve is checked. Before the
pipeline starts another download while objects are already on disk, it waits until free space minus the
reserve holds the largest object seen so far once per download in flight. So a table fits in a disk that
holds about ``prefetch + 1`` objects, whatever the table's size, and one object larger than the disk fails
fast, within its first megabytes.
"""

from __future__ import annotations

import shutil

from cd2.dap_child.errors import DiskSpaceError

CHECK_EVERY_BYTES = 4 * 1024 * 1024
MAX_RESERVE_BYTES = 64 * 1024 * 1024
MIB = 1024 * 1024


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
