"""Every table shape the client accepts, generated: each column kind and key kind, so that a test that
takes every shape through a lifecycle covers what a real schema could bring, not only the tables someone
wrote down.

:func:`generated_tables` builds one table per key kind (int64, int32, uuid, string: the client makes the
first key property the primary key, so a second one is an ordinary column, and one table carries that
too) and spreads :data:`COLUMN_KINDS` over them, so every kind appears with every key kind somewhere; a
log table (``canvas_logs``: append-only) with lookup columns; and a table of nothing but lookup columns and
enums. :func:`write_schemas` writes them, with Instructure's schemas from ``../shared/cd2/schemas`` (in
the ``new_quizzes`` namespace, apart from the built-in canvas tables of the same names), as
``<namespace>/<table>.json`` for ``start_emulator(schemas=...)``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from .builtin import (
    BIGINT,
    BOOL,
    DATE,
    DOUBLE,
    INET,
    INT,
    LONG_TEXT,
    TEXT,
    TIMESTAMP,
    UUID,
    array,
    col,
    enum,
    nested,
    numeric,
    req,
    varchar,
)
from .schema import Column, TableDef

# Every kind of column node the 2.3.1 client replicates, by name. Left out, because the client refuses
# them (and CD2 serves none): a bare {"type": "object"} (the client's JsonType is undefined), an "enum or
# free text" whose enum has members besides __dap_unspecified__ (the client creates an enum type and a
# lookup table of the same name, which PostgreSQL refuses), "time" (the client wants hh:mm:ssZ) and
# "duration" values.
COLUMN_KINDS: dict[str, dict] = {
    "int64": BIGINT,
    "int32": INT,
    "int16": {"type": "integer", "format": "int16"},
    "boolean": BOOL,
    "text": TEXT,
    "varchar": varchar(40),
    "timestamp": TIMESTAMP,
    "date": DATE,
    "uuid": UUID,
    "float64": DOUBLE,
    "float32": {"type": "number", "format": "float32"},
    "numeric": numeric(12, 4),
    "inet": INET,
    "enum": enum("alpha", "beta", "gamma"),
    "lookup": {"oneOf": [enum(), TEXT]},
    "oversized": LONG_TEXT,
    "object": nested(
        label=(varchar(20), "A label."),
        count=(INT, "A count."),
        inner=(nested(flag=(BOOL, "A flag.")), "A nested object."),
    ),
    "array_text": array(varchar(16)),
    "array_int": array(BIGINT),
    "int_enum": {"type": "integer", "enum": [1, 2, 3]},
}
# The namespace Instructure's shared schemas are served in, apart from the built-in canvas tables.
SHARED_NAMESPACE = "new_quizzes"
KEY_KINDS: dict[str, dict] = {"int64": BIGINT, "int32": INT, "uuid": UUID, "string": varchar(64)}


def _columns(kinds: list[str], required_every: int = 3) -> list[Column]:
    """One column per kind, every ``required_every``-th NOT NULL (so each kind is also met required)."""
    return [
        col(f"c_{kind}", COLUMN_KINDS[kind], f"A {kind} column.", required=index % required_every == 0)
        for index, kind in enumerate(kinds)
    ]


def generated_tables() -> list[TableDef]:
    """The generated shapes (version 1)."""
    kinds = list(COLUMN_KINDS)
    tables = []
    for position, (key_kind, key_node) in enumerate(KEY_KINDS.items()):
        # Each key kind gets every column kind, required ones shifted, so each kind is met NOT NULL too.
        rotated = kinds[position:] + kinds[:position]
        columns = _columns(rotated)
        columns.append(req("workflow_state", enum("active", "deleted"), "Life-cycle state."))
        columns.append(col("updated_at", TIMESTAMP, "When the row last changed."))
        tables.append(
            TableDef("canvas", f"shape_{key_kind}_key", req("id", key_node, f"A {key_kind} key."), columns)
        )
    tables.append(
        TableDef(
            "canvas",
            "shape_second_key",
            req("id", BIGINT, "The primary key."),
            [
                req("tenant_id", BIGINT, "A second key property (an ordinary column to the client)."),
                *_columns(["text", "lookup", "enum"]),
            ],  # fmt: skip
        )
    )
    tables.append(
        TableDef(
            "canvas",
            "shape_lookups",
            req("id", BIGINT, "The primary key."),
            [
                col("first_choice", COLUMN_KINDS["lookup"], "Enum or free text."),
                req("second_choice", {"oneOf": [enum(), varchar(80)]}, "Enum or bounded text."),
                col("third_choice", COLUMN_KINDS["lookup"], "Enum or free text."),
                req("state", enum("on", "off", "deleted"), "State."),
                col("kind", COLUMN_KINDS["enum"], "A plain enum."),
            ],
        )
    )
    tables.append(
        TableDef(
            "canvas_logs",
            "shape_log",
            req("id", UUID, "A logged event."),
            [
                req("timestamp", TIMESTAMP, "When it happened (UTC)."),
                col("controller", COLUMN_KINDS["lookup"], "Enum or free text."),
                col("action", COLUMN_KINDS["lookup"], "Enum or free text."),
                req("method", enum("GET", "POST"), "HTTP method."),
                *_columns(["int64", "text", "inet", "object", "array_text", "oversized"]),
            ],
            append_only=True,
        )
    )
    return tables


def write_schemas(directory: Path, shared_schemas: Path | None = None) -> list[str]:
    """Write the generated shapes, and each schema under ``shared_schemas`` (in ``SHARED_NAMESPACE``,
    under its file's stem), into ``directory``; their labels."""
    labels = []
    for table in generated_tables():
        labels.append(
            _write(directory, table.namespace, table.name, {"schema": table.to_schema(), "version": 1})
        )
    for path in sorted(shared_schemas.glob("*/*.json")) if shared_schemas else ():
        # Under their own names (``courses.real-v1`` is courses), in a namespace of their own: a longer
        # name would push the client's generated type names past PostgreSQL's 63 bytes, which it
        # mishandles (it truncates nothing, PostgreSQL does).
        name = re.sub(r"\W", "_", path.stem.split(".")[0])
        labels.append(_write(directory, SHARED_NAMESPACE, name, json.loads(path.read_text())))
    return labels


def _write(directory: Path, namespace: str, name: str, document: dict) -> str:
    (directory / namespace).mkdir(parents=True, exist_ok=True)
    (directory / namespace / f"{name}.json").write_text(json.dumps(document, indent=1))
    return f"{namespace}.{name}"
