"""Schema evolution the admin API can apply: add or drop a column, add an "enum or free text" column (which
the client stores in a lookup table of its own), add an enum value, change a type, make a required column
optional (``nullable``: NOT NULL to nullable, as Instructure announced for 40 columns)."""

from __future__ import annotations

import copy

from .schema import UNSPECIFIED, Column, TableDef, is_nested_object

CHANGES = ("add_column", "add_lookup_column", "drop_column", "add_enum_value", "change_type", "nullable")
_PROTECTED = {"workflow_state", "state", "updated_at", "created_at"}
_WIDER = (
    ({"type": "integer", "format": "int32"}, {"type": "integer", "format": "int64"}),
    ({"type": "number", "format": "float32"}, {"type": "number", "format": "float64"}),
)


def _core(node: dict) -> dict:
    return {k: v for k, v in node.items() if k not in ("description", "title")}


def _widened(node: dict) -> dict | None:
    core = _core(node)
    for narrow, wide in _WIDER:
        if core == narrow:
            return {**wide, **{k: v for k, v in node.items() if k in ("description", "title")}}
    if core.get("type") == "string" and "maxLength" in core and set(core) == {"type", "maxLength"}:
        return {k: v for k, v in node.items() if k != "maxLength"}
    return None


def apply_change(table: TableDef, change: str, column: str | None = None, value: str | None = None) -> dict:
    """Return ``(new definition, summary)`` for ``change``; the new definition has ``version + 1``."""
    new = copy.deepcopy(table)
    new.version = table.version + 1
    new.extra = {}
    columns = new.columns
    if change == "add_column":
        name = column or f"added_v{new.version}"
        if new.column(name) is not None:
            raise ValueError(f"column {name} already exists")
        node = {"type": "string", "maxLength": 255, "description": "Column added by a schema change."}
        columns.append(Column(name, node, False))
        detail = {"column": name}
    elif change == "add_lookup_column":
        name = column or f"added_lookup_v{new.version}"
        if new.column(name) is not None:
            raise ValueError(f"column {name} already exists")
        node = {
            # The enum holds only the "unspecified" member, as web_logs' do (with more members the 2.3.1
            # client creates a type and a table of the same name, which PostgreSQL refuses).
            "oneOf": [{"type": "string", "enum": [UNSPECIFIED]}, {"type": "string"}],
            "description": "Enum or free text, added by a schema change.",
        }
        columns.append(Column(name, node, False))
        detail = {"column": name}
    elif change == "drop_column":
        candidates = [c for c in columns if not c.required and c.name not in _PROTECTED]
        target = _find(columns, column) if column else (candidates[-1] if candidates else None)
        if target is None:
            raise ValueError("no droppable column")
        columns.remove(target)
        detail = {"column": target.name}
    elif change == "add_enum_value":
        candidates = [c for c in columns if "enum" in c.node and c.node.get("type") == "string"]
        target = _find(columns, column) if column else (candidates[0] if candidates else None)
        if target is None or "enum" not in target.node:
            raise ValueError("no string enum column")
        member = value or f"added_state_v{new.version}"
        node = {**target.node, "enum": [*target.node["enum"], member]}
        columns[columns.index(target)] = Column(target.name, node, target.required)
        new.extra["added_enum"] = {target.name: member}
        detail = {"column": target.name, "value": member}
    elif change == "change_type":
        candidates = [c for c in columns if not is_nested_object(c.node) and _widened(c.node) is not None]
        target = _find(columns, column) if column else (candidates[0] if candidates else None)
        wider = _widened(target.node) if target is not None else None
        if wider is None:
            raise ValueError("no column whose type can be widened (int32, float32, varchar(n))")
        columns[columns.index(target)] = Column(target.name, wider, target.required)
        detail = {"column": target.name, "from": _core(target.node), "to": _core(wider)}
    elif change == "nullable":
        candidates = [c for c in columns if c.required]
        target = _find(columns, column) if column else (candidates[0] if candidates else None)
        if target is None or not target.required:
            raise ValueError("no required value column to make optional")
        columns[columns.index(target)] = Column(target.name, target.node, False)
        detail = {"column": target.name}
    else:
        raise ValueError(f"unknown schema change {change!r}; known: {CHANGES}")
    return new, {"change": change, "version": new.version, **detail}


def _find(columns: list[Column], name: str) -> Column:
    for c in columns:
        if c.name == name:
            return c
    raise ValueError(f"no column {name}")
