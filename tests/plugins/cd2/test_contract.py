"""The contract between the hook and the child: jobs survive argv, results survive JSON, and any field
one side has and the other lacks is an error, never a silent gap."""

from __future__ import annotations

import json

import pytest

from cd2.contract import (
    Action,
    ChildError,
    ContractError,
    ErrorCategory,
    ListJob,
    ListResult,
    Outcome,
    PlannedAction,
    TableJob,
    TablePlan,
    TableRef,
    TableResult,
    job_from_argv,
)


def test_table_ref_parses_labels():
    assert TableRef.parse("canvas.users") == TableRef("canvas", "users")
    assert TableRef("canvas", "users").label == "canvas.users"
    with pytest.raises(ContractError, match="namespace.table"):
        TableRef.parse("users")


@pytest.mark.parametrize(
    "job",
    [
        ListJob(namespace=("canvas", "catalog")),
        TableJob(action=Action.SYNC, namespace="canvas", table="users"),
        TableJob(
            action=Action.INIT,
            namespace="canvas",
            table='a, b,"all',
            holder="cd2 r",
            reinit=True,
            lock_wait_seconds=2.5,
            api_limits="create_job=7",
            api_limit_window_seconds=30.0,
        ),  # fmt: skip
        TableJob(action=Action.PLAN, namespace="canvas", table="users", reinit=True, retention_hours=1.5),
    ],
)
def test_jobs_round_trip_through_argv(job):
    assert job_from_argv(job.to_argv()) == job


def test_a_table_job_is_sync_init_or_plan():
    with pytest.raises(ContractError, match="sync, init or plan"):
        TableJob(action=Action.LIST, namespace="canvas", table="users")


def test_results_round_trip_through_json():
    failed = TableResult("canvas.users", Outcome.FAILED, error=ChildError(ErrorCategory.TRANSIENT, "X", "m"))
    done = TableResult("canvas.users", Outcome.SYNCED, rows=3, watermark_after="2026-01-01T00:00:00Z")
    planned = TableResult(
        "canvas.users", Outcome.PLANNED, plan=TablePlan(PlannedAction.SYNC, "initialized", 30, 1, 2)
    )
    for result in (failed, done, planned):
        decoded = TableResult.from_json(result.to_json())
        assert decoded == result and isinstance(decoded.outcome, Outcome)
    listed = ListResult(tables={"canvas": ["users"]})
    assert ListResult.from_json(listed.to_json()) == listed
    assert TableResult.from_json(failed.to_json()).error.category is ErrorCategory.TRANSIENT
    assert TableResult.from_json(planned.to_json()).plan.action is PlannedAction.SYNC


def test_a_field_only_one_side_knows_is_an_error():
    record = TableResult("canvas.users", Outcome.SYNCED).to_dict()
    with pytest.raises(ContractError, match=r"unknown field\(s\) \['row_count'\]"):
        TableResult.from_dict(record | {"row_count": 3})
    with pytest.raises(ContractError, match=r"missing field\(s\) \['outcome'\]"):
        TableResult.from_dict({k: v for k, v in record.items() if k != "outcome"})
    with pytest.raises(ContractError, match="ChildError"):
        TableResult.from_dict(record | {"error": {"category": "transient", "type": "X"}})
    with pytest.raises(ContractError):
        TableResult.from_dict(record | {"outcome": "ok"})  # not a status word of the contract
    with pytest.raises(ContractError, match="not JSON"):
        TableResult.from_json(b"{")
    assert json.loads(TableResult("a.b", Outcome.SKIPPED).to_json())["outcome"] == "skipped"
