"""Load at the database's speed: the child forwards each object's TSV bytes, PostgreSQL converts them.

What it replaces (the ``fast_init`` and ``fast_sync`` patches, :mod:`cd2.dap_child.patches`): the loaders
``SqlOpInit.init_insert_data_from_files_to_db`` and ``SqlOpSync.sync_insert_data_from_files_to_db`` of
instructure-dap-client 2.3.1, which parse every TSV line into Python values and have asyncpg encode them
again (a binary COPY on init; a COPY into a temporary table and a merge per batch on sync, with
``bulk_upsert``), so a big load is bound by the worker's CPU, not the database's.

Instead, each downloaded (gunzipped) file goes to PostgreSQL as bytes, untouched by the child, in
batches of about :data:`BATCH_BYTES` of whole lines (``CD2_FAST_LOAD_BATCH_BYTES``), each in three steps:

1. ``COPY`` the bytes after the header, as they are, into a temporary table of text columns, one per
   header label (``meta.ts`` too, which the table has no column for): the client's TSV escapes
   (``\\t \\n \\r \\b \\f \\v \\0 \\\\``, ``\\N`` for NULL) are PostgreSQL's text format, so the
   database reads the values the client's parser would;
2. each lookup column's ("enum or free text") values into its lookup table, as the client's merge does
   (``INSERT ... ON CONFLICT DO NOTHING`` of the distinct values), committed at once;
3. in one transaction, ``INSERT INTO`` the table ``SELECT`` each column cast to the client's column type
   by its input function (the column's length or precision then applies as on the client's COPY), JSON
   arrays unnested into PostgreSQL arrays, lookup values joined to their ids. Where the client upserts (a
   sync's ``U`` rows, the init of a log table), the last row of a key wins, ``ON CONFLICT DO UPDATE``;
   a sync then deletes its ``D`` rows' keys, as the client does per batch.

A plain init's batches are independent (no key decides which row wins), so inside the streaming init
(:func:`side_by_side`) they load on :data:`DEFAULT_CONNECTIONS` connections of the load's own
(``CD2_FAST_INIT_CONNECTIONS``; ``1``: on the client's connection, one batch after another): a batch is
copied into a free connection's stage, then converted there while the next batch, of the same object or
the next, is copied on another; the conversions are waited for before the client writes ``table_sync``.
The database's conversion so runs on as many of its cores. Lookup values go in sorted order and commit
before the long ``INSERT`` (step 2), so two connections meeting on a new value wait for each other only
briefly and never in a cycle. The client's connection stays idle meanwhile (the client's own calls on it
never meet a conversion in flight); a database that refuses another connection gets the load on the
client's connection, with a warning. Keyed loads (a sync, a log table's init) keep one connection, in
file order.

The client still creates the table, its types and lookup tables (``explorer.synchronize``) and writes
``table_sync``; streaming, the staged swap, the download check, the disk guard and the API budget are
untouched: this only loads the files the stream hands over. The row count goes to the client's own log
line ("Inserted/Upserted N records into table"), which the ``row_counts`` patch reads.

A column the fast path would not store as the client does sends the whole table through the client's
own loader, with one log line naming the column and why (:func:`plan`): a ``json`` (not ``jsonb``) or
text column fed JSON (the client stores Python's re-encoding of it), a list of lookup values, a type the
fast path has not been shown equal on (``time``, ``interval``, ``bytea``, ...).

``CD2_FAST_INIT=0`` / ``CD2_FAST_SYNC=0`` load with the client's loaders. How to remove it: when the client
loads without parsing every row in Python, compare it (tests/plugins/cd2/dap_child/test_fast_load.py)
and delete this module and its two registry entries.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg

from cd2 import contract
from cd2.dap_child.quoting import quote_ident
from cd2.dap_child.write_behind import LoadClock

logger = logging.getLogger(__name__)

READ_BYTES = 4 * 1024 * 1024
BATCH_BYTES = 32 * 1024 * 1024
BATCH_SETTING = "CD2_FAST_LOAD_BATCH_BYTES"
# Connections a plain init's big file loads on (one copying while others convert).
DEFAULT_CONNECTIONS = 2
CONNECTIONS_SETTING = "CD2_FAST_INIT_CONNECTIONS"
CLOSE_SECONDS = 5
# The session's temporary buffers, so that a staged batch stays in memory (the default is 8MB).
TEMP_BUFFERS_MB = 128
STAGE_TABLE = "cd2_fast_init"
STAGE = f"pg_temp.{STAGE_TABLE}"

# Scalar types whose text input gives what the client's parse and binary COPY store (format_type names):
# those test_fast_load.py meets in the tables it compares (it fails on one it does not meet).
SCALARS = frozenset(
    {
        "text",
        "character varying",
        "boolean",
        "smallint",
        "integer",
        "bigint",
        "real",
        "double precision",
        "numeric",
        "date",
        "timestamp without time zone",
        "uuid",
        "inet",
    }
)
JSON_FIELD_TYPES = (dict, list, set)

_CATALOG = """
SELECT a.attname, format_type(a.atttypid, NULL) AS type_name, t.typtype::text, t.typcategory::text,
       format_type(et.oid, NULL) AS element_name, et.typtype::text AS element_typtype
FROM pg_attribute a
JOIN pg_type t ON t.oid = a.atttypid
LEFT JOIN pg_type et ON et.oid = t.typelem AND t.typcategory = 'A'
WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped
"""


class Unsupported(Exception):
    """A column the fast path does not load as the client does: ``column`` and ``why``."""

    def __init__(self, column: str, why: str) -> None:
        super().__init__(f"column {column}: {why}")
        self.column, self.why = column, why


@dataclass(frozen=True)
class Lookup:
    """A lookup table ("enum or free text"): its qualified name, id column and value column."""

    table: str
    key: str
    value: str


@dataclass(frozen=True)
class Target:
    """Where one staged column goes: the table's column (``name``; ``column`` quoted) and the SQL reading it
    from staged text ``s.cN``."""

    name: str
    expression: str
    lookup: Lookup | None = None

    @property
    def column(self) -> str:
        return quote_ident(self.name)


@dataclass(frozen=True)
class LoadPlan:
    """How one header's files load into ``table``: a target per loaded label (meta labels have none).
    With ``keys``, rows are upserted on them, the last row of a key winning as the client's upsert of the
    rows in file order leaves it; with ``action`` (a sync: the staged column of ``meta.action``), only
    ``U`` rows are upserted, then the ``D`` rows' keys deleted. Without ``keys``, batches may load in any
    order, side by side."""

    table: tuple[str, str]
    labels: tuple[str, ...]
    targets: dict[int, Target]
    keys: tuple[str, ...] = ()
    action: int | None = None

    @property
    def qualified(self) -> str:
        return ".".join(quote_ident(part) for part in self.table)

    @property
    def staged_columns(self) -> list[str]:
        return [f"c{index}" for index in range(len(self.labels))]

    def stage_statement(self) -> str:
        columns = ", ".join(f"{c} text" for c in self.staged_columns)
        return f"DROP TABLE IF EXISTS {STAGE}; CREATE TEMPORARY TABLE {STAGE_TABLE} ({columns})"

    def _rows(self, action: str) -> str:
        return "" if self.action is None else f" WHERE s.c{self.action} = '{action}'"

    def lookup_statements(self) -> list[str]:
        """What adds the staged batch's new lookup values, each table's in sorted order."""
        return [
            f"INSERT INTO {t.lookup.table} ({t.lookup.value}) SELECT DISTINCT s.c{index} FROM {STAGE} s "
            f"WHERE s.c{index} IS NOT NULL ORDER BY 1 ON CONFLICT DO NOTHING"
            for index, t in self.targets.items()
            if t.lookup
        ]

    def write_statements(self) -> list[str]:
        """What writes the staged batch into the table (its lookup values added), in order."""
        columns = ", ".join(t.column for t in self.targets.values())
        values = ", ".join(t.expression for t in self.targets.values())
        source = f"{STAGE} s" + "".join(
            f" LEFT JOIN {t.lookup.table} l{index} ON l{index}.{t.lookup.value} = s.c{index}"
            for index, t in self.targets.items()
            if t.lookup
        )
        if not self.keys:
            return [f"INSERT INTO {self.qualified} ({columns}) SELECT {values} FROM {source}"]
        key_values = [t.expression for t in self.targets.values() if t.column in self.keys]
        updates = [
            f"{t.column} = EXCLUDED.{t.column}" for t in self.targets.values() if t.column not in self.keys
        ]
        conflict = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
        upsert = (
            f"INSERT INTO {self.qualified} ({columns}) SELECT DISTINCT ON ({', '.join(key_values)}) {values} "
            f"FROM {source}{self._rows('U')} ORDER BY {', '.join(key_values)}, s.ctid DESC "
            f"ON CONFLICT ({', '.join(self.keys)}) {conflict}"
        )
        if self.action is None:
            return [upsert]
        (key,), (key_value,) = self.keys, key_values
        delete = (
            f"DELETE FROM {self.qualified} t USING (SELECT DISTINCT {key_value} AS k FROM {STAGE} s{self._rows('D')}) d "
            f"WHERE t.{key} = d.k"
        )
        return [upsert, delete]


def conversion(source: str, column: dict[str, Any], field_type: type) -> str:
    """The SQL converting staged text ``source`` to the column's value as the client stores it."""
    name, type_name = column["attname"], column["type_name"]
    if column["typcategory"] == "A":
        element, element_typtype = column["element_name"], column["element_typtype"]
        if field_type not in (list, set):
            raise Unsupported(name, f"an array ({type_name}) fed {field_type.__name__}, not a JSON array")
        if element not in SCALARS and element_typtype != "e":
            raise Unsupported(name, f"an array of {element}, not shown equal to the client's")
        unnested = f"ARRAY(SELECT jsonb_array_elements_text({source}::jsonb))::{element}[]"
        return f"CASE WHEN {source} IS NULL THEN NULL ELSE {unnested} END"
    if type_name == "jsonb":
        return f"{source}::jsonb"
    if field_type in JSON_FIELD_TYPES:
        raise Unsupported(name, f"{type_name} fed JSON: the client stores Python's re-encoding of it")
    if column["typtype"] == "e" or type_name in SCALARS:
        return source if type_name == "text" else f"{source}::{type_name}"
    raise Unsupported(name, f"{type_name}, not shown equal to the client's")


async def plan(
    context: Any,
    table: Any,
    labels: tuple[str, ...],
    mapping: Any,
    upsert: bool = False,
    action_field: str | None = None,
) -> LoadPlan:
    """The :class:`LoadPlan` of ``table`` (the client's pysqlsync table) for a file headed ``labels``, read
    by the client's ``mapping`` (labels to fields and types); ``upsert``: the client upserts on the primary
    key; ``action_field``: a sync's field of ``meta.action``. Raises :class:`Unsupported` naming the first
    column the fast path would not store as the client does."""
    rows = await context.native_connection.fetch(_CATALOG, str(table.name))
    catalog = {row["attname"]: dict(row) for row in rows}
    generator = context.connection.generator
    targets: dict[int, Target] = {}
    action = None
    for index, label in enumerate(labels):
        field = mapping.labels_to_fields.get(label)
        if field is None:
            raise Unsupported(label, "a label the client does not map to a column")
        if not field:
            continue  # meta.ts: read by the client, stored nowhere
        if field == action_field:
            action = index
            continue
        column = table.columns.get(field)
        if column is None or column.name.local_id not in catalog:
            raise Unsupported(field, "not a column of the table")
        field_type = mapping.labels_to_types[label]
        if table.is_relation(column):
            relation = generator.state.get_referenced_table(table.name, column.name)
            if relation.is_lookup_table():
                if field_type is not str:
                    raise Unsupported(field, "a list of lookup values (ids in an array)")
                lookup = Lookup(
                    str(relation.name),
                    str(relation.get_primary_column().name),
                    str(relation.get_value_columns()[0].name),
                )
                targets[index] = Target(column.name.local_id, f"l{index}.{lookup.key}", lookup)
                continue
        expression = conversion(f"s.c{index}", catalog[column.name.local_id], field_type)
        targets[index] = Target(column.name.local_id, expression)
    if action_field is not None and action is None:
        raise Unsupported(action_field, "a sync file without meta.action")
    keys = tuple(quote_ident(key.local_id) for key in table.primary_key) if upsert else ()
    keyed = [t for t in targets.values() if t.column in keys]
    if len(keyed) != len(keys) or any(t.lookup for t in keyed):
        raise Unsupported(", ".join(keys), "a primary key the files do not hold as plain values")
    if action is not None and len(keys) != 1:
        raise Unsupported(", ".join(keys), "a sync's deletes keyed on more than one column")
    return LoadPlan((table.name.scope_id, table.name.local_id), labels, targets, keys, action)


class LineBatches:
    """A binary stream (read past its header) in batches of whole lines, about ``batch_bytes`` each; each
    :meth:`batch` is an async iterator of chunks, so at most one read's bytes are held at a time."""

    def __init__(
        self, stream: BinaryIO, batch_bytes: int = BATCH_BYTES, read_bytes: int = READ_BYTES
    ) -> None:
        self.stream, self.batch_bytes, self.read_bytes = stream, batch_bytes, read_bytes
        self.carry = b""
        self.done = False

    async def batch(self) -> AsyncIterator[bytes]:
        sent = 0
        while True:
            data = await asyncio.to_thread(self.stream.read, self.read_bytes)
            if not data:
                self.done = True
                if self.carry:
                    yield self.carry
                    self.carry = b""
                return
            chunk, self.carry = self.carry + data, b""
            sent += len(chunk)
            cut = chunk.rfind(b"\n") + 1 if sent >= self.batch_bytes else 0
            if cut:
                self.carry = chunk[cut:]
                yield chunk[:cut]
                return
            yield chunk


async def load_file(context: Any, load_plan: LoadPlan, path: Path) -> int:
    """Load one TSV file into ``load_plan``'s table through the stage, batch by batch; the rows the file
    holds. A plain init's batches go to the connections of :func:`side_by_side`, if inside it."""
    conn = context.native_connection
    batch_bytes = _whole_number(BATCH_SETTING, BATCH_BYTES, 1)
    connections = _side_by_side.get()
    with open(path, "rb") as stream:
        stream.readline()  # the header, which load_plan was made from
        batches = LineBatches(stream, batch_bytes, min(READ_BYTES, batch_bytes))
        if connections is not None and not load_plan.keys and await connections.ready():
            return await connections.load(load_plan, batches)
        rows = 0
        while not batches.done:
            rows += await _stage(conn, load_plan, batches)
            await _write(conn, load_plan)
    await conn.execute(f"DROP TABLE IF EXISTS {STAGE}")
    return rows


async def _stage(conn: Any, load_plan: LoadPlan, batches: LineBatches, isolation: str | None = None) -> int:
    """Copy the next of ``batches`` into ``conn``'s stage, as it is; the rows copied."""
    async with _transaction(conn, isolation):
        await conn.execute(load_plan.stage_statement())
        # FREEZE: the staged rows need no visibility check when read (the table is new in this
        # transaction), and one COPY into a new heap keeps the file's order in ctid
        copied = await _copy(
            conn,
            STAGE_TABLE,
            schema_name="pg_temp",
            columns=load_plan.staged_columns,
            source=batches.batch(),
            format="text",
            freeze=True,
        )
    return int(copied.rsplit(" ", 1)[1])


async def _write(conn: Any, load_plan: LoadPlan, isolation: str | None = None) -> None:
    """Write ``conn``'s staged batch into the table: its new lookup values committed first, so that another
    connection's batch waits for them only that long, then its rows."""
    for statements in (load_plan.lookup_statements(), load_plan.write_statements()):
        async with _transaction(conn, isolation):
            for statement in statements:
                await conn.execute(statement)


class SideBySide:
    """Connections of the load's own, up to ``count``, on which a plain init's batches load side by side:
    each batch is copied into a free connection's stage, then converted there in the background while the
    next batch is copied on another, across files and objects. :meth:`drain` waits for every conversion,
    raising the first error; :meth:`close` stops any still running and closes the connections."""

    def __init__(self, count: int, clock: LoadClock) -> None:
        self.count, self.clock = count, clock
        self.idle: list[asyncpg.Connection] = []
        self.writing: dict[asyncio.Task[None], asyncpg.Connection] = {}
        self.opened: list[asyncpg.Connection] = []

    async def ready(self) -> bool:
        """Whether at least one connection of its own is open (opening the first, unless ``count`` is 1),
        else the client's connection loads, as without it."""
        if not self.opened and self.count > 1:
            await self._open()
        return bool(self.opened)

    async def _open(self) -> None:
        from cd2.dap_child import locks, session  # see _whole_number

        try:
            conn = await locks.connect_as(session.env(contract.ENV_DATABASE_URL), "cd2_replica fast init")
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as error:
            logger.warning(
                "the init loads on %d connection(s) of its own: no other could be opened (%s)",
                len(self.opened),
                error,
            )
            self.count = len(self.opened)
            return
        self.opened.append(conn)
        self.idle.append(conn)
        await _room_for_batches(conn)

    async def _free(self) -> asyncpg.Connection:
        if not self.idle and len(self.opened) < self.count:
            await self._open()
        if not self.idle:
            done, _ = await asyncio.wait(self.writing, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                self.idle.append(self.writing.pop(task))
            for error in [task.exception() for task in done]:
                if error is not None:
                    raise error
        return self.idle.pop()

    async def load(self, load_plan: LoadPlan, batches: LineBatches) -> int:
        """Copy ``batches`` and leave their conversions running; the rows copied."""
        rows = 0
        counts = batches_side_by_side.setdefault(".".join(load_plan.table), collections.Counter())
        while not batches.done:
            conn = await self._free()
            rows += await _stage(conn, load_plan, batches, "read_committed")
            self.writing[asyncio.create_task(self._write(conn, load_plan))] = conn
            counts[self.opened.index(conn) + 1] += 1
        return rows

    async def _write(self, conn: asyncpg.Connection, load_plan: LoadPlan) -> None:
        with self.clock.running():
            # Explicit: a write must see the lookup values another connection committed after it began.
            await _write(conn, load_plan, "read_committed")

    async def drain(self) -> None:
        while self.writing:
            task = next(iter(self.writing))
            self.idle.append(self.writing.pop(task))
            await task

    async def close(self) -> None:
        for task in self.writing:
            task.cancel()
        await asyncio.gather(*self.writing, return_exceptions=True)
        self.writing.clear()
        for conn in self.opened:
            with contextlib.suppress(Exception):  # a lost connection has nothing left to close
                await conn.close(timeout=CLOSE_SECONDS)


# Per table of this process (one), the batches each connection of its own loaded (said once the load ends).
batches_side_by_side: dict[str, collections.Counter[int]] = {}
_side_by_side: contextvars.ContextVar[SideBySide | None] = contextvars.ContextVar(
    "cd2_side_by_side", default=None
)


@contextlib.asynccontextmanager
async def side_by_side(clock: LoadClock) -> AsyncIterator[SideBySide]:
    """While inside, a plain init's batches load on :data:`DEFAULT_CONNECTIONS` connections of their own
    (``CD2_FAST_INIT_CONNECTIONS``; 1: on the client's connection, one batch at a time); ``clock``: the
    stream's load clock. Drain it before the metadata is written."""
    connections = SideBySide(_whole_number(CONNECTIONS_SETTING, DEFAULT_CONNECTIONS, 1), clock)
    token = _side_by_side.set(connections)
    try:
        yield connections
    finally:
        _side_by_side.reset(token)
        await connections.close()
    for label, counts in batches_side_by_side.items():
        logger.info("%s: %d batch(es) on %d connection(s) side by side", label, counts.total(), len(counts))


def _whole_number(name: str, default: int, minimum: int) -> int:
    # Imported here: the child's modules need the client, which Airflow's interpreter, where this module's
    # SQL and batches are tested, does not have.
    from cd2.dap_child import session

    return session.whole_number(name, default, minimum)


async def _copy(conn: Any, table: str, **options: Any) -> str:
    """asyncpg's ``copy_to_table`` from an async source, failing when the connection is lost: asyncpg
    itself would wait forever for the server to take more data (its flow control is never resumed on a
    lost connection), so a failover during a COPY would hang the task."""
    copying = asyncio.ensure_future(conn.copy_to_table(table, **options))

    def lost(_: Any) -> None:
        copying.cancel()

    conn.add_termination_listener(lost)
    try:
        return await copying
    except asyncio.CancelledError:
        if conn.is_closed():
            raise asyncpg.ConnectionDoesNotExistError("the connection was lost during a COPY") from None
        raise
    finally:
        conn.remove_termination_listener(lost)


@contextlib.asynccontextmanager
async def _transaction(conn: Any, isolation: str | None = None) -> AsyncIterator[None]:
    """A transaction that, unlike asyncpg's, lets a lost connection's own error through (asyncpg's would
    replace it by an ``InterfaceError`` from its rollback on the closed connection)."""
    transaction = conn.transaction(isolation=isolation)
    await transaction.start()
    try:
        yield
    except BaseException:
        if not conn.is_closed():
            await transaction.rollback()
        raise
    await transaction.commit()


async def _room_for_batches(conn: Any) -> None:
    """Raise the session's ``temp_buffers`` to hold a staged batch in memory, where it may still be
    raised (before the session's first temporary table); else leave it."""
    if await conn.fetchval("SELECT setting::bigint * 8192 FROM pg_settings WHERE name = 'temp_buffers'") >= (
        TEMP_BUFFERS_MB << 20
    ):
        return
    try:
        async with conn.transaction():
            await conn.execute(f"SET temp_buffers = '{TEMP_BUFFERS_MB}MB'")
    except Exception as error:  # noqa: BLE001  (asyncpg's: a session that already used a temporary table)
        logger.debug("temp_buffers stays: %s", error)


# The tables of this process (one) that load through the client's loader, and why.
refused: dict[str, Unsupported] = {}


async def load_folder(
    conn: Any, entity_type: Any, temp_dir: str, mapping: Any, upsert: bool, action_field: str | None
) -> int | None:
    """Load every ``.tsv`` file of ``temp_dir`` (in the client's order); the rows they hold, or None when
    the table loads through the client's loader (said once per table)."""
    table = conn.get_table(entity_type)
    label = str(table.name)
    if label in refused:
        return None
    files = sorted(p for p in Path(temp_dir).iterdir() if p.name.endswith(".tsv"))
    plans = []
    try:
        for path in files:
            with open(path, "rb") as stream:
                header = stream.readline().rstrip(b"\n")
            labels = tuple(c.decode("utf-8") for c in header.split(b"\t"))
            plans.append(await plan(conn, table, labels, mapping, upsert, action_field))
    except Unsupported as why:
        refused[label] = why
        logger.info("%s loads through the client's own loader, not the fast path: %s", label, why)
        return None
    started = time.perf_counter()
    await _room_for_batches(conn.native_connection)
    rows = 0
    for path, load_plan in zip(files, plans, strict=True):
        rows += await load_file(conn, load_plan, path)
    logger.debug(
        "fast load: %d rows of %d file(s) in %.1f s", rows, len(files), time.perf_counter() - started
    )
    return rows


def init_loader(stock: Callable[..., Any]) -> Callable[..., Any]:
    """``SqlOpInit.init_insert_data_from_files_to_db`` loading through PostgreSQL, or ``stock`` (the
    client's) for a table the fast path does not load as the client does."""

    async def init_insert_data_from_files_to_db(
        self: Any, conn: Any, entity_type: Any, temp_dir: str
    ) -> None:
        from dap.replicator.sql_op_init import SqlOpInit
        from dap.replicator.sql_op_init import logger as client_log

        mapping = SqlOpInit._get_init_tabular_mapping(entity_type)
        rows = await load_folder(conn, entity_type, temp_dir, mapping, self.use_upsert, None)
        if rows is None:
            return await stock(self, conn, entity_type, temp_dir)
        client_log.info(f"Inserted {rows} records into table")

    return init_insert_data_from_files_to_db


def sync_loader(stock: Callable[..., Any]) -> Callable[..., Any]:
    """``SqlOpSync.sync_insert_data_from_files_to_db`` (a static method) loading through PostgreSQL, or
    ``stock`` (the client's) for a table the fast path does not load as the client does."""

    async def sync_insert_data_from_files_to_db(
        conn: Any, entity_type: Any, temp_dir: str, namespace: str, table_name: str, dialect: str
    ) -> None:
        from dap.replicator.sql_op_sync import META_ACTION_NAME, SqlOpSync
        from dap.replicator.sql_op_sync import logger as client_log

        mapping = SqlOpSync._get_sync_tabular_mapping(entity_type)
        rows = await load_folder(conn, entity_type, temp_dir, mapping, True, META_ACTION_NAME)
        if rows is None:
            return await stock(conn, entity_type, temp_dir, namespace, table_name, dialect)
        client_log.info(f"Upserted {rows} records into table")

    return sync_insert_data_from_files_to_db
