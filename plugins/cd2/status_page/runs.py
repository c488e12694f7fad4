"""The status page's second reader: Airflow's metadata, each table's newest run of the table tasks and
their :class:`~cd2.contract.TableResult` XComs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.utils.state import State
from sqlalchemy import select
from sqlalchemy.orm import Session

from cd2.contract import ContractError, ErrorCategory, Outcome, TableResult
from cd2.dag_names import DAG_ID, INIT_TASK_ID, SYNC_TASK_ID
from cd2.summary import summarize_table

# Runs looked back through for each table's last outcome (a table a run did not select keeps an older one).
RECENT_RUNS = 50


@dataclass(frozen=True)
class LastOutcome:
    """What the newest run that ran a table's tasks says about it, and the task instance to look at."""

    table: str
    outcome: str  # an Outcome, or the task instance's state while it has no record (running, queued)
    run_id: str
    task_id: str
    map_index: int
    error: str | None = None
    error_category: ErrorCategory | None = None


def read_last_outcomes(
    session: Session, dag_id: str = DAG_ID, recent_runs: int = RECENT_RUNS
) -> dict[str, LastOutcome]:
    """Each table's newest run among the last ``recent_runs`` that has its table task instances."""
    runs = dict(
        session.execute(
            select(DagRun.id, DagRun.run_id)
            .where(DagRun.dag_id == dag_id)
            .order_by(DagRun.id.desc())
            .limit(recent_runs)
        ).all()
    )
    if not runs:
        return {}
    task_ids = (SYNC_TASK_ID, INIT_TASK_ID)
    instances = session.execute(
        select(
            TaskInstance.run_id,
            TaskInstance.task_id,
            TaskInstance.map_index,
            TaskInstance.rendered_map_index,
            TaskInstance.state,
        ).where(
            TaskInstance.dag_id == dag_id,
            TaskInstance.task_id.in_(task_ids),
            TaskInstance.run_id.in_(list(runs.values())),
            TaskInstance.map_index >= 0,
        )
    ).all()
    xcoms = session.scalars(
        select(XComModel).where(
            XComModel.dag_id == dag_id,
            XComModel.key == "return_value",
            XComModel.task_id.in_(task_ids),
            XComModel.dag_run_id.in_(list(runs)),
        )
    ).all()
    records = {(x.run_id, x.task_id, x.map_index): XComModel.deserialize_value(x) for x in xcoms}
    order = {run_id: run_pk for run_pk, run_id in runs.items()}
    groups: dict[tuple[str, int], dict[str, tuple[str | None, str | None]]] = {}
    for run_id, task_id, map_index, label, state in instances:
        groups.setdefault((run_id, map_index), {})[task_id] = (label, state)
    found: dict[str, LastOutcome] = {}
    for (run_id, map_index), tasks in sorted(groups.items(), key=lambda item: order[item[0][0]]):
        outcome = last_outcome(run_id, map_index, tasks, records)
        if outcome is not None:
            found[outcome.table] = outcome  # newer runs come later and replace older ones
    return found


def last_outcome(
    run_id: str,
    map_index: int,
    tasks: Mapping[str, tuple[str | None, str | None]],
    records: Mapping[tuple[str, str, int], Any],
) -> LastOutcome | None:
    """One table's outcome in one run, from its task instances' (label, state) and their XCom records."""
    decoded: dict[str, TableResult | None] = {}
    for task_id in (SYNC_TASK_ID, INIT_TASK_ID):
        try:
            value = records.get((run_id, task_id, map_index))
            decoded[task_id] = TableResult.from_dict(value) if value is not None else None
        except ContractError:
            decoded[task_id] = None
    sync, init = decoded[SYNC_TASK_ID], decoded[INIT_TASK_ID]
    states = {task_id: state for task_id, (_, state) in tasks.items()}
    label = (sync or init).label if (sync or init) else next((lab for lab, _ in tasks.values() if lab), None)
    if label is None:
        return None  # not rendered yet: the run has not reached this table
    if sync is None:  # running, queued, or ended without a record (killed)
        return LastOutcome(label, states.get(SYNC_TASK_ID) or "none", run_id, SYNC_TASK_ID, map_index)
    if sync.outcome is Outcome.INIT_NEEDED and init is None:
        state = states.get(INIT_TASK_ID)
        if state and state not in State.finished:
            return LastOutcome(label, state, run_id, INIT_TASK_ID, map_index)  # init still to come
    summary = summarize_table(label, sync, init)
    by_init = (
        init is not None
        and init.outcome is not Outcome.SKIPPED
        and sync.outcome not in (Outcome.FAILED, Outcome.BUSY)
    )
    task_id = INIT_TASK_ID if by_init or sync.outcome is Outcome.INIT_NEEDED else SYNC_TASK_ID
    return LastOutcome(
        label, str(summary.outcome), run_id, task_id, map_index, summary.error, summary.error_category
    )
