"""The client's own method bodies, copied and changed: the only copies of client code in the child.

Each is registered in :mod:`cd2.dap_child.patches` with a fingerprint of the method it copies, so it never
runs on a client whose method moved. What each adds lives in its feature module (:mod:`..streaming`,
:mod:`..write_behind`, :mod:`..fast_load`, :mod:`..disk_guard`, :mod:`..ddl_guard`); here are only the
client's steps around it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import zlib
from typing import Any
from urllib.parse import urlparse

from cd2.dap_child import ddl_guard, disk_guard, fast_load, streaming, write_behind
from cd2.dap_child.errors import TruncatedDownloadError

logger = logging.getLogger(__name__)


# -- streaming: dap.replicator.sql_op_init.SqlOpInit.run, dap.replicator.sql_op_sync.SqlOpSync.run ----


async def init_run(self: Any) -> None:
    """``SqlOpInit.run``, loading each object as it arrives (see :mod:`..streaming`)."""
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
    async with (
        streaming.ObjectStream(self.session, table_data.objects) as stream,
        fast_load.side_by_side(stream.load_clock) as connections,
    ):
        async for folder in stream:
            await self.init_insert_data_from_files_to_db(self.conn, entity_type, folder)
        await connections.drain()
    stream.log_summary()
    await initdb_insert_table_metadata(
        self.conn, self.namespace, table_data, schema, self.table_name, versioned_schema
    )


async def sync_run(self: Any) -> None:
    """``SqlOpSync.run``, loading each object as it arrives, writing behind the reader (see
    :mod:`..streaming`, :mod:`..write_behind`)."""
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
    async with streaming.ObjectStream(self.session, result.objects) as stream:
        await stream.first_ready()
        await self.explorer.synchronize(modules=[meta_schema, self.namespace_module])
        async with write_behind.writes_behind(stream.load_clock) as writer:
            async for folder in stream:
                await self.sync_insert_data_from_files_to_db(
                    self.conn, entity_type, folder, self.namespace, self.table_name, self.dialect
                )
            await writer.drain()
    stream.log_summary()
    await sync_upsert_table_metadata(
        self.conn, self.namespace, result, schema, table_meta, self.table_name, versioned_schema
    )


# -- download_check: dap.api.DAPSession.download_resource ---------------------------------------------


async def download_resource(self: Any, resource: Any, output_directory: str, decompress: bool = False) -> str:
    """``DAPSession.download_resource`` with a gzip end check and the disk guard (see :mod:`..streaming`,
    :mod:`..disk_guard`)."""
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

    guard = disk_guard.DiskGuard(output_directory)
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
            async for chunk in response.content.iter_chunked(streaming.DOWNLOAD_CHUNK):
                read += len(chunk)
                written += await asyncio.to_thread(write, chunk)
                if written - checked >= disk_guard.CHECK_EVERY_BYTES:
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


# -- ddl_guard: pysqlsync.base.Explorer.synchronize ----------------------------------------------------


def explorer_synchronize(stock: Any) -> Any:
    """``Explorer.synchronize`` that moves the guarded table's views aside around its DDL
    (:mod:`..ddl_guard`); ``stock``, the client's own, outside a guard."""
    from pysqlsync import base
    from pysqlsync.formation.inspection import get_entity_types

    async def synchronize(self, *, module=None, modules=None) -> None:  # noqa: ANN001
        if not ddl_guard.guarding():
            return await stock(self, module=module, modules=modules)
        entity_modules = base._module_or_list(module, modules)
        generator = self.conn.connection.generator
        generator.reset()
        generator.create(tables=get_entity_types(entity_modules))
        target_state = generator.state
        await self.discover(modules=entity_modules)
        stmt = generator.get_mutate_stmt(target_state)
        if stmt is None:
            return
        async with ddl_guard.views_moved_aside():
            logger.info("synchronize schema with SQL:\n%s", stmt)
            await self.conn.execute(stmt)
            generator.state = target_state

    return synchronize
