"""What a run did, table by table, told as one message that fits SNS whatever the records hold.

A *record* is the :class:`cd2.contract.TableResult` each table task returns (its XCom), pushed in the
same shape when the task failed or skipped itself. :func:`summarize_records` merges a table's two raw
records into its :class:`TableSummary`; :func:`compose` tells every summary as a :class:`Notification`.
Both are total: a table whose records or line cannot be read is named "could not be summarized: <why>"
and needs a person, and the message is shortened, most telling parts kept, until it fits SNS's limits.
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
# A table whose records or line could not be read: it needs a person, and its run fails.
UNSUMMARIZED = "unsummarized"
# SNS: a subject "less than 100 characters long" without line breaks or control characters; the whole
# Message (every protocol's text together) at most 256 KB.
SUBJECT_LIMIT = 99
MESSAGE_LIMIT_BYTES = 256 * 1024
# Distinct warnings told (they are normally one: the target server's version).
WARNINGS_TOLD = 10


@dataclass(frozen=True)
class TableSummary:
    """One table's line in the notification (``table`` is its label, ``namespace.table``)."""

    table: str
    outcome: str  # an Outcome, or UNSUMMARIZED
    duration_seconds: float | None = None
    rows: int | None = None
    watermark: str | None = None
    error: str | None = None  # UNSUMMARIZED: why
    note: str | None = None  # busy: who holds the table; views that need a person
    warning: str | None = None  # e.g. the target server is older than Instructure supports
    error_category: ErrorCategory | None = None
    views_needing_person: list[str] | None = None
    plan: TablePlan | None = None  # a plan run: what a run would do
    rows_kept: int | None = None  # a log table's re-init kept these rows the API no longer serves
    rows_pruned: int | None = None  # deleted as older than keep_days


@dataclass(frozen=True)
class Notification:
    """The run's message: ``text`` and ``facts`` fit SNS; ``log_text`` is the text before shortening."""

    subject: str
    text: str
    facts: dict[str, Any]
    log_text: str = ""

    def sns_message(self) -> str:
        """The ``Message`` for ``MessageStructure=json``: text for email, the facts as JSON for SQS/Lambda."""
        return _envelope(self.text, self.facts)


def _envelope(text: str, facts: dict[str, Any]) -> str:
    told = json.dumps(facts, sort_keys=True, ensure_ascii=False, allow_nan=False)
    return json.dumps(
        {"default": text, "email": text, "sqs": told, "lambda": told, "https": told}, ensure_ascii=False
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
            error_category=ErrorCategory.UNKNOWN,
        )
    return _summary(label, Outcome.SYNCED, sync, sync)


def summarize_records(label: Any, sync: Any, init: Any) -> TableSummary:
    """:func:`summarize_table` from a table's raw records (its XComs, ``None`` where a task did not
    run); a record the contract rejects, or anything else that goes wrong, is told as unsummarized."""
    try:
        return summarize_table(
            str(label), *(None if raw is None else TableResult.from_dict(raw) for raw in (sync, init))
        )
    except Exception as error:
        return unsummarized(label, error)


def unsummarized(label: Any, why: BaseException | str) -> TableSummary:
    """A table that could not be summarized, and why."""
    reason = why if isinstance(why, str) else f"{type(why).__name__}: {why}"
    return TableSummary(str(label), UNSUMMARIZED, error=reason)


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
        rows_kept=last.rows_kept,
        rows_pruned=last.rows_pruned,
    )


def _note(record: TableResult) -> str | None:
    notes = [f"busy: {record.reason}"] if record.outcome is Outcome.BUSY else []
    if record.views_needing_person:
        notes.append("views needing a person: " + "; ".join(record.views_needing_person))
    return " | ".join(notes) or None


VIEWS_ACTION = (
    "recreate them by hand from their saved definition in cd2_replica.saved_views (the column they used "
    "changed), then delete the saved row"
)
STALE_ACTION = (
    "the last sync succeeded but the API has no newer data: check Instructure's status page; if this "
    "table is expected to lag, raise its freshness_hours in cd2_config"
)
UNSUMMARIZED_ACTION = (
    "read the task logs of this table's table.sync and table.init: the notification could not tell "
    "what happened to it; report this"
)
RUN_PROBLEM_ACTION = "fix the configuration or connection it names"
UNTOLD_RUN_PROBLEM = "the run failed before any table ran, without a message (see list_tables' log)"


@dataclass(frozen=True)
class NeedsYou:
    """One thing the product could not do alone: which table (or None for the run), what, what to do.

    ``kind`` says what it is ("failed (permanent)", "stale"); ``detail`` the particulars, shortened
    first when the message must fit.
    """

    table: str | None
    kind: str
    detail: str | None
    action: str
    lag_seconds: float | None = None

    def problem(self, chars: int | None = None) -> str:
        detail = self.detail if chars is None else _shorten(self.detail, chars)
        return ": ".join(part for part in (self.kind, detail) if part)


def failed_kind(category: ErrorCategory | None) -> str:
    """How a failure is named: ``failed (permanent)``, ``failed (unforeseen)``."""
    return f"failed ({category.title})" if category else "failed"


def _needs_you(s: TableSummary, lag: float | None, bound_hours: float) -> list[NeedsYou]:
    items = []
    if s.outcome == UNSUMMARIZED:
        items.append(NeedsYou(s.table, "could not be summarized", s.error, UNSUMMARIZED_ACTION))
    elif s.outcome == Outcome.FAILED:
        category = ErrorCategory(s.error_category) if s.error_category else ErrorCategory.UNKNOWN
        items.append(NeedsYou(s.table, failed_kind(category), s.error, category.action, lag))
    elif lag is not None and lag > bound_hours * 3600:
        detail = f"data {format_duration(lag)} old, bound {bound_hours:g}h"
        items.append(NeedsYou(s.table, "stale", detail, STALE_ACTION, lag))
    if s.views_needing_person:
        items.append(
            NeedsYou(
                s.table,
                "views that could not be recreated",
                "; ".join(s.views_needing_person),
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


def _shorten(text: str | None, chars: int) -> str | None:
    """``text`` cut to ``chars`` characters, the cut marked."""
    if text is None or len(text) <= chars:
        return text
    return text[:chars] + "..."


@dataclass(frozen=True)
class _Told:
    """One table as the message tells it, worked out once (and guarded) before the message is put
    together at any level of detail."""

    summary: TableSummary
    lag: float | None
    stale: bool
    needs: list[NeedsYou]

    def line(self, chars: int) -> str:
        s = self.summary
        if s.outcome == UNSUMMARIZED:
            return f"{s.table}: could not be summarized: {_shorten(s.error, chars)}"
        if s.plan is not None:
            return _plan_line(s, s.plan, self.lag, chars)
        rows = f", {s.rows} rows" if s.rows is not None else ""
        if s.rows_kept is not None:
            rows += f", {s.rows_kept} kept from the previous copy (the API no longer serves them)"
        rows += f", {s.rows_pruned} pruned (keep_days)" if s.rows_pruned else ""
        error = f": {_shorten(s.error, chars)}" if s.error else ""
        error += f" ({_shorten(s.note, chars)})" if s.note else ""
        return f"{s.table}: {s.outcome} in {format_duration(s.duration_seconds)}{rows}{error}"

    def facts(self, chars: int) -> dict[str, Any]:
        told = asdict(self.summary) | {"lag_seconds": _rounded(self.lag), "stale": self.stale}
        return {key: value if key == "table" else _shortened(value, chars) for key, value in told.items()}


def _tell(s: TableSummary, freshness: Freshness, now: datetime) -> _Told:
    """The table as the message tells it; a table that cannot be told is told as unsummarized."""
    try:
        lag = _lag_seconds(s.watermark, now)
        bound = freshness.hours_for(s.table)
        told = _Told(s, lag, lag is not None and lag > bound * 3600, _needs_you(s, lag, bound))
        told.line(0), json.dumps(told.facts(0), allow_nan=False)  # what cannot be told fails here
        return told
    except Exception as error:
        fallback = unsummarized(s.table, f"its line could not be told: {type(error).__name__}: {error}")
        return _Told(fallback, None, False, _needs_you(fallback, None, 0.0))


def _shortened(value: Any, chars: int) -> Any:
    """Every string in ``value`` (a JSON-like value) cut to ``chars``."""
    if isinstance(value, str):
        return _shorten(value, chars)
    if isinstance(value, dict):
        return {key: _shortened(item, chars) for key, item in value.items()}
    if isinstance(value, list):
        return [_shortened(item, chars) for item in value]
    return value


@dataclass(frozen=True)
class _Detail:
    """How much the message tells of each table; :data:`_DETAIL_LEVELS` are tried until one fits."""

    chars: int  # the longest error, note or problem text
    lines: int | None  # tables whose line the text lists (None: all)
    facts: int | None  # tables and NEEDS YOU items the JSON facts list (None: all)
    actions_once: bool = False  # each NEEDS YOU item points to its action, told once below the items


# The JSON facts give way first (the text is what people read), then the texts, then the table lines.
_DETAIL_LEVELS = (
    _Detail(2000, None, None),
    _Detail(500, None, None),
    _Detail(500, None, 100),
    _Detail(300, None, 20),
    _Detail(200, 200, 20, actions_once=True),
    _Detail(100, 50, 0, actions_once=True),
    _Detail(40, 0, 0, actions_once=True),
    _Detail(0, 0, 0, actions_once=True),
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
    per table; the same as facts. It fits SNS: shortened level by level (texts, then the tables listed,
    each cut marked) until it does; every NEEDS YOU item stays in the text.

    ``problem`` reports a failure before any table ran (e.g. the table list could not be made); a blank
    one still does.
    ``plan``: a plan run, told as such, with what a run would do per table instead of what was done.
    """
    freshness = freshness or Freshness()
    told = [_tell(s, freshness, now) for s in summaries]
    run_problem = None if problem is None else first_line(problem) or UNTOLD_RUN_PROBLEM
    attention = [NeedsYou(None, "", run_problem, RUN_PROBLEM_ACTION)] if run_problem else []
    attention += [item for t in told for item in t.needs]
    counts = Counter(t.summary.outcome for t in told)
    base = PLAN_OUTCOMES if plan else OUTCOMES
    words = base + tuple(dict.fromkeys(o for o in counts if o not in base))
    count_text = ", ".join(f"{counts[o]} {o}" for o in words)
    planned = Counter(t.summary.plan.action for t in told if t.summary.plan)
    if plan:
        failed = f"{counts[Outcome.FAILED]} failed, " if counts[Outcome.FAILED] else ""
        count_text = failed + ", ".join(f"{planned[a]} {a}" for a in PlannedAction)
    status = "FAILED before any table ran" if run_problem else "nothing to do" if not told else count_text
    prefix = "PLAN, nothing changed; " if plan else ""
    if attention:
        named = ", ".join(item.table or "the run" for item in attention)
        subject = f"{dag_id}: {prefix}NEEDS YOU ({len(attention)}: {named}); {status}"
    else:
        subject = f"{dag_id}: {prefix}nothing needs you; {status}"
    lags = [t.lag for t in told if t.lag is not None]
    warnings = sorted({t.summary.warning for t in told if t.summary.warning})
    run = _Run(dag_id, run_id, plan, run_problem, told, attention, count_text, warnings)
    facts_common = {
        "dag_id": dag_id,
        "run_id": run_id,
        "plan": plan,
        "counts": {o: counts[o] for o in words},
        "planned": {a: planned[a] for a in PlannedAction} if plan else None,
        "max_lag_seconds": _rounded(max(lags)) if lags else None,
        "run_failed": bool(run_problem or counts[Outcome.FAILED] or counts[UNSUMMARIZED]),
    }
    log_text = run.text(_DETAIL_LEVELS[0])
    for detail in _DETAIL_LEVELS:
        text, facts = run.text(detail), facts_common | run.facts(detail)
        if _fits(text, facts):
            break
    else:
        text = _cut_to_fit(text, facts)
    return Notification(_subject(subject), text, facts, log_text)


@dataclass(frozen=True)
class _Run:
    """The parts of a run's message, put together at a level of detail."""

    dag_id: str
    run_id: str
    plan: bool
    problem: str | None
    told: list[_Told]
    attention: list[NeedsYou]
    count_text: str
    warnings: list[str]

    def text(self, detail: _Detail) -> str:
        lines = self._opening(detail)
        if self.plan:
            lines += [
                "",
                f"PLAN run {self.run_id} of {self.dag_id}: no table was changed and no job created.",
            ]
            lines.append(f"What a run would do: {self.count_text}.")
        else:
            lines += ["", f"Run {self.run_id} of {self.dag_id}: {self.count_text}."]
        if self.problem:
            lines.append(f"Problem: {_shorten(self.problem, max(detail.chars, 200))}")
        elif not self.told:
            lines.append("No table matched the configuration and params: nothing to do.")
        lags = [t.lag for t in self.told if t.lag is not None]
        lines.append(f"Largest data lag: {format_duration(max(lags)) if lags else '-'}")
        lines += [f"Warning: {_shorten(w, detail.chars)}" for w in self.warnings[:WARNINGS_TOLD]]
        if len(self.warnings) > WARNINGS_TOLD:
            lines.append(f"... and {len(self.warnings) - WARNINGS_TOLD} more warnings (in the facts)")
        lines.append("")
        listed = self.told if detail.lines is None else self.told[: detail.lines]
        lines += [t.line(detail.chars) for t in listed]
        if len(listed) < len(self.told):
            left = len(self.told) - len(listed)
            lines.append(
                f"... and {left} more tables, not listed to fit SNS: every line is in notify's task log."
            )
        return "\n".join(lines) + "\n"

    def _opening(self, detail: _Detail) -> list[str]:
        if not self.attention:
            if self.plan:
                return ["Nothing needs you: every table is within its freshness bound."]
            return ["Nothing needs you: every table replicated and is within its freshness bound."]
        lines = [f"NEEDS YOU ({len(self.attention)}):"]
        if not detail.actions_once:
            return lines + [
                f"- {item.table or 'the run'}: {item.problem(detail.chars)}. Action: {item.action}."
                for item in self.attention
            ]
        actions = {
            action: number for number, action in enumerate(dict.fromkeys(i.action for i in self.attention), 1)
        }
        lines += [
            f"- {item.table or 'the run'}: {item.problem(detail.chars)} [action {actions[item.action]}]"
            for item in self.attention
        ]
        return lines + ["Actions:"] + [f"[action {number}] {action}." for action, number in actions.items()]

    def facts(self, detail: _Detail) -> dict[str, Any]:
        tables = self.told if detail.facts is None else self.told[: detail.facts]
        items = self.attention if detail.facts is None else self.attention[: detail.facts]
        return {
            "problem": _shorten(self.problem, max(detail.chars, 200)),
            "warnings": [_shorten(w, detail.chars) for w in self.warnings[: detail.facts]],
            "needs_you": [_shortened(asdict(i) | {"problem": i.problem()}, detail.chars) for i in items],
            "needs_you_left_out": len(self.attention) - len(items),
            "tables": [t.facts(detail.chars) for t in tables],
            "tables_left_out": len(self.told) - len(tables),
        }


def _fits(text: str, facts: dict[str, Any]) -> bool:
    return len(_envelope(text, facts).encode()) <= MESSAGE_LIMIT_BYTES


def _cut_to_fit(text: str, facts: dict[str, Any]) -> str:
    """The longest start of ``text`` that fits with ``facts``, the cut said (the whole text is logged)."""
    marker = "\n... (cut to fit SNS's 256 KB: the whole text is in notify's task log)\n"
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if _fits(text[:middle] + marker, facts):
            low = middle
        else:
            high = middle - 1
    return text[:low] + marker


def _subject(text: str) -> str:
    """One line of printable characters, cut to SNS's limit (the cut marked)."""
    line = " ".join("".join(c if c.isprintable() else " " for c in text).split())
    return line if len(line) <= SUBJECT_LIMIT else line[: SUBJECT_LIMIT - 3] + "..."


def _plan_line(s: TableSummary, plan: TablePlan, lag: float | None, chars: int) -> str:
    """``canvas.users: would sync (initialized); watermark ..., lag ..., 30 rows, schema v1 local / v1 API``"""
    rows = "-" if plan.rows is None else str(plan.rows)
    local = "-" if plan.local_schema_version is None else f"v{plan.local_schema_version}"
    api = "-" if plan.api_schema_version is None else f"v{plan.api_schema_version}"
    kept = (
        f", would keep {plan.rows_kept} rows the API no longer serves" if plan.rows_kept is not None else ""
    )
    return (
        f"{s.table}: {PLAN_WORDS[plan.action]} ({_shorten(plan.reason, chars)}); watermark {s.watermark or '-'}, "
        f"lag {format_duration(lag)}, {rows} rows, schema {local} local / {api} API{kept}"
    )
