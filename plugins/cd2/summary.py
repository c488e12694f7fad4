"""What a run did, table by table: merged from each table's sync and init records, and told as a message.

A *record* is the :class:`cd2.contract.TableResult` each table task returns (its XCom), pushed in the
same shape when the task failed or skipped itself.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from cd2.config import Freshness
from cd2.contract import ErrorCategory, Outcome, PlannedAction, TablePlan, TableResult

# What a table's line in the notification can say, in the order the counts are told.
OUTCOMES = (Outcome.SYNCED, Outcome.INITIALIZED, Outcome.FAILED, Outcome.SKIPPED)
# The same for a plan run (the planned actions are counted apart).
PLAN_OUTCOMES = (Outcome.PLANNED, Outcome.FAILED, Outcome.SKIPPED)
PLAN_WORDS = {
    PlannedAction.INIT: "would init",
    PlannedAction.REINIT: "would re-init",
    PlannedAction.SYNC: "would sync",
    PlannedAction.NOTHING: "would do nothing",
}
# Told only when some table had them.
OCCASIONAL_OUTCOMES = (Outcome.BUSY,)
SUBJECT_LIMIT = 100  # SNS refuses longer subjects


@dataclass(frozen=True)
class TableSummary:
    """One table's line in the notification (``table`` is its label, ``namespace.table``)."""

    table: str
    outcome: Outcome
    duration_seconds: float | None = None
    rows: int | None = None
    watermark: str | None = None
    error: str | None = None
    note: str | None = None  # busy: who holds the table; views that need a person
    warning: str | None = None  # e.g. the target server is older than Instructure supports
    error_category: ErrorCategory | None = None
    views_needing_person: list[str] | None = None
    plan: TablePlan | None = None  # a plan run: what a run would do


@dataclass(frozen=True)
class Notification:
    subject: str
    text: str
    facts: dict[str, Any]

    def sns_message(self) -> str:
        """The ``Message`` for ``MessageStructure=json``: text for email, the facts as JSON for SQS/Lambda."""
        facts = json.dumps(self.facts, sort_keys=True)
        return json.dumps(
            {"default": self.text, "email": self.text, "sqs": facts, "lambda": facts, "https": facts}
        )


def first_line(text: str | None) -> str | None:
    return text.strip().splitlines()[0] if text and text.strip() else None


def summarize_table(label: str, sync: TableResult | None, init: TableResult | None) -> TableSummary:
    """One table's line from its sync and init records (either may be missing: the task did not run)."""
    if sync is None:
        return TableSummary(label, Outcome.SKIPPED, error="sync did not run")
    if sync.outcome in (Outcome.FAILED, Outcome.BUSY, Outcome.PLANNED):
        return _summary(label, sync.outcome, sync, sync)
    if init is not None and init.outcome in (
        Outcome.FAILED,
        Outcome.INITIALIZED,
        Outcome.SYNCED,
        Outcome.BUSY,
    ):
        return _summary(label, init.outcome, init, sync, init)
    if sync.outcome is Outcome.INIT_NEEDED:
        return TableSummary(
            label,
            Outcome.FAILED,
            sync.duration_seconds,
            watermark=sync.watermark_before,
            error="init needed but did not run",
            warning=sync.server_warning,
        )
    return _summary(label, Outcome.SYNCED, sync, sync)


def _summary(label: str, outcome: Outcome, last: TableResult, *parts: TableResult) -> TableSummary:
    durations = [p.duration_seconds for p in parts if p.duration_seconds is not None]
    error = f"{last.error.type}: {last.error.message}" if last.error else None
    return TableSummary(
        table=label,
        outcome=outcome,
        duration_seconds=round(sum(durations), 3) if durations else None,
        rows=last.rows,
        watermark=last.watermark_after or last.watermark_before,
        error=first_line(error),
        note=_note(last),
        warning=next((p.server_warning for p in parts if p.server_warning), None),
        error_category=last.error.category if last.error else None,
        views_needing_person=last.views_needing_person,
        plan=last.plan,
    )


def _note(record: TableResult) -> str | None:
    notes = [f"busy: {record.reason}"] if record.outcome is Outcome.BUSY else []
    if record.views_needing_person:
        notes.append("views needing a person: " + "; ".join(record.views_needing_person))
    return " | ".join(notes) or None


# What a person does about a failed table, by the error's category (the error's text says what is wrong).
ACTIONS = {
    ErrorCategory.PERMANENT: "fix what the error names, then clear this table's table.sync (with downstream)",
    ErrorCategory.TRANSIENT: (
        "Airflow's retries did not get past it: if the next run fails the same way, look at the DAP API's "
        "status and the network, then clear this table's table.sync (with downstream)"
    ),
    None: "read the task log of this table's table.sync and table.init, then clear table.sync",
}
VIEWS_ACTION = (
    "recreate them by hand from their saved definition in cd2_replica.saved_views (the column they used "
    "changed), then delete the saved row"
)
STALE_ACTION = (
    "the last sync succeeded but the API has no newer data: check Instructure's status page; if this "
    "table is expected to lag, raise its freshness_hours in cd2_config"
)


@dataclass(frozen=True)
class NeedsYou:
    """One thing the product could not do alone: which table (or None for the run), what, what to do."""

    table: str | None
    problem: str
    action: str
    lag_seconds: float | None = None


def needs_you(
    summaries: Sequence[TableSummary], freshness: Freshness, now: datetime, problem: str | None = None
) -> list[NeedsYou]:
    """Failed tables with the action to take, stale tables with their lag, and a run-level problem."""
    items = []
    if problem:
        items.append(
            NeedsYou(None, first_line(problem) or problem, "fix the configuration or connection it names")
        )
    for s in summaries:
        lag = _lag_seconds(s.watermark, now)
        if s.outcome is Outcome.FAILED:
            category = f" ({s.error_category})" if s.error_category else ""
            items.append(NeedsYou(s.table, f"failed{category}: {s.error}", ACTIONS[s.error_category], lag))
        elif lag is not None and lag > freshness.hours_for(s.table) * 3600:
            bound = freshness.hours_for(s.table)
            items.append(
                NeedsYou(
                    s.table, f"stale: data {format_duration(lag)} old, bound {bound:g}h", STALE_ACTION, lag
                )
            )
        if s.views_needing_person:
            items.append(
                NeedsYou(
                    s.table,
                    "views that could not be recreated: " + "; ".join(s.views_needing_person),
                    VIEWS_ACTION,
                )
            )
    return items


def _lag_seconds(watermark: str | None, now: datetime) -> float | None:
    if not watermark:
        return None
    moment = datetime.fromisoformat(watermark.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (now - moment).total_seconds())


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 1)


def format_duration(seconds: float | None) -> str:
    """A lag as people read it: ``"-"``, ``"45s"``, ``"3m05s"``, ``"5h12m00s"``, ``"2d03h"``."""
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    return (
        f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
    )


def compose(
    summaries: Sequence[TableSummary],
    *,
    dag_id: str,
    run_id: str,
    now: datetime,
    problem: str | None = None,
    freshness: Freshness | None = None,
    plan: bool = False,
) -> Notification:
    """The run's notification: what needs a person first (subject and opening), then counts and a line
    per table; the same as facts.

    ``problem`` reports a failure before any table ran (e.g. the table list could not be made).
    ``plan``: a plan run, told as such, with what a run would do per table instead of what was done.
    """
    freshness = freshness or Freshness()
    attention = needs_you(summaries, freshness, now, problem)
    counts = Counter(s.outcome for s in summaries)
    planned = Counter(s.plan.action for s in summaries if s.plan)
    lags = [lag for s in summaries if (lag := _lag_seconds(s.watermark, now)) is not None]
    max_lag = max(lags) if lags else None
    told = (PLAN_OUTCOMES if plan else OUTCOMES) + tuple(o for o in OCCASIONAL_OUTCOMES if counts[o])
    count_text = ", ".join(f"{counts[o]} {o}" for o in told)
    if plan:
        failed = f"{counts[Outcome.FAILED]} failed, " if counts[Outcome.FAILED] else ""
        count_text = failed + ", ".join(f"{planned[a]} {a}" for a in PlannedAction)
    if problem:
        status = "FAILED before any table ran"
    elif not summaries:
        status = "nothing to do"
    else:
        status = count_text
    prefix = "PLAN, nothing changed; " if plan else ""
    if attention:
        named = ", ".join(item.table or "the run" for item in attention)
        subject = f"{dag_id}: {prefix}NEEDS YOU ({len(attention)}: {named}); {status}"
        lines = [f"NEEDS YOU ({len(attention)}):"]
        lines += [
            f"- {item.table or 'the run'}: {item.problem}. Action: {item.action}." for item in attention
        ]
    else:
        subject = f"{dag_id}: {prefix}nothing needs you; {status}"
        lines = ["Nothing needs you: every table replicated and is within its freshness bound."]
        if plan:
            lines = ["Nothing needs you: every table is within its freshness bound."]
    if plan:
        lines += ["", f"PLAN run {run_id} of {dag_id}: no table was changed and no job created."]
        lines.append(f"What a run would do: {count_text}.")
    else:
        lines += ["", f"Run {run_id} of {dag_id}: {count_text}."]
    if problem:
        lines.append(f"Problem: {first_line(problem)}")
    elif not summaries:
        lines.append("No table matched the configuration and params: nothing to do.")
    lines.append(
        f"Largest data lag: {format_duration(max_lag)}" if max_lag is not None else "Largest data lag: -"
    )
    warnings = sorted({s.warning for s in summaries if s.warning})
    lines += [f"Warning: {warning}" for warning in warnings]
    lines.append("")
    for s in summaries:
        if s.plan is not None:
            lines.append(_plan_line(s, s.plan, now))
            continue
        rows = f", {s.rows} rows" if s.rows is not None else ""
        error = f": {s.error}" if s.error else ""
        error += f" ({s.note})" if s.note else ""
        lines.append(f"{s.table}: {s.outcome} in {format_duration(s.duration_seconds)}{rows}{error}")
    facts = {
        "dag_id": dag_id,
        "run_id": run_id,
        "plan": plan,
        "counts": {o: counts[o] for o in told},
        "planned": {a: planned[a] for a in PlannedAction} if plan else None,
        "max_lag_seconds": round(max_lag, 1) if max_lag is not None else None,
        "problem": first_line(problem),
        "warnings": warnings,
        "needs_you": [asdict(item) for item in attention],
        "tables": [
            asdict(s)
            | {
                "lag_seconds": _rounded(lag := _lag_seconds(s.watermark, now)),
                "stale": lag is not None and lag > freshness.hours_for(s.table) * 3600,
            }
            for s in summaries
        ],
    }
    return Notification(subject[:SUBJECT_LIMIT], "\n".join(lines) + "\n", facts)


def _plan_line(s: TableSummary, plan: TablePlan, now: datetime) -> str:
    """``canvas.users: would sync (initialized); watermark ..., lag ..., 30 rows, schema v1 local / v1 API``"""
    rows = "-" if plan.rows is None else str(plan.rows)
    local = "-" if plan.local_schema_version is None else f"v{plan.local_schema_version}"
    api = "-" if plan.api_schema_version is None else f"v{plan.api_schema_version}"
    return (
        f"{s.table}: {PLAN_WORDS[plan.action]} ({plan.reason}); watermark {s.watermark or '-'}, "
        f"lag {format_duration(_lag_seconds(s.watermark, now))}, {rows} rows, schema {local} local / {api} API"
    )
