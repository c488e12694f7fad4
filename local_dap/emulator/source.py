"""The changing data source: a logical clock, a change log per table, and rows generated on demand.

Rows are never stored. A row is ``(index, version)``; its values come from hashes and pools (see ``values``).
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
from typing import NamedTuple

from .schema import TableDef
from .values import Pool, compile_node, datetime_to_micros, micros_to_datetime, mix, name_hash, slots

START = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
HOUR = 3_600_000_000
DAY = 24 * HOUR

INSERT, UPDATE, SOFT_DELETE, DELETE = "insert", "update", "soft_delete", "delete"
# The share of each kind of change an advance makes unless told otherwise (a soft delete is a hard one in a
# table without a state column; an append-only table only gets inserts).
DEFAULT_CHANGE_MIX = {INSERT: 0.4, UPDATE: 0.35, SOFT_DELETE: 0.12, DELETE: 0.13}


def change_thresholds(change_mix: dict[str, float]) -> list[tuple[float, str]]:
    """``(cumulative share, kind)`` in kind order, for picking a kind from one random number in [0, 1)."""
    unknown = set(change_mix) - set(DEFAULT_CHANGE_MIX)
    if unknown or not change_mix or min(change_mix.values()) < 0 or sum(change_mix.values()) <= 0:
        raise ValueError(
            f"a change mix maps {', '.join(DEFAULT_CHANGE_MIX)} to shares >= 0, not {change_mix}"
        )
    total, running, thresholds = sum(change_mix.values()), 0.0, []
    for kind in DEFAULT_CHANGE_MIX:
        running += change_mix.get(kind, 0.0)
        thresholds.append((running / total, kind))
    return thresholds


@dataclass(frozen=True)
class Change:
    ts: int  # microseconds since the epoch
    version: int
    kind: str


class Plan(NamedTuple):
    """How rows written under one schema version fill the columns of another: a pool per column."""

    names: list[str]
    pools: list[Pool]
    hashes: list[int]


class Record(NamedTuple):
    """One row as served: value column ``i`` holds ``plan.pools[i].value(slots[i])`` unless ``touched`` sets it.

    ``slots`` is None for a hard delete (``D``)."""

    ts: int
    key: object
    slots: list[int] | None
    plan: Plan | None = None
    touched: dict[str, object] | None = None

    @property
    def values(self) -> dict[str, object] | None:
        if self.slots is None:
            return None
        plan = self.plan
        values = {
            name: pool.value(slot)
            for name, pool, slot in zip(plan.names, plan.pools, self.slots, strict=True)
        }
        if self.touched:
            values.update(self.touched)
        return values


@dataclass
class SchemaEpoch:
    """A schema version and the clock time from which rows are written with it."""

    since: int
    table: TableDef
    pools: dict[str, Pool] = field(default_factory=dict)


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
        self._absent = Pool(None, 0, True)
        self._compile(self.epochs[0])

    # -- schema -----------------------------------------------------------------------------------
    @property
    def table(self) -> TableDef:
        return self.epochs[-1].table

    def _compile(self, epoch: SchemaEpoch) -> None:
        added = epoch.table.extra.get("added_enum", {})
        epoch.pools = {
            c.name: Pool(
                compile_node(c.node, c.name),
                mix(self.seed_hash ^ name_hash(c.name)),
                nullable=not c.required,
                member=added.get(c.name),  # half the rows written after an enum gained a member use it
            )
            for c in epoch.table.columns
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

    def _row_hash(self, index: int, version: int) -> int:
        return mix(self.seed_hash ^ (index * 0x10001 + version))

    def base_ts(self, index: int) -> int:
        """Base rows were written during the day before the clock starts."""
        return self._base_ts(self._row_hash(index, 0))

    def _base_ts(self, row_hash: int) -> int:
        return self.start - DAY + row_hash % DAY

    def record(self, index: int, version: int, ts: int, kind: str, table: TableDef) -> Record:
        """Row ``index`` at ``version``, written at ``ts``, in ``table``'s columns."""
        epoch = self.epochs[0] if len(self.epochs) == 1 else self._epoch_at(ts)
        plan = self._plan(epoch, table)
        row_slots = slots(self._row_hash(index, version), plan.hashes)
        return Record(
            ts,
            self.key_of(index),
            row_slots,
            plan,
            self._touched(table, ts, kind) if version or _time_column(table) else None,
        )

    def _base_records(self, table: TableDef, first: int, last: int) -> Iterator[Record]:
        """:meth:`record` of unchanged base rows ``[first, last)``, which predate every schema change."""
        plan = self._plan(self.epochs[0], table)
        hashes = plan.hashes
        stamped = _time_column(table)
        for index in range(first, last):
            row_hash = self._row_hash(index, 0)
            ts = self._base_ts(row_hash)
            touched = {stamped: micros_to_datetime(ts)} if stamped else None
            yield Record(ts, self.key_of(index), slots(row_hash, hashes), plan, touched)

    def _plan(self, epoch: SchemaEpoch, table: TableDef) -> Plan:
        """The pools rows written under ``epoch`` take ``table``'s columns from (cached)."""
        key = (id(epoch), id(table))
        cached = self._plans.get(key)
        if cached is not None and cached[0] is epoch and cached[1] is table:
            return cached[2]
        names = [column.name for column in table.columns]
        # a column the row was written without is NULL
        plan = Plan(names, [epoch.pools.get(n, self._absent) for n in names], [name_hash(n) for n in names])
        self._plans[key] = (epoch, table, plan)
        return plan

    def _touched(self, table: TableDef, ts: int, kind: str) -> dict[str, object]:
        """What a change sets besides its generated values: ``updated_at``, and a soft delete's state."""
        stamp = micros_to_datetime(ts)
        result: dict[str, object] = {}
        if stamped := _time_column(table):
            result[stamped] = stamp
        column = table.column("updated_at")
        if column is not None and column.node.get("format") == "date-time":
            result["updated_at"] = stamp
        if kind == SOFT_DELETE:
            state = soft_delete_column(table)
            if state is not None:
                result[state] = "deleted"
                if table.column("deleted_at") is not None:
                    result["deleted_at"] = stamp
        return result

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

    def snapshot(
        self, at: int, table: TableDef, first: int = 0, last: int | None = None, *, everything: bool = False
    ) -> Iterator[Record]:
        """The rows alive at ``at`` with index in ``[first, last)``, in index order. An append-only table's
        snapshot holds only the rows inside its retention, as the API's does (``everything``: every row
        ever written, which a replica that synced all along holds)."""
        records = self._alive(at, table, first, last)
        if self.table.append_only and self.retention is not None and not everything:
            oldest = at - self.retention
            return (record for record in records if record.ts >= oldest)
        return records

    def _alive(self, at: int, table: TableDef, first: int, last: int | None) -> Iterator[Record]:
        last = self.next_index if last is None else min(last, self.next_index)
        unchanged_from = first
        for index in sorted(i for i in self.changes if first <= i < last):
            yield from self._base_records(table, unchanged_from, min(index, self.base_rows))
            unchanged_from = index + 1
            state = self.state_at(index, at)
            if state is not None:
                ts, version, kind = state
                yield self.record(index, version, ts, kind, table)
        yield from self._base_records(table, unchanged_from, min(last, self.base_rows))

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
                yield self.record(index, change.version, change.ts, change.kind, table)

    def row_count(self) -> int:
        return self.next_index

    # -- changes ----------------------------------------------------------------------------------
    def advance(
        self, begin: int, end: int, count: int, rng: random.Random, thresholds: list[tuple[float, str]]
    ) -> dict[str, int]:
        """Make ``count`` changes with timestamps in ``[begin, end)``, kinds picked by ``thresholds``
        (:func:`change_thresholds`; a change of a row when none is alive is an insert); returns counts
        per kind."""
        stamps = sorted(rng.randrange(begin, end) for _ in range(count))
        made = {INSERT: 0, UPDATE: 0, SOFT_DELETE: 0, DELETE: 0}
        soft = soft_delete_column(self.table) is not None
        for ts in stamps:
            roll = rng.random()
            wanted = next((kind for share, kind in thresholds if roll < share), thresholds[-1][1])
            index = None if self.table.append_only or wanted == INSERT else self._pick_alive(rng, ts)
            if index is None:
                kind, index, version = INSERT, self.next_index, 1
                self.next_index += 1
            else:
                kind = DELETE if wanted == SOFT_DELETE and not soft else wanted
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


def _time_column(table: TableDef) -> str | None:
    """An append-only table's ``timestamp`` column, which holds when its row was written (as web_logs'
    request time does), so that a row's age in the replica is its age at the API."""
    column = table.column("timestamp") if table.append_only else None
    return "timestamp" if column is not None and column.node.get("format") == "date-time" else None


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

    def advance(
        self,
        changes: int,
        steps: int = 1,
        tables: list[str] | None = None,
        change_mix: dict[str, float] | None = None,
    ) -> dict:
        """Move the clock ``steps`` times; each step makes ``changes`` changes in each (selected) table, of
        the kinds in ``change_mix``'s shares (see :meth:`TableSource.advance`)."""
        # A bad mix fails here, before the clock moves.
        thresholds = change_thresholds(change_mix or DEFAULT_CHANGE_MIX)
        made: dict[str, dict[str, int]] = {}
        for _ in range(steps):
            begin, end = self.now, self.now + self.step
            self.steps += 1
            for (ns, name), table in sorted(self.tables.items()):
                label = f"{ns}.{name}"
                if tables is not None and label not in tables and name not in tables:
                    continue
                rng = random.Random(name_hash(self.seed, label, self.steps))
                counts = table.advance(begin, end, changes, rng, thresholds)
                for kind, n in counts.items():
                    made.setdefault(label, {}).setdefault(kind, 0)
                    made[label][kind] += n
            self.now = end
        return {"now": self.now, "steps": self.steps, "changes": made}
