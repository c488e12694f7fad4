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

from cd2.contract import Outcome, TableResult

# What a table's line in the notification can say, in the order the counts are told.
OUTCOMES = (Outcome.SYNCED, Outcome.INITIALIZED, Outcome.FAILED, Outcome.SKIPPED)
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
    if sync.outcome in (Outcome.FAILED, Outcome.BUSY):
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
    )


def _note(record: TableResult) -> str | None:
    notes = [f"busy: {record.reason}"] if record.outcome is Outcome.BUSY else []
    if record.views_needing_person:
        notes.append("views needing a person: " + "; ".join(record.views_needing_person))
    return " | ".join(notes) or None


def _lag_seconds(watermark: str | None, now: datetime) -> float | None:
    if not watermark:
        return None
    moment = datetime.fromisoformat(watermark.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (now - moment).total_seconds())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
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
) -> Notification:
    """The run's notification: counts in the subject, one line per table in the text, the same as facts.

    ``problem`` reports a failure before any table ran (e.g. the table list could not be made).
    """
    counts = Counter(s.outcome for s in summaries)
    lags = [lag for s in summaries if (lag := _lag_seconds(s.watermark, now)) is not None]
    max_lag = max(lags) if lags else None
    told = OUTCOMES + tuple(o for o in OCCASIONAL_OUTCOMES if counts[o])
    count_text = ", ".join(f"{counts[o]} {o}" for o in told)
    if problem:
        subject = f"{dag_id}: FAILED before any table ran"
    elif not summaries:
        subject = f"{dag_id}: nothing to do"
    else:
        subject = f"{dag_id}: {count_text}"
    lines = [f"Run {run_id} of {dag_id}: {count_text}."]
    if problem:
        lines.append(f"Problem: {first_line(problem)}")
    elif not summaries:
        lines.append("No table matched the configuration and params: nothing to do.")
    lines.append(f"Largest data lag: {_duration(max_lag)}" if max_lag is not None else "Largest data lag: -")
    warnings = sorted({s.warning for s in summaries if s.warning})
    lines += [f"Warning: {warning}" for warning in warnings]
    lines.append("")
    for s in summaries:
        rows = f", {s.rows} rows" if s.rows is not None else ""
        error = f": {s.error}" if s.error else ""
        error += f" ({s.note})" if s.note else ""
        lines.append(f"{s.table}: {s.outcome} in {_duration(s.duration_seconds)}{rows}{error}")
    facts = {
        "dag_id": dag_id,
        "run_id": run_id,
        "counts": {o: counts[o] for o in told},
        "max_lag_seconds": round(max_lag, 1) if max_lag is not None else None,
        "problem": first_line(problem),
        "warnings": warnings,
        "tables": [asdict(s) for s in summaries],
    }
    return Notification(subject[:SUBJECT_LIMIT], "\n".join(lines) + "\n", facts)
