"""Set-based upserts and deletes of the DAP child: the same replica as the stock client's, in a statement
per batch instead of a statement per row.

The replica of every built-in table with and without it is compared in test_accelerated_reader.py (its
"accelerated" arm runs this module too); here, what only this module does.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from cd2.dap_child.bulk_upsert import last_record_per_key
from local_dap.control import start_emulator
from local_dap.truth import replica_truth
from tests.plugins.cd2.dap_child.driving import count_statements, run_driver, statement_executions
from tests.support.paths import DAP_PYTHON, REPO_ROOT

NAMESPACE, TABLE = "canvas", "accounts"
MODES = {"bulk": "1", "stock": "0"}


def test_a_repeated_key_keeps_its_last_record() -> None:
    batch = [(1, "a"), (2, "b"), (1, "c"), (3, "d"), (2, "e")]
    assert last_record_per_key(batch, [0]) == [(1, "c"), (3, "d"), (2, "e")]
    composite = [(1, 1, "a"), (1, 2, "b"), (1, 1, "c")]
    assert last_record_per_key(composite, [0, 1]) == [(1, 2, "b"), (1, 1, "c")]


def test_a_batch_without_repeats_is_passed_through_as_is() -> None:
    batch = [(1, "a"), (2, "b")]
    assert last_record_per_key(batch, [0]) is batch


# In the DAP interpreter: the registry's patch applied with its verified versions replaced by one the
# client is not.
INSTALL_UNVERIFIED = """
import dataclasses, json, logging, sys
sys.path.insert(0, sys.argv[1])
warnings = []
class Collect(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())
logging.getLogger().addHandler(Collect(logging.WARNING))
from cd2.dap_child import patches
from pysqlsync.dialect.postgresql.connection import PostgreSQLContext
stock = PostgreSQLContext._upsert_rows, PostgreSQLContext._delete_rows
entry = [dataclasses.replace(p, verified=frozenset({"0.0.0-not-this-one"})) for p in patches.named("bulk_upsert")]
installed = "bulk_upsert" in patches.apply(entry)
unchanged = (PostgreSQLContext._upsert_rows, PostgreSQLContext._delete_rows) == stock
print(json.dumps({"installed": installed, "unchanged": unchanged, "warnings": warnings}))
"""


def test_an_unverified_client_version_keeps_the_stock_statements_and_says_so() -> None:
    result = subprocess.run(
        [str(DAP_PYTHON), "-c", INSTALL_UNVERIFIED, str(REPO_ROOT / "plugins")],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    assert outcome["installed"] is False and outcome["unchanged"] is True
    assert len(outcome["warnings"]) == 1 and "2.3.1 is not a verified version" in outcome["warnings"][0]


@pytest.fixture(scope="module")
def synced(postgres_server):
    """canvas.accounts initialized, then synced over one change of many rows, with and without the module.

    Returns ``{mode: (driver result of the sync, replica truth, {operation: statement executions})}``, the
    emulator's truth after the change and the changes it made.
    """
    urls = {mode: postgres_server.create_database(f"bulk_upsert_{mode}") for mode in MODES}
    outcomes = {}
    with start_emulator(seed=11, rows=3000, part_rows=1000) as emulator:
        for mode, url in urls.items():
            run_driver(emulator, url, "init", NAMESPACE, TABLE, CD2_BULK_UPSERT=MODES[mode])
            count_statements(postgres_server, url, f"{NAMESPACE}.{TABLE}")
        label = f"{NAMESPACE}.{TABLE}"
        changes = emulator.advance(changes=600, tables=[label])["changes"][label]
        for mode, url in urls.items():
            result = run_driver(emulator, url, "sync", NAMESPACE, TABLE, CD2_BULK_UPSERT=MODES[mode])
            executions = statement_executions(postgres_server, url)
            outcomes[mode] = (result, replica_truth(url, NAMESPACE, TABLE), executions)
        truth = emulator.truth(NAMESPACE, TABLE)
    return outcomes, truth, changes


def test_the_sync_writes_the_same_replica_as_the_stock_client(synced) -> None:
    outcomes, truth, changes = synced
    assert all(changes[kind] > 0 for kind in ("insert", "update", "soft_delete", "delete")), changes
    (bulk, bulk_truth, _), (stock, stock_truth, _) = outcomes["bulk"], outcomes["stock"]
    assert (bulk["bulk_upsert"], stock["bulk_upsert"]) == (True, False)
    assert bulk_truth == stock_truth == truth


def test_the_sync_executes_a_statement_per_batch_not_per_row(synced) -> None:
    outcomes, _, changes = synced
    _, _, bulk = outcomes["bulk"]
    _, _, stock = outcomes["stock"]
    upserted = changes["insert"] + changes["update"] + changes["soft_delete"]
    # Condensed output merges a key's changes, so the stock client executes at most one per change.
    assert stock["INSERT"] > upserted / 2 and stock["DELETE"] > changes["delete"] / 2 > 10, (stock, changes)
    # One per incremental file (each under the client's 100k-row batch), however many rows it holds.
    assert 1 <= bulk["INSERT"] <= 3 and 1 <= bulk["DELETE"] <= 3, bulk
