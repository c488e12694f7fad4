"""The patch registry: every change the child makes to the DAP client's behaviour, in one list.

Each :class:`Patch` names the client code it replaces, copies or relies on, with a fingerprint of that
code as verified, the client versions it was verified on, and its environment switch if it has one.
:func:`apply` (the runner calls it first) installs each one that fits the installed client. A **speed**
patch that does not fit (another client version, or its code moved) is left off after one warning, and the
client's own path runs; a **safety** patch that does not fit makes the task refuse to run
(:class:`~cd2.dap_child.errors.PatchUnavailable`, permanent) before any patch is installed. Copied client bodies
live in :mod:`.client_bodies`; nothing else in the child assigns to the client. ``python -m
cd2.dap_child.patches`` reports how each patch fits the installed client (docs/design.md, Patch registry).
"""

from __future__ import annotations

import ast
import hashlib
import importlib
import inspect
import logging
import os
import textwrap
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from importlib import metadata
from typing import Any

from cd2.dap_child import accelerated_reader, api_budget, bulk_upsert, fast_load, write_behind
from cd2.dap_child.errors import DapEnvironmentError, PatchUnavailable
from cd2.dap_child.patches import client_bodies

logger = logging.getLogger(__name__)

CLIENT_DISTRIBUTION = "instructure-dap-client"
VERIFIED = frozenset({"2.3.1"})


class Kind(StrEnum):
    """Speed: the client's own path is correct without it, so it is left off, with a warning, if it does
    not fit. Safety: it keeps data safe, so the task refuses to run if it does not fit."""

    SPEED = "speed"
    SAFETY = "safety"


@dataclass(frozen=True)
class Patch:
    """One change to the client: ``replaces`` maps each qualified name of the client code it replaces,
    copies or relies on to that code's :func:`fingerprint`; ``install`` is None where the code that
    uses the patch asks :func:`is_active` instead."""

    name: str
    kind: Kind
    replaces: dict[str, str]
    install: Callable[[], None] | None = None
    switch: str | None = None
    verified: frozenset[str] = VERIFIED

    def moved(self) -> dict[str, str]:
        """The names whose code is not what the patch was verified on: name -> fingerprint found."""
        found = {name: _fingerprint_of(name) for name in self.replaces}
        return {name: found[name] for name in self.replaces if found[name] != self.replaces[name]}

    def misfit(self, version: str | None) -> str | None:
        """Why the patch does not fit the installed client ``version``, or None."""
        if version not in self.verified:
            verified = ", ".join(sorted(self.verified))
            return f"{CLIENT_DISTRIBUTION} {version} is not a verified version (verified: {verified})"
        moved = self.moved()
        if moved:
            return f"the client's code under it moved since it was verified: {', '.join(moved)}"
        return None


def fingerprint(obj: Any) -> str:
    """A digest of ``obj``'s source as a syntax tree without docstrings (comments and layout do not
    count), or of its ``repr`` when it has no source (a constant)."""
    try:
        source = inspect.getsource(obj)
    except TypeError:
        text = repr(obj)
    else:
        tree = ast.parse(textwrap.dedent(source))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if isinstance(body, list) and body and _is_docstring(body[0]):
                node.body = body[1:] or [ast.Pass()]
        text = ast.dump(tree)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _is_docstring(statement: ast.stmt) -> bool:
    return isinstance(statement, ast.Expr) and isinstance(getattr(statement.value, "value", None), str)


def _fingerprint_of(qualified: str) -> str:
    try:
        return fingerprint(resolve(qualified))
    except (ImportError, AttributeError):
        return "gone"


def resolve(qualified: str) -> Any:
    """The object a dotted name names: its longest importable module, then attributes."""
    parts = qualified.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part)
        return found
    raise ModuleNotFoundError(qualified)


def installed_version() -> str | None:
    """The installed ``instructure-dap-client`` version, or None when it is not installed."""
    try:
        return metadata.version(CLIENT_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return None


SWITCH_ON, SWITCH_OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def switched_on(setting: str) -> bool:
    """Whether the environment variable ``setting`` leaves a patch on (unset: on); a value that is
    neither on nor off is refused, naming the variable, rather than read as on."""
    raw = os.environ.get(setting, "1")
    value = raw.strip().lower()
    if value not in SWITCH_ON + SWITCH_OFF:
        raise DapEnvironmentError(
            f"{setting}={raw!r} is neither on ({'/'.join(SWITCH_ON)}) nor off ({'/'.join(SWITCH_OFF)})"
        )
    return value in SWITCH_ON


# -- installing: the only assignments to the client in the child ---------------------------------------


def _install_accelerated_reader() -> None:
    from dap.replicator import sql_op_init, sql_op_sync

    sql_op_init.AsyncTextReader = sql_op_sync.AsyncTextReader = accelerated_reader.make_reader_class(
        sql_op_init.AsyncTextReader
    )


def _install_bulk_upsert() -> None:
    from pysqlsync.dialect.postgresql.connection import PostgreSQLContext

    PostgreSQLContext._upsert_rows = bulk_upsert.upsert_rows
    PostgreSQLContext._delete_rows = bulk_upsert.delete_rows


def _install_streaming() -> None:
    from dap.replicator import sql_op_init, sql_op_sync

    sql_op_init.SqlOpInit.run = client_bodies.init_run
    sql_op_sync.SqlOpSync.run = client_bodies.sync_run
    upsert_rows = write_behind.behind_the_reader(sql_op_sync.SqlOpSync.upsert_rows)
    sql_op_sync.SqlOpSync.upsert_rows = staticmethod(upsert_rows)
    sql_op_sync.INSERT_BATCH_SIZE = write_behind.SYNC_BATCH_ROWS


def _install_fast_init() -> None:
    from dap.replicator import sql_op_init

    stock = sql_op_init.SqlOpInit.init_insert_data_from_files_to_db
    sql_op_init.SqlOpInit.init_insert_data_from_files_to_db = fast_load.init_loader(stock)


def _install_fast_sync() -> None:
    from dap.replicator import sql_op_sync

    stock = sql_op_sync.SqlOpSync.sync_insert_data_from_files_to_db
    sql_op_sync.SqlOpSync.sync_insert_data_from_files_to_db = staticmethod(fast_load.sync_loader(stock))


def _install_download_check() -> None:
    from dap.api import DAPSession

    DAPSession.download_resource = client_bodies.download_resource


def _install_api_budget() -> None:
    from dap.api import DAPSession

    stock_init = DAPSession.__init__

    def paced_init(self: Any, *args: Any, **kwargs: Any) -> None:
        stock_init(self, *args, **kwargs)
        pacer = api_budget.current_pacer()
        if pacer is not None:
            self._retry_client._client = api_budget.PacedRequests(self._retry_client._client, pacer)

    DAPSession.__init__ = paced_init


def _install_ddl_guard() -> None:
    from pysqlsync.base import Explorer

    Explorer.synchronize = client_bodies.explorer_synchronize(Explorer.synchronize)


def staged_connection(url: str, schemas: dict[types.ModuleType, str]) -> Any:
    """The client's ``DatabaseConnection`` for ``url``, its tables of each module in ``schemas`` sent to
    that schema instead (the ``staging`` patch)."""
    from dap.integration.database import DatabaseConnection

    connection = DatabaseConnection(url)
    generator = connection.connection.generator
    mapping = generator.converter.options.namespaces.dictionary
    mapping.update(schemas)
    generator.options.namespaces = dict(mapping)
    return connection


# -- the registry --------------------------------------------------------------------------------------

SQL_OP_INIT = "dap.replicator.sql_op_init"
SQL_OP_SYNC = "dap.replicator.sql_op_sync"
LOADERS = {
    f"{SQL_OP_INIT}.SqlOpInit.init_insert_data_from_files_to_db": "6b91d2fba3ff9173",
    f"{SQL_OP_SYNC}.SqlOpSync.sync_insert_data_from_files_to_db": "61b332cdbccc972a",
}

# What the fast loads' SQL must equal: which columns the client stores as lookup ids, which values it
# re-encodes, how it merges lookup values and copies rows, the TSV escapes (PostgreSQL's text format).
FAST_LOAD_CONVERSIONS = {
    "pysqlsync.base.BaseContext._get_transformer": "08446fedaf3d58d5",
    "pysqlsync.base.BaseGenerator.get_value_transformer": "00fff113310c31f7",
    "pysqlsync.base.BaseEnumTransformer._merge_lookup_table": "b60477a3a1733bdf",
    "pysqlsync.dialect.postgresql.generator.PostgreSQLGenerator.get_table_merge_stmt": "c647dac868ab89a3",
    "pysqlsync.dialect.postgresql.connection.PostgreSQLContext._insert_rows": "7e284cb4cffd3016",
    "tsv.helper.escape": "b6b96d4e567efa37",
}

REGISTRY: tuple[Patch, ...] = (
    Patch(
        "accelerated_reader",
        Kind.SPEED,
        {
            f"{SQL_OP_INIT}.AsyncTextReader": "892e369e3ccffaf5",
            f"{SQL_OP_SYNC}.AsyncTextReader": "892e369e3ccffaf5",
            **LOADERS,  # they open each file (binary, aiofiles) and hand it to the reader
        },
        _install_accelerated_reader,
        switch="CD2_ACCELERATED_READER",
    ),
    Patch(
        "bulk_upsert",
        Kind.SPEED,
        {
            "pysqlsync.dialect.postgresql.connection.PostgreSQLContext._upsert_rows": "cddbd092805d387b",
            "pysqlsync.dialect.postgresql.connection.PostgreSQLContext._delete_rows": "50420a3867c6b9b2",
            # the statement whose effect the set-based one reproduces
            "pysqlsync.dialect.postgresql.generator.PostgreSQLGenerator.get_table_upsert_stmt": "05b34efe94177843",
        },
        _install_bulk_upsert,
        switch="CD2_BULK_UPSERT",
    ),
    Patch(
        "streaming",
        Kind.SPEED,
        {
            f"{SQL_OP_INIT}.SqlOpInit.run": "eb37131d48225eb2",
            f"{SQL_OP_SYNC}.SqlOpSync.run": "6691cea7765c2331",
            f"{SQL_OP_SYNC}.SqlOpSync.upsert_rows": "11e88f17ba08ef57",
            f"{SQL_OP_SYNC}.INSERT_BATCH_SIZE": "3bb78535cc9555ff",
            f"{SQL_OP_SYNC}.SqlOpSync._getRecordBatches": "b4a4369225781a58",  # reads INSERT_BATCH_SIZE
        },
        _install_streaming,
        switch="CD2_STREAMING",
    ),
    Patch(
        "fast_init",  # after accelerated_reader: a table it does not take loads through the faster stock
        Kind.SPEED,
        {
            f"{SQL_OP_INIT}.SqlOpInit.init_insert_data_from_files_to_db": LOADERS[
                f"{SQL_OP_INIT}.SqlOpInit.init_insert_data_from_files_to_db"
            ],
            f"{SQL_OP_INIT}.SqlOpInit._get_init_tabular_mapping": "0945e0414127b4a8",
            **FAST_LOAD_CONVERSIONS,
        },
        _install_fast_init,
        switch="CD2_FAST_INIT",
    ),
    Patch(
        "fast_sync",  # after bulk_upsert and streaming: a table it does not take loads through theirs
        Kind.SPEED,
        {
            f"{SQL_OP_SYNC}.SqlOpSync.sync_insert_data_from_files_to_db": LOADERS[
                f"{SQL_OP_SYNC}.SqlOpSync.sync_insert_data_from_files_to_db"
            ],
            f"{SQL_OP_SYNC}.SqlOpSync._get_sync_tabular_mapping": "3b300c2fd634ea66",
            f"{SQL_OP_SYNC}.META_ACTION_NAME": "2a55a2d5de8f96f7",
            # per batch: the U rows upserted, then the D rows' keys deleted
            f"{SQL_OP_SYNC}.SqlOpSync.upsert_rows": "11e88f17ba08ef57",
            "pysqlsync.dialect.postgresql.generator.PostgreSQLGenerator.get_table_upsert_stmt": "05b34efe94177843",
            **FAST_LOAD_CONVERSIONS,
        },
        _install_fast_sync,
        switch="CD2_FAST_SYNC",
    ),
    Patch(
        "download_check",  # truncated downloads and a full TMPDIR caught before a row loads
        Kind.SAFETY,
        {
            "dap.api.DAPSession.download_resource": "071ea494f94259ff",
            "dap.api.DAPSession.stream_resource": "25f219b07a97c7a4",
            "dap.api.DAPSession.download_object": "d29ca6602738080a",  # every object's download goes through it
        },
        _install_download_check,
    ),
    Patch(
        "api_budget",
        Kind.SPEED,
        {
            "dap.api.DAPSession.__init__": "9388de3704148a18",
            "aiohttp_retry.client.RetryClient.__init__": "50adf2a1ab8a9f4b",
            "aiohttp_retry.client.RetryClient._make_requests": "afdd20bcf11957da",  # self._client.request per attempt
        },
        _install_api_budget,
    ),
    Patch(
        "ddl_guard",  # without it the client's DDL fails on a dependent view, saying so; nothing is lost
        Kind.SPEED,
        {"pysqlsync.base.Explorer.synchronize": "ae5090df148fc048"},
        _install_ddl_guard,
    ),
    Patch(
        "staging",  # the staged init and the swap (staged_connection, cd2.dap_child.staging)
        Kind.SAFETY,
        {
            "dap.integration.database.DatabaseConnection._create_connection": "354d25d5a2be26b2",
            "pysqlsync.dialect.postgresql.generator.PostgreSQLGenerator.__init__": "6c009ab69a121018",
            "pysqlsync.formation.py_to_sql.NamespaceMapping": "3996ca8a54b98c18",
            "dap.replicator.sql_op.get_module_for_namespace": "d6f7b353a6ad8c63",
            "dap.replicator.meta_schema.table_sync": "652ebedca77922f8",  # the columns the swap copies
        },
    ),
    Patch(
        "row_counts",  # TableResult.rows, read off the client's "Inserted/Upserted N records" log lines
        Kind.SPEED,
        LOADERS,
    ),
)

_active: set[str] = set()


def named(*names: str) -> tuple[Patch, ...]:
    """The registry's entries of these names."""
    return tuple(patch for patch in REGISTRY if patch.name in names)


def is_active(name: str) -> bool:
    """Whether the patch ``name`` was applied in this process."""
    return name in _active


def apply(patches: Sequence[Patch] = REGISTRY) -> list[str]:
    """Install each of ``patches`` that is switched on and fits the installed client (once per process);
    the names of those active. Raises :class:`PatchUnavailable` before installing any when a safety
    patch does not fit."""
    version = installed_version()
    fitting, refused = [], []
    for patch in patches:
        if patch.name in _active:
            continue
        if patch.switch and not switched_on(patch.switch):
            logger.info("patch %s turned off by %s: the client's own path runs", patch.name, patch.switch)
            continue
        misfit = patch.misfit(version)
        if misfit is None:
            fitting.append(patch)
        elif patch.kind is Kind.SAFETY:
            refused.append(
                f"safety patch {patch.name} does not fit {CLIENT_DISTRIBUTION} {version}: {misfit}"
            )
        else:
            logger.warning("patch %s left off: %s; the client's own path runs", patch.name, misfit)
    if refused:
        raise PatchUnavailable("; ".join(refused) + "; the task refuses to run without it")
    for patch in fitting:
        if patch.install is not None:
            patch.install()
        _active.add(patch.name)
    return [patch.name for patch in patches if patch.name in _active]
