"""The changing data source: a logical clock, a change log per table, and rows generated on demand.

Rows are never stored. A row is ``(index, version)``; its values come from hashes (see ``values``).
Only the change log is kept: for every row touched since the start, the list of its changes. A table of
a million base rows with a few thousand changes costs a few thousand entries.

Time: the clock starts at ``START`` and each :meth:`Source.advance` moves it by ``step``. A change made in
a step gets a ``meta.ts`` inside ``[previous clock, new clock)``. The state "at T" applies every change
with ``ts < T``; an incremental query ``[since, until)`` returns the changes with ``since <= ts < until``.
"""

from __future__ import annotations

import bisect
import copy
import datetime as dt
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

from .schema import TableDef
from .values import compile_node, datetime_to_micros, micros_to_datetime, mix, name_hash

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HOUR = 3_600_000_000
DAY = 24 * HOUR

INSERT, UPDATE, SOFT_DELETE, DELETE = "insert", "update", "soft_delete", "delete"


@dataclass(frozen=True)
class Change:
    ts: int  # microseconds since the epoch
    version: int
    kind: str


@dataclass(frozen=True)
class Record:
    """One row as served: ``values`` is None for a hard delete (``D``)."""

    ts: int
    key: object
    values: dict[str, object] | None


@dataclass
class SchemaEpoch:
    """A schema version and the clock time from which rows are written with it."""

    since: int
    table: TableDef
    generators: dict[str, object] = field(default_factory=dict)


class TableSource:
    """One table: its schema history, its base rows and its change log."""

    def __init__(self, table: TableDef, seed: int, rows: int, start: int) -> None:
        self.seed_hash = name_hash(seed, table.namespace, table.name)
        self.base_rows = rows
        self.next_index = rows
        self.epochs = [SchemaEpoch(-(1 << 62), table)]
        self.changes: dict[int, list[Change]] = {}
        self.log_ts: list[int] = []  # every change in time order, for incremental queries
        self.log_index: list[int] = []
        self.start = start
        self.retention: int | None = 30 * DAY if table.append_only else None
        self._plans: dict[tuple[int, int], tuple] = {}
        self._compile(self.epochs[0])

    # -- schema -----------------------------------------------------------------------------------
    @property
    def table(self) -> TableDef:
        return self.epochs[-1].table

    def _compile(self, epoch: SchemaEpoch) -> None:
        epoch.generators = {
            c.name: (compile_node(c.node, c.name), c, name_hash(c.name)) for c in epoch.table.columns
        }

    def set_schema(self, table: TableDef, now: int) -> None:
        """Make ``table`` the current definition for rows written from ``now`` on."""
        epoch = SchemaEpoch(now, table)
        self._compile(epoch)
        if self.epochs[-1].since == now:
            self.epochs[-1] = epoch
        else:
            self.epochs.append(epoch)

    def _epoch_at(self, ts: int) -> SchemaEpoch:
        index = bisect.bisect_right([e.since for e in self.epochs], ts) - 1
        return self.epochs[max(index, 0)]

    # -- rows -------------------------------------------------------------------------------------
    def key_of(self, index: int) -> object:
        node = self.table.key.node
        if node.get("type") == "integer":
            return index + 1
        if node.get("format") == "uuid":
            return uuid.UUID(int=(mix(self.seed_hash ^ index) << 64) | mix(index), version=4)
        return f"{self.table.name}-{index + 1}"

    def base_ts(self, index: int) -> int:
        """Base rows were written during the day before the clock starts."""
        return self.start - DAY + mix(self.seed_hash + index) % DAY

    def values(self, index: int, version: int, ts: int, kind: str, table: TableDef) -> dict[str, object]:
        """The value columns of row ``index`` at ``version``, written at ``ts``, in ``table``'s columns."""
        epoch = self.epochs[0] if len(self.epochs) == 1 else self._epoch_at(ts)
        row_hash = mix(self.seed_hash ^ mix(index * 0x10001 + version))
        result: dict[str, object] = {}
        for name, generate, nullable, column_hash, new_member in self._plan(epoch, table):
            if generate is None:  # the column did not exist when this version was written
                result[name] = None
                continue
            cell = mix(row_hash ^ column_hash)
            if nullable and cell % 5 == 0:
                result[name] = None
            elif new_member is not None and cell & 2:
                result[name] = new_member  # half the rows written after an enum gained a member use it
            else:
                result[name] = generate(cell)
        if version:
            self._touch(result, table, ts, kind)
        return result

    def _plan(self, epoch: SchemaEpoch, table: TableDef) -> list[tuple]:
        """Per column of ``table``: how rows written under ``epoch`` generate it (cached)."""
        key = (id(epoch), id(table))
        cached = self._plans.get(key)
        if cached is not None and cached[0] is epoch and cached[1] is table:
            return cached[2]
        added = epoch.table.extra.get("added_enum", {})
        plan = []
        for column in table.columns:
            entry = epoch.generators.get(column.name)
            if entry is None:
                plan.append((column.name, None, True, 0, None))
            else:
                generate, written_as, column_hash = entry
                plan.append(
                    (column.name, generate, not written_as.required, column_hash, added.get(column.name))
                )
        self._plans[key] = (epoch, table, plan)
        return plan

    def _touch(self, result: dict, table: TableDef, ts: int, kind: str) -> None:
        stamp = micros_to_datetime(ts)
        for name in ("updated_at",):
            column = table.column(name)
            if column is not None and column.node.get("format") == "date-time":
                result[name] = stamp
        if kind == SOFT_DELETE:
            state = soft_delete_column(table)
            if state is not None:
                result[state] = "deleted"
                if table.column("deleted_at") is not None:
                    result["deleted_at"] = stamp

    def state_at(self, index: int, at: int) -> tuple[int, int, str] | None:
        """``(ts, version, kind)`` of the row's latest change before ``at``, or None if absent then."""
        history = self.changes.get(index)
        if history is None:
            return (self.base_ts(index), 0, INSERT) if index < self.base_rows else None
        position = bisect.bisect_left([c.ts for c in history], at)
        if position == 0:
            if index < self.base_rows:
                return (self.base_ts(index), 0, INSERT)
            return None
        change = history[position - 1]
        if change.kind == DELETE:
            return None
        return change.ts, change.version, change.kind

    def snapshot(self, at: int, table: TableDef, first: int = 0, last: int | None = None) -> Iterator[Record]:
        """The rows alive at ``at`` with index in ``[first, last)``, in index order."""
        last = self.next_index if last is None else min(last, self.next_index)
        changes = self.changes
        for index in range(first, last):
            if index not in changes:
                if index < self.base_rows:
                    ts = self.base_ts(index)
                    yield Record(ts, self.key_of(index), self.values(index, 0, ts, INSERT, table))
                continue
            state = self.state_at(index, at)
            if state is not None:
                ts, version, kind = state
                yield Record(ts, self.key_of(index), self.values(index, version, ts, kind, table))

    def changed_indexes(self, since: int, until: int) -> list[int]:
        """Indexes of rows with a change in ``[since, until)``, ordered by their latest such change."""
        low = bisect.bisect_left(self.log_ts, since)
        high = bisect.bisect_left(self.log_ts, until)
        latest: dict[int, int] = {}
        for position in range(low, high):
            latest[self.log_index[position]] = position
        return sorted(latest, key=latest.__getitem__)

    def incremental(self, since: int, until: int, table: TableDef, indexes: list[int]) -> Iterator[Record]:
        """Consolidated changes in ``[since, until)`` for ``indexes``: the latest version, or a delete."""
        for index in indexes:
            history = self.changes[index]
            change = history[bisect.bisect_left([c.ts for c in history], until) - 1]
            if change.kind == DELETE:
                yield Record(change.ts, self.key_of(index), None)
            else:
                values = self.values(index, change.version, change.ts, change.kind, table)
                yield Record(change.ts, self.key_of(index), values)

    def row_count(self) -> int:
        return self.next_index

    # -- changes ----------------------------------------------------------------------------------
    def advance(self, begin: int, end: int, count: int, rng: random.Random) -> dict[str, int]:
        """Make ``count`` changes with timestamps in ``[begin, end)``; returns counts per kind."""
        stamps = sorted(rng.randrange(begin, end) for _ in range(count))
        made = {INSERT: 0, UPDATE: 0, SOFT_DELETE: 0, DELETE: 0}
        soft = soft_delete_column(self.table) is not None
        for ts in stamps:
            roll = rng.random()
            index = None if self.table.append_only or roll < 0.4 else self._pick_alive(rng, ts)
            if index is None:
                kind, index, version = INSERT, self.next_index, 1
                self.next_index += 1
            else:
                kind = UPDATE if roll < 0.75 else (SOFT_DELETE if roll < 0.87 and soft else DELETE)
                version = self._last_version(index) + 1
            self.changes.setdefault(index, []).append(Change(ts, version, kind))
            self.log_ts.append(ts)
            self.log_index.append(index)
            made[kind] += 1
        return made

    def _last_version(self, index: int) -> int:
        history = self.changes.get(index)
        return history[-1].version if history else 0

    def _pick_alive(self, rng: random.Random, ts: int) -> int | None:
        for _ in range(20):
            if self.next_index == 0:
                return None
            index = rng.randrange(self.next_index)
            if self.state_at(index, ts + 1) is not None:
                return index
        return None


def soft_delete_column(table: TableDef) -> str | None:
    """The state column a soft delete sets to ``deleted`` (``workflow_state`` or ``state``), if any."""
    for name in ("workflow_state", "state"):
        column = table.column(name)
        if column is not None and "deleted" in column.node.get("enum", ()):
            return name
    return None


class Source:
    """Every table of the emulator, the logical clock and the schema changes."""

    def __init__(self, tables: list[TableDef], seed: int, rows: int, step: dt.timedelta) -> None:
        self.seed = seed
        self.rows = rows
        self.step = int(step.total_seconds() * 1_000_000)
        self.start = datetime_to_micros(START)
        self.now = self.start
        self.steps = 0
        self.definitions = {(t.namespace, t.name): t for t in tables}
        self.tables = {
            k: TableSource(copy.deepcopy(t), seed, rows, self.start) for k, t in self.definitions.items()
        }

    def table(self, namespace: str, name: str) -> TableSource | None:
        return self.tables.get((namespace, name))

    def names(self, namespace: str) -> list[str]:
        return sorted(name for ns, name in self.tables if ns == namespace)

    def advance(self, changes: int, steps: int = 1, tables: list[str] | None = None) -> dict:
        """Move the clock ``steps`` times; each step makes ``changes`` changes in each (selected) table."""
        made: dict[str, dict[str, int]] = {}
        for _ in range(steps):
            begin, end = self.now, self.now + self.step
            self.steps += 1
            for (ns, name), table in sorted(self.tables.items()):
                label = f"{ns}.{name}"
                if tables is not None and label not in tables and name not in tables:
                    continue
                rng = random.Random(name_hash(self.seed, label, self.steps))
                counts = table.advance(begin, end, changes, rng)
                for kind, n in counts.items():
                    made.setdefault(label, {}).setdefault(kind, 0)
                    made[label][kind] += n
            self.now = end
        return {"now": self.now, "steps": self.steps, "changes": made}
