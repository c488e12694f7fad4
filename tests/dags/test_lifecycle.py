"""Every table shape the emulator knows, through a replica's whole life, one DAG run per step.

The shapes are the emulator's built-in tables, Instructure's schemas in ``../shared/cd2/schemas`` and the
generated ones (:mod:`local_dap.emulator.shapes`: every column kind with every key kind, lookup tables, a
log table). Each step is one ``airflow dags test`` run over all of them, through the product's own sync
and init tasks: init, sync, a forced re-init, a schema change, a second schema change met by a re-init
after "watermark too old" (so the previous copy has the old shape), and a last sync. After each step
every table equals the emulator's truth (a log table: everything ever written, which its re-inits keep),
every view on a table or on one of its lookup tables still exists or is named as needing a person, and
a reader's grants on each table, on its key column and on its lookup tables still hold, and so do the
indexes an analyst added (on the key, on another column while it exists, on each lookup table's values).
"""

from __future__ import annotations

import psycopg2
import pytest

from local_dap.control import EmulatorError, start_emulator
from local_dap.emulator.schema import APPEND_ONLY_NAMESPACES
from local_dap.emulator.shapes import SHARED_NAMESPACE, write_schemas
from local_dap.truth import replica_truth
from tests.dags.conftest import SHAPES_COVERED
from tests.dags.replica import FRESH_ENOUGH, Replica
from tests.support.paths import SHARED_DIR

# Schema changes, rotated over the tables (a change a table cannot take falls back to add_column).
FIRST_CHANGES = (
    "drop_column",
    "change_type",
    "add_enum_value",
    "nullable",
    "add_lookup_column",
    "add_column",
)
SECOND_CHANGES = ("add_lookup_column", "add_column", "drop_column", "change_type")
VIEWS_SCHEMA = "lifecycle_views"
READER, COLUMN_READER = "lifecycle_reader", "lifecycle_column_reader"
_HAS_COLUMN = (
    "SELECT EXISTS (SELECT FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s AND attnum > 0 "
    "AND NOT attisdropped)"
)


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """An emulator serving every shape; the labels of the built-in, shared and generated ones."""
    directory = tmp_path_factory.mktemp("shapes")
    added = write_schemas(directory, SHARED_DIR / "cd2" / "schemas")
    with start_emulator(rows=20, schemas=directory) as emulator:
        yield emulator, sorted(emulator.state()["tables"]), added


class Lifecycle:
    """The replica of every shape, the views on it, and the checks after each step."""

    def __init__(self, replica: Replica, labels: list[str]) -> None:
        self.replica, self.labels = replica, labels
        self.views: dict[str, list[str]] = {}  # table label -> views on it or on its lookup tables
        self.kept_views: set[str] = set()  # views on the key alone: they must survive every step
        self.grants: list[tuple[str, str | None]] = []  # (table, column or None) readers were granted
        self.indexes: list[tuple[str, str, str]] = []  # (table, index, its column) an analyst added
        self.indexed: dict[str, str] = {}  # table label -> the column other than its key an analyst indexed

    def run(self, step: str, conf: dict | None = None) -> dict:
        config = {
            "namespaces": sorted({label.split(".")[0] for label in self.labels}),
            "include": self.labels,
            "freshness_hours": FRESH_ENOUGH,
            "api_limits": {"create_job": 1000},  # the published 5 a minute would pace the test
        }
        result, note = self.replica.run(config=config, conf=conf)
        failed = {t["table"]: t["error"] for t in note["facts"]["tables"] if t["outcome"] == "failed"}
        assert result.state == "success" and not failed, (step, failed)
        self.check(step, note)
        return note

    def check(self, step: str, note: dict) -> None:
        for label in self.labels:
            namespace, table = label.split(".")
            log = namespace in APPEND_ONLY_NAMESPACES
            expected = self.replica.emulator.truth(namespace, table, everything=log)
            assert replica_truth(self.replica.url, namespace, table) == expected, (step, label)
        named = {t["table"]: " ".join(t["views_needing_person"] or []) for t in note["facts"]["tables"]}
        with self.replica.server.connect(self.replica.database) as conn, conn.cursor() as cur:
            for label, views in self.views.items():
                for view in views:
                    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (view,))
                    exists = cur.fetchone()[0]
                    assert exists or view in named.get(label, ""), (step, label, view)
                    assert exists or view not in self.kept_views, (step, label, view)
            # Analysts' access survives every re-init: a table's and a column's grants, lookup tables' too.
            for table, column in self.grants:
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
                if not cur.fetchone()[0]:
                    continue  # a lookup table of a dropped column
                if column is None:
                    cur.execute("SELECT has_table_privilege(%s, %s, 'SELECT')", (READER, table))
                else:
                    cur.execute(
                        "SELECT has_column_privilege(%s, %s, %s, 'SELECT')", (COLUMN_READER, table, column)
                    )
                assert cur.fetchone()[0], (step, table, column)
            # Analysts' indexes too, on every copy that still has their column.
            for table, index, column in self.indexes:
                cur.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
                if not cur.fetchone()[0]:
                    continue
                cur.execute(_HAS_COLUMN, (table, column))
                if not cur.fetchone()[0]:
                    continue  # dropped by a schema change, and the index with it
                cur.execute(
                    "SELECT indrelid = %s::regclass FROM pg_index WHERE indexrelid = to_regclass(%s)",
                    (table, index),
                )
                assert cur.fetchone() == (True,), (step, table, index)

    def create_views(self) -> None:
        """On every table a view of its key, and one on each of its lookup tables."""
        with self.replica.server.connect(self.replica.database) as conn, conn.cursor() as cur:
            cur.execute(f"CREATE SCHEMA {VIEWS_SCHEMA}")
            for role in (READER, COLUMN_READER):
                cur.execute(f"DROP ROLE IF EXISTS {role}")  # roles are the server's: a re-run's leftover
                cur.execute(f"CREATE ROLE {role} NOLOGIN")
            for label in self.labels:
                namespace, table = label.split(".")
                cur.execute(
                    "SELECT a.attname FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid "
                    "AND a.attnum = i.indkey[0] WHERE i.indrelid = %s::regclass AND i.indisprimary",
                    (label,),
                )
                (key,) = cur.fetchone()
                view = f"{VIEWS_SCHEMA}.key_of_{namespace}_{table}"
                cur.execute(f'CREATE VIEW {view} AS SELECT "{key}" FROM {label}')
                self.views[label] = [view]
                self.kept_views.add(view)
                cur.execute(
                    "SELECT c.confrelid::regclass::text FROM pg_constraint c "
                    "WHERE c.conrelid = %s::regclass AND c.contype = 'f' ORDER BY 1",
                    (label,),
                )
                for (lookup,) in cur.fetchall():
                    view = f"{VIEWS_SCHEMA}.values_of_{lookup.split('.')[1]}"
                    cur.execute(f"CREATE VIEW {view} AS SELECT value FROM {lookup}")
                    self.views[label].append(view)
                    cur.execute(f"GRANT SELECT ON {lookup} TO {READER}")
                    self.grants.append((lookup, None))
                    self.add_index(cur, lookup, ["value"])
                cur.execute(f"GRANT SELECT ON {label} TO {READER}")
                cur.execute(f'GRANT SELECT ("{key}") ON {label} TO {COLUMN_READER}')
                self.grants += [(label, None), (label, key)]
                self.add_index(cur, label, [key])
                cur.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0 "
                    "AND NOT attisdropped AND attname <> %s ORDER BY attnum",
                    (label, key),
                )
                column = self.add_index(cur, label, [column for (column,) in cur.fetchall()])
                if column is not None:
                    self.indexed[label] = column

    def add_index(self, cur, table: str, columns: list[str]) -> str | None:
        """An index on the first of ``columns`` a btree can index, as an analyst would add one; its column."""
        index = f"added_{len(self.indexes)}"
        for column in columns:
            try:
                cur.execute(f'CREATE INDEX {index} ON {table} ("{column}")')
            except psycopg2.Error:
                continue  # no btree for its type (a json column)
            self.indexes.append((table, f"{table.split('.')[0]}.{index}", column))
            return column
        return None

    def change_schemas(self, changes: tuple[str, ...], offset: int) -> dict[str, dict]:
        """One schema change per table, rotated (one it cannot take: its default column, else add_column);
        a view on each column a change drops or retypes. A column dropped is the one an analyst indexed
        where it can be."""
        made = {}
        for index, label in enumerate(self.labels):
            namespace, table = label.split(".")
            change = changes[(index + offset) % len(changes)]
            column = self.indexed.get(label) if change == "drop_column" else None
            *tries, last = dict.fromkeys([(change, column), (change, None), ("add_column", None)])
            for change_tried, column_tried in tries:
                try:
                    made[label] = self.replica.emulator.bump_schema(
                        namespace, table, change_tried, column_tried
                    )
                    break
                except EmulatorError:
                    continue  # a change the table cannot take: the next one
            else:
                made[label] = self.replica.emulator.bump_schema(namespace, table, *last)
            if made[label]["change"] in ("drop_column", "change_type"):
                self.view_on_column(label, made[label]["column"])
        return made

    def view_on_column(self, label: str, column: str) -> None:
        view = f"{VIEWS_SCHEMA}.column_of_{label.replace('.', '_')}_{len(self.views[label])}"
        with self.replica.server.connect(self.replica.database) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE VIEW {view} AS SELECT "{column}" FROM {label}')
        self.views[label].append(view)


@pytest.mark.timeout(1800)  # six DAG runs over every shape: 8 minutes alone, more beside another worker
def test_every_table_shape_lives_through_init_sync_reinit_schema_changes_and_a_reinit_after_too_old(
    airflow_env, shapes, postgres_server, sns, request
):
    emulator, labels, added = shapes
    emulator.reset()
    sns.received()
    life = Lifecycle(Replica(airflow_env, emulator, postgres_server, sns, "lifecycle"), labels)
    logs = [label for label in labels if label.split(".")[0] in APPEND_ONLY_NAMESPACES]
    assert logs and any(label.startswith("canvas.shape_") for label in labels)

    note = life.run("init")
    assert note["facts"]["counts"]["initialized"] == len(labels)
    life.create_views()
    assert any(len(views) > 1 for views in life.views.values())  # lookup tables have views too
    assert len({table for table, _, _ in life.indexes}) > len(labels)  # each table's, lookup tables' too

    emulator.advance(changes=5)
    assert life.run("sync")["facts"]["counts"]["synced"] == len(labels)

    emulator.advance(changes=5)
    note = life.run("forced re-init", conf={"force_reinit": labels})
    assert note["facts"]["counts"]["initialized"] == len(labels)

    changed = life.change_schemas(FIRST_CHANGES, 0)
    emulator.advance(changes=5)
    note = life.run("schema change")
    assert note["facts"]["counts"]["synced"] == len(labels)
    assert {made["change"] for made in changed.values()} >= set(FIRST_CHANGES)

    # A second change the replica never sees before the API says its watermarks are too old: each re-init
    # replaces a previous copy of the older shape. A log table's snapshot then holds only the last hour;
    # rows written between the watermark and that hour would be in no copy at all (as after an outage
    # longer than the API's 30 days), so that hour passes without new rows.
    changed = life.change_schemas(SECOND_CHANGES, 1)
    # Some re-inits meet a previous copy whose indexed column the new copy lacks: that index is left out.
    assert any(
        made.get("column") == life.indexed.get(label)
        for label, made in changed.items()
        if made["change"] == "drop_column"
    )
    emulator.configure(retention_hours=dict.fromkeys(labels, 1))
    emulator.advance(changes=0)
    emulator.advance(changes=5)
    note = life.run("re-init after watermark too old")
    assert note["facts"]["counts"]["initialized"] == len(labels)
    kept = {t["table"]: t["rows_kept"] for t in note["facts"]["tables"] if t["table"] in logs}
    assert all(kept.values()), kept  # the rows the API no longer serves stayed

    emulator.configure(retention_hours={label: 30 * 24 if label in logs else None for label in labels})
    emulator.advance(changes=5)
    assert life.run("last sync")["facts"]["counts"]["synced"] == len(labels)

    builtin = len(labels) - len(added)
    shared = sum(label.startswith(f"{SHARED_NAMESPACE}.") for label in added)
    request.config.stash[SHAPES_COVERED] = (
        f"{len(labels)} table shapes ({builtin} built-in, {shared} Instructure's, {len(added) - shared} "
        f"generated; {len(logs)} log tables) through 6 steps: init, sync, forced re-init, schema change, "
        "re-init after watermark too old, last sync"
    )
