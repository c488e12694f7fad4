"""Checks of the accelerated reader that need the DAP client; run with the DAP interpreter.

DAP_PYTHON child_checks.py install [UNVERIFIED]
    Applies the registry's ``accelerated_reader`` patch twice (as the child would, with the environment's
    settings); prints JSON with whether it was active each time, which reader class the client's
    init/sync modules then use, and every warning logged. With UNVERIFIED, the patch's verified
    versions are replaced by one the client isn't.
DAP_PYTHON child_checks.py records TSV_FILE CHUNK_SIZE...
    Reads TSV_FILE (columns named ``<type>.<name>``, type one of str, int, float, bool, datetime,
    json) as the client does (aiofiles.open(path, "rb") + AsyncTextReader), once stock and once per
    chunk size accelerated; prints JSON with the records of each run, repr'd.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4] / "plugins"))

from cd2.dap_child import accelerated_reader, patches  # noqa: E402


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def check_install(unverified: bool) -> dict:
    warnings = _Collect()
    logging.getLogger().addHandler(warnings)
    entry = patches.named("accelerated_reader")
    if unverified:
        entry = tuple(dataclasses.replace(p, verified=frozenset({"0.0.0-not-this-one"})) for p in entry)
    first = "accelerated_reader" in patches.apply(entry)
    second = "accelerated_reader" in patches.apply(entry)
    from dap.replicator import sql_op_init, sql_op_sync
    from pysqlsync.data import exchange

    return {
        "first": first,
        "second": second,
        "init_reader": sql_op_init.AsyncTextReader.__name__,
        "sync_reader": sql_op_sync.AsyncTextReader.__name__,
        "accelerated_is_subclass": issubclass(sql_op_init.AsyncTextReader, exchange.AsyncTextReader),
        "pysqlsync_reader": exchange.AsyncTextReader.__name__,
        "warnings": warnings.messages,
    }


TYPES = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "datetime": datetime.datetime,
    "json": dict,
}


async def read_records(path: str, reader_class: type, names_to_types: dict[str, type]) -> list[str]:
    import aiofiles

    async with aiofiles.open(path, mode="rb") as stream:
        reader = reader_class(stream, names_to_types)
        await reader.read_header()
        return [repr(record) async for record in reader.records()]


def check_records(path: str, chunk_sizes: list[int]) -> dict:
    from pysqlsync.data.exchange import AsyncTextReader

    header = Path(path).read_bytes().split(b"\n", 1)[0].decode()
    names_to_types = {name: TYPES[name.split(".")[0]] for name in header.split("\t")}
    runs = {"stock": asyncio.run(read_records(path, AsyncTextReader, names_to_types))}
    for size in chunk_sizes:
        reader_class = accelerated_reader.make_reader_class(AsyncTextReader, chunk_size=size)
        runs[str(size)] = asyncio.run(read_records(path, reader_class, names_to_types))
    return runs


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "install":
        print(json.dumps(check_install(unverified=args == ["UNVERIFIED"])))
    else:
        print(json.dumps(check_records(args[0], [int(size) for size in args[1:]])))
