"""Output formats of query jobs: TSV and CSV (condensed or expanded) and JSON Lines, gzip-compressed."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable, Iterator

from .encoding import csv_field, format_timestamp, to_json, tsv_field
from .schema import TableDef, is_nested_object
from .source import Record
from .values import micros_to_datetime

FORMATS = ("tsv", "csv", "jsonl", "parquet")
MODES = ("expanded", "condensed")
EXTENSIONS = {"tsv": "tsv", "csv": "csv", "jsonl": "json"}


def _columns(table: TableDef, expanded: bool) -> list[tuple[str, list[str]]]:
    """(header label, path into the row) for every value column; expanded mode splits nested objects."""
    result: list[tuple[str, list[str]]] = []

    def add(label: str, path: list[str], node: dict) -> None:
        if expanded and is_nested_object(node):
            for name, sub in node["properties"].items():
                add(f"{label}.{name}", [*path, name], sub)
        else:
            result.append((label, path))

    for column in table.columns:
        add(f"value.{column.name}", [column.name], column.node)
    return result


def _lookup(values: dict, path: list[str]) -> object:
    value: object = values
    for step in path:
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


class Encoder:
    """Turns records into lines of one format; ``incremental`` adds ``meta.action``."""

    def __init__(self, table: TableDef, fmt: str, mode: str, incremental: bool) -> None:
        self.table = table
        self.format = fmt
        self.incremental = incremental
        self.columns = _columns(table, expanded=(mode == "expanded" and fmt != "jsonl"))
        self.field = tsv_field if fmt == "tsv" else csv_field
        self.separator = "\t" if fmt == "tsv" else ","

    def header(self) -> str:
        if self.format == "jsonl":
            return ""
        labels = ["meta.ts"] + (["meta.action"] if self.incremental else []) + [f"key.{self.table.key.name}"]
        return self.separator.join(labels + [label for label, _ in self.columns]) + "\n"

    def line(self, record: Record) -> str:
        ts = format_timestamp(micros_to_datetime(record.ts))
        if self.format == "jsonl":
            meta = {"ts": ts, "action": "U" if record.values is not None else "D"}
            if not self.incremental:
                del meta["action"]
            row = {"meta": meta, "key": {self.table.key.name: to_json(record.key)}}
            if record.values is not None:
                row["value"] = to_json(record.values)
            return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
        field = self.field
        cells = [ts]
        if self.incremental:
            cells.append("U" if record.values is not None else "D")
        cells.append(field(record.key))
        if record.values is None:
            cells.extend(field(None) for _ in self.columns)
        else:
            values = record.values
            cells.extend(field(_lookup(values, path)) for _, path in self.columns)
        return self.separator.join(cells) + "\n"


def gzip_chunks(
    lines: Iterable[str], level: int = 1, batch: int = 2000, flush: bool = False
) -> Iterator[bytes]:
    """Compress text lines to gzip bytes as they come, in chunks of ``batch`` lines.

    With ``flush``, every chunk ends on a full flush, so a prefix of chunks decompresses to whole lines."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    pending: list[str] = []
    for line in lines:
        pending.append(line)
        if len(pending) >= batch:
            data = compressor.compress("".join(pending).encode())
            if flush:
                data += compressor.flush(zlib.Z_FULL_FLUSH)
            pending.clear()
            if data:
                yield data
    tail = compressor.compress("".join(pending).encode()) + compressor.flush()
    yield tail
