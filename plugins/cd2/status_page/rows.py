"""The page's rows: the replica's tables joined with their last outcomes and freshness bounds."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from cd2.config import ConfigError, Freshness, parse_config
from cd2.contract import ErrorCategory, Outcome
from cd2.dag_names import CONFIG_VARIABLE, DAG_ID
from cd2.instances import DEFAULT_INSTANCE
from cd2.status_page.replica import ReplicaTable
from cd2.status_page.runs import LastOutcome
from cd2.summary import failed_kind


@dataclass(frozen=True)
class TableStatus:
    """One row of the page: a table of one Canvas instance (whose DAG is ``dag_id``)."""

    table: str
    watermark: datetime | None
    lag_seconds: float | None
    freshness_hours: float
    stale: bool
    rows: int | None
    rows_estimated: bool
    oldest_row: datetime | None
    schema_version: int | None
    outcome: str | None
    error: str | None
    error_category: ErrorCategory | None
    run_id: str | None
    task_id: str | None
    map_index: int | None
    instance: str = DEFAULT_INSTANCE
    dag_id: str = DAG_ID

    @property
    def outcome_text(self) -> str | None:
        """The outcome as the notification names it (``failed (unforeseen)``)."""
        return failed_kind(self.error_category) if self.outcome == Outcome.FAILED else self.outcome

    @property
    def action(self) -> str | None:
        """What a person does about a failed table (its error category's action)."""
        return self.error_category.action if self.error_category and self.outcome == Outcome.FAILED else None

    @property
    def ui_path(self) -> str | None:
        """The task instance's page in the Airflow UI, relative to the UI's root."""
        if self.run_id is None or self.task_id is None or self.map_index is None:
            return None
        return (
            f"dags/{quote(self.dag_id, safe='')}/runs/{quote(self.run_id, safe='')}/tasks/{quote(self.task_id, safe='')}"
            f"/mapped/{self.map_index}"
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["watermark"] = self.watermark.isoformat() if self.watermark else None
        data["oldest_row"] = self.oldest_row.isoformat() if self.oldest_row else None
        data["ui_path"] = self.ui_path
        data["outcome_text"] = self.outcome_text
        data["action"] = self.action
        return data


def table_statuses(
    replica: Mapping[str, ReplicaTable],
    outcomes: Mapping[str, LastOutcome],
    freshness: Freshness,
    now: datetime,
    *,
    instance: str = DEFAULT_INSTANCE,
    dag_id: str = DAG_ID,
) -> list[TableStatus]:
    """One row per table the replica or a run knows of ``instance``, sorted; stale when the watermark is
    older than the table's freshness bound (the config Variable's ``freshness_hours``)."""
    statuses = []
    for label in sorted(set(replica) | set(outcomes)):
        table, last = replica.get(label), outcomes.get(label)
        lag = max(0.0, (now - table.watermark).total_seconds()) if table else None
        bound = freshness.hours_for(label)
        statuses.append(
            TableStatus(
                table=label,
                watermark=table.watermark if table else None,
                lag_seconds=round(lag, 1) if lag is not None else None,
                freshness_hours=bound,
                stale=lag is not None and lag > bound * 3600,
                rows=table.rows if table else None,
                rows_estimated=table.rows_estimated if table else False,
                oldest_row=table.oldest_row if table else None,
                schema_version=table.schema_version if table else None,
                outcome=last.outcome if last else None,
                error=last.error if last else None,
                error_category=last.error_category if last else None,
                run_id=last.run_id if last else None,
                task_id=last.task_id if last else None,
                map_index=last.map_index if last else None,
                instance=instance,
                dag_id=dag_id,
            )
        )
    return statuses


def freshness_from_config(raw: Any, variable: str = CONFIG_VARIABLE) -> tuple[Freshness, str | None]:
    """The freshness bounds of a config Variable's value; the defaults and the error if invalid."""
    try:
        return parse_config(raw, variable).freshness, None
    except ConfigError as error:
        return Freshness(), str(error)
