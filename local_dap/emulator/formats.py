"""Output formats of query jobs: TSV and CSV (condensed or expanded) and JSON Lines, gzip-compressed."""

from __future__ import annotations

import itertools
import json
import operator
import zlib
from collections.abc import Iterable, Iterator

from .encoding import csv_field, format_micros, to_json, tsv_field
from .schema import TableDef, is_nested_object
from .source import Plan, Record
from .values import POOL_SIZE, Pool

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


def _lookup(values: object, path: list[str]) -> object:
    value = values
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
        self._plan: Plan | None = None
        self._bound: list[tuple[list[str | None], Pool, list[str]]] = []
        self._texts: list[list[str | None]] = []
        self._spread: list[int] | None = None

    def header(self) -> str:
        if self.format == "jsonl":
            return ""
        labels = ["meta.ts"] + (["meta.action"] if self.incremental else []) + [f"key.{self.table.key.name}"]
        return self.separator.join(labels + [label for label, _ in self.columns]) + "\n"

    def _bind(self, plan: Plan) -> None:
        """Per output column: the encoded values of the pool it comes from, and where that pool is in the plan."""
        position = {name: i for i, name in enumerate(plan.names)}
        self._bound, positions = [], []
        for _, (name, *path) in self.columns:
            pool = plan.pools[position[name]]
            texts = pool.texts.setdefault((self.field, tuple(path)), [None] * POOL_SIZE)
            self._bound.append((texts, pool, path))
            positions.append(position[name])
        self._texts = [texts for texts, _, _ in self._bound]
        # expanded mode makes several output columns of one nested column
        self._spread = None if positions == list(range(len(plan.names))) else positions
        self._plan = plan

    def _encode(self, column: int, slot: int) -> str:
        texts, pool, path = self._bound[column]
        text = texts[slot] = self.field(_lookup(pool.value(slot), path))
        return text

    def line(self, record: Record) -> str:
        ts = format_micros(record.ts)
        if self.format != "jsonl" and record.slots is not None and record.touched is None:
            return self._pooled_line(ts, record)
        values = record.values
        if self.format == "jsonl":
            meta = {"ts": ts, "action": "U" if values is not None else "D"}
            if not self.incremental:
                del meta["action"]
            row = {"meta": meta, "key": {self.table.key.name: to_json(record.key)}}
            if values is not None:
                row["value"] = to_json(values)
            return json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n"
        field = self.field
        cells = [ts]
        if self.incremental:
            cells.append("U" if values is not None else "D")
        cells.append(field(record.key))
        cells.extend(field(None if values is None else _lookup(values, path)) for _, path in self.columns)
        return self.separator.join(cells) + "\n"

    def _pooled_line(self, ts: str, record: Record) -> str:
        """A TSV or CSV line of pooled values only, from the pools' encoded values."""
        if record.plan is not self._plan:
            self._bind(record.plan)
        slots = record.slots if self._spread is None else [record.slots[i] for i in self._spread]
        cells = list(map(operator.getitem, self._texts, slots))
        if None in cells:
            cells = [self._encode(k, slot) if cells[k] is None else cells[k] for k, slot in enumerate(slots)]
        head = [ts, "U", self.field(record.key)] if self.incremental else [ts, self.field(record.key)]
        return self.separator.join(head + cells) + "\n"


def gzip_chunks(
    lines: Iterable[str], level: int = 1, batch: int = 500, flush: bool = False
) -> Iterator[bytes]:
    """Compress text lines to gzip bytes as they come, in chunks of ``batch`` lines.

    With ``flush``, every chunk ends on a full flush, so a prefix of chunks decompresses to whole lines."""
    compressor = zlib.compressobj(level, zlib.DEFLATED, 31)
    lines = iter(lines)
    while text := "".join(itertools.islice(lines, batch)):
        data = compressor.compress(text.encode())
        if flush:
            data += compressor.flush(zlib.Z_FULL_FLUSH)
        if data:
            yield data
    yield compressor.flush()
