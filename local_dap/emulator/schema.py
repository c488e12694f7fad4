"""Table definitions: a DAP table schema (the JSON the API serves) and the columns it declares.

A column's type is kept as its JSON-schema node, exactly as the schema document states it, so any schema
the client accepts can be served and generated for, not only the built-in ones.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
NAMESPACES = ("canvas", "canvas_logs", "catalog", "new_quizzes")
# Instructure's log namespace: rows are only ever added, and the API serves the last 30 days of them.
APPEND_ONLY_NAMESPACES = ("canvas_logs",)
UNSPECIFIED = "__dap_unspecified__"
OVERSIZED = "__dap_oversized_truncated__"


@dataclass(frozen=True)
class Column:
    """One replicated column: its name, JSON-schema node and whether it is NOT NULL."""

    name: str
    node: dict
    required: bool = False


@dataclass
class TableDef:
    """A table at one schema version: primary key column, value columns, titles."""

    namespace: str
    name: str
    key: Column
    columns: list[Column]
    version: int = 1
    title: str = ""
    append_only: bool = False
    value_title: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def all_columns(self) -> list[Column]:
        """The key followed by the value columns, in schema order."""
        return [self.key, *self.columns]

    def column(self, name: str) -> Column | None:
        return next((c for c in self.all_columns if c.name == name), None)

    def to_schema(self) -> dict:
        """The ``schema`` object of ``GET .../schema``, shaped like Instructure's real responses.

        A table read from a schema file is served verbatim until its schema changes."""
        if "document" in self.extra:
            return copy.deepcopy(self.extra["document"])
        key_props = {self.key.name: copy.deepcopy(self.key.node)}
        value_props = {c.name: copy.deepcopy(c.node) for c in self.columns}
        value = {"type": "object", "properties": value_props, "additionalProperties": False}
        if self.value_title:
            value["title"] = self.value_title
        required = [c.name for c in self.columns if c.required]
        if required:
            value["required"] = required
        return {
            "$schema": JSON_SCHEMA_DIALECT,
            "type": "object",
            "properties": {
                "meta": {
                    "type": "object",
                    "properties": {
                        "ts": {"type": "string", "format": "date-time"},
                        "action": {
                            "type": "string",
                            "enum": ["U", "D"],
                            "title": "Identifies if a record is to be upserted (inserted or updated) "
                            "or (hard) deleted.",
                        },
                    },
                    "additionalProperties": False,
                    "required": ["ts"],
                    "title": "Meta-information associated with the record.",
                },
                "key": {
                    "type": "object",
                    "properties": key_props,
                    "additionalProperties": False,
                    "required": [self.key.name],
                    "title": self.title or f"Stores attributes for {self.name}.",
                },
                "value": value,
            },
            "additionalProperties": False,
            "required": ["key"],
        }


def table_from_schema(namespace: str, name: str, document: dict) -> TableDef:
    """Read a ``{"schema": ..., "version": ...}`` document (or a bare schema) into a table definition."""
    schema = document.get("schema", document)
    version = int(document.get("version", 1))
    props = schema["properties"]
    key_props = props["key"]["properties"]
    key_name = next(iter(key_props))
    value = props.get("value", {"properties": {}})
    required = set(value.get("required", []))
    columns = [Column(n, node, n in required) for n, node in value.get("properties", {}).items()]
    # Further key properties are rare; they travel as ordinary required value columns.
    columns = [Column(n, node, True) for n, node in list(key_props.items())[1:]] + columns
    return TableDef(
        namespace=namespace,
        name=name,
        key=Column(key_name, key_props[key_name], True),
        columns=columns,
        version=version,
        title=props["key"].get("title", ""),
        append_only=namespace in APPEND_ONLY_NAMESPACES,
        value_title=value.get("title", ""),
        extra={"document": schema},
    )


def is_nested_object(node: dict) -> bool:
    """A fixed-cardinality nested object (has ``properties``): JSON in condensed mode, columns in expanded."""
    return node.get("type") == "object" and "properties" in node
