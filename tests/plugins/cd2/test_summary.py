"""Merging per-table records and composing the notification (subject counts, lines, JSON facts)."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from cd2.config import Freshness
from cd2.contract import ChildError, ErrorCategory, Outcome, PlannedAction, TablePlan, TableResult
from cd2.summary import (
    UNSUMMARIZED,
    Notification,
    TableSummary,
    compose,
    summarize_records,
    summarize_table,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SYNC_OK = TableResult("canvas.a", Outcome.SYNCED, duration_seconds=2.0, rows=7,
                      watermark_before="2026-01-01T04:00:00Z", watermark_after="2026-01-01T08:00:00Z")  # fmt: skip
SYNC_NEEDS_INIT = TableResult("canvas.b", Outcome.INIT_NEEDED, duration_seconds=0.5)
INIT_OK = TableResult("canvas.b", Outcome.INITIALIZED, duration_seconds=61.0, rows=1000,
                      watermark_after="2026-01-01T10:00:00Z")  # fmt: skip
FAILED = TableResult("canvas.c", Outcome.FAILED, error=ChildError(
    ErrorCategory.PERMANENT, "NotFoundError", "no such table (check ...)\ntrace"))  # fmt: skip


def test_outcome_per_table():
    assert summarize_table("canvas.a", SYNC_OK, None).outcome == "synced"
    initialized = summarize_table("canvas.b", SYNC_NEEDS_INIT, INIT_OK)
    assert (initialized.outcome, initialized.rows, initialized.duration_seconds) == (
        "initialized",
        1000,
        61.5,
    )
    failed = summarize_table("canvas.c", SYNC_NEEDS_INIT, FAILED)
    assert failed.outcome == "failed" and failed.error == "NotFoundError: no such table (check ...)"
    assert summarize_table("canvas.d", FAILED, None).outcome == "failed"
    assert summarize_table("canvas.e", None, None).outcome == "skipped"
    assert summarize_table("canvas.f", SYNC_NEEDS_INIT, None).outcome == "failed"


def test_message_has_counts_lines_lag_and_json_facts():
    summaries = [
        summarize_table("canvas.a", SYNC_OK, None),
        summarize_table("canvas.b", SYNC_NEEDS_INIT, INIT_OK),
        summarize_table("canvas.c", SYNC_NEEDS_INIT, FAILED),
    ]
    note = compose(summaries, dag_id="cd2_replica", run_id="manual__x", now=NOW)
    assert (
        note.subject == "cd2_replica: NEEDS YOU (1: canvas.c); 1 synced, 1 initialized, 1 failed, 0 skipped"
    )
    assert "Run manual__x" in note.text and "Largest data lag: 4h00m00s" in note.text
    assert "canvas.a: synced in 2s, 7 rows" in note.text
    assert "canvas.b: initialized in 1m02s, 1000 rows" in note.text
    assert "canvas.c: failed in " in note.text and "NotFoundError: no such table" in note.text
    message = json.loads(note.sns_message())
    assert message["email"] == note.text == message["default"]
    facts = json.loads(message["sqs"])
    assert facts == json.loads(message["lambda"]) == note.facts
    assert facts["counts"] == {"synced": 1, "initialized": 1, "failed": 1, "skipped": 0}
    assert facts["max_lag_seconds"] == 4 * 3600 and facts["run_id"] == "manual__x"
    assert [t["table"] for t in facts["tables"]] == ["canvas.a", "canvas.b", "canvas.c"]


def test_nothing_to_do_and_early_problem_are_said():
    empty = compose([], dag_id="cd2_replica", run_id="r", now=NOW)
    assert empty.subject == "cd2_replica: nothing needs you; nothing to do" and "nothing to do" in empty.text
    broken = compose(
        [], dag_id="cd2_replica", run_id="r", now=NOW, problem="param 'tables': 'x' matches no table"
    )
    assert "FAILED" in broken.subject and "'x' matches no table" in broken.text


def test_a_busy_table_and_views_needing_a_person_are_told_but_not_failed():
    busy = TableResult(
        "canvas.d",
        Outcome.BUSY,
        reason="worked on by cd2_replica scheduled__x since 2026-01-01T06:00:00+00:00",
    )
    views = TableResult("canvas.a", Outcome.SYNCED, duration_seconds=2.0,
                        views_needing_person=["reports.v_x (saved in cd2_replica.saved_views: column gone)"])  # fmt: skip
    summaries = [summarize_table("canvas.d", busy, None), summarize_table("canvas.a", views, None)]
    assert [s.outcome for s in summaries] == ["busy", "synced"]
    note = compose(summaries, dag_id="cd2_replica", run_id="manual__x", now=NOW)
    # busy is not a failure; a view that could not be recreated needs a person
    assert (
        note.subject
        == "cd2_replica: NEEDS YOU (1: canvas.a); 1 synced, 0 initialized, 0 failed, 0 skipped, 1 busy"
    )
    assert [i["table"] for i in note.facts["needs_you"]] == ["canvas.a"]
    assert "cd2_replica.saved_views" in note.facts["needs_you"][0]["action"]
    assert (
        "canvas.d: busy in - (busy: worked on by cd2_replica scheduled__x since 2026-01-01T06:00" in note.text
    )
    assert "canvas.a: synced in 2s (views needing a person: reports.v_x (saved in" in note.text
    assert note.facts["counts"]["busy"] == 1 and note.facts["counts"]["failed"] == 0


def test_a_server_warning_reaches_the_text_and_facts_once():
    warning = "The target PostgreSQL server is version 15.18, older than 16.3"
    old = [
        summarize_table(label, TableResult(label, Outcome.SYNCED, server_warning=warning), None)
        for label in ("canvas.a", "canvas.b")
    ]
    note = compose(old, dag_id="cd2_replica", run_id="r", now=NOW)
    assert note.text.count(f"Warning: {warning}") == 1
    assert note.facts["warnings"] == [warning]
    assert [t["warning"] for t in note.facts["tables"]] == [warning, warning]
    current = summarize_table("canvas.a", TableResult("canvas.a", Outcome.SYNCED), None)
    assert compose([current], dag_id="d", run_id="r", now=NOW).facts["warnings"] == []


STALE_SYNC = TableResult("canvas.old", Outcome.SYNCED, duration_seconds=1.0, rows=0,
                         watermark_before="2025-12-30T12:00:00Z", watermark_after="2025-12-30T12:00:00Z")  # fmt: skip
TRANSIENT = TableResult("canvas.flaky", Outcome.FAILED, error=ChildError(
    ErrorCategory.TRANSIENT, "ProcessingError", "job failed on the server"))  # fmt: skip


def test_a_stale_and_a_failed_table_open_the_subject_and_text_with_the_action_for_each():
    summaries = [
        summarize_table("canvas.a", SYNC_OK, None),
        summarize_table("canvas.c", SYNC_NEEDS_INIT, FAILED),
        summarize_table("canvas.old", STALE_SYNC, None),
    ]
    note = compose(summaries, dag_id="cd2_replica", run_id="r", now=NOW, freshness=Freshness(12.0))
    assert note.subject.startswith("cd2_replica: NEEDS YOU (2: canvas.c, canvas.old)")
    opening = note.text.splitlines()[:3]
    assert opening[0] == "NEEDS YOU (2):"
    assert opening[1].startswith("- canvas.c: failed (permanent): NotFoundError: no such table")
    assert "Action: fix what the error names, then clear this table's table.sync" in opening[1]
    assert opening[2].startswith("- canvas.old: stale: data 2d00h old, bound 12h. Action: ")
    assert "raise its freshness_hours" in opening[2]
    assert [(i["table"], i["lag_seconds"]) for i in note.facts["needs_you"]] == [
        ("canvas.c", None),
        ("canvas.old", 48 * 3600),
    ]
    stale = {t["table"]: t["stale"] for t in note.facts["tables"]}
    assert stale == {"canvas.a": False, "canvas.c": False, "canvas.old": True}


def test_per_table_freshness_override_and_transient_action():
    summaries = [
        summarize_table("canvas.old", STALE_SYNC, None),
        summarize_table("canvas.flaky", TRANSIENT, None),
    ]
    relaxed = Freshness(12.0, overrides=(("canvas.old", 72.0),))
    note = compose(summaries, dag_id="cd2_replica", run_id="r", now=NOW, freshness=relaxed)
    assert note.subject.startswith("cd2_replica: NEEDS YOU (1: canvas.flaky)")
    assert "failed (transient): ProcessingError" in note.text and "retries did not get past it" in note.text


def test_a_healthy_run_says_plainly_nothing_needs_a_person():
    note = compose([summarize_table("canvas.a", SYNC_OK, None)], dag_id="cd2_replica", run_id="r", now=NOW)
    assert note.subject == "cd2_replica: nothing needs you; 1 synced, 0 initialized, 0 failed, 0 skipped"
    assert note.text.startswith("Nothing needs you:")
    assert note.facts["needs_you"] == []


def test_a_problem_before_any_table_needs_you():
    note = compose(
        [], dag_id="cd2_replica", run_id="r", now=NOW, problem="Variable cd2_config is not valid JSON"
    )
    assert note.subject.startswith("cd2_replica: NEEDS YOU (1: the run); FAILED before any table ran")


def test_a_plan_run_says_so_and_tells_what_a_run_would_do_per_table():
    plans = {
        "canvas.a": TablePlan(
            PlannedAction.SYNC, "schema change: version 1 -> 2, applied by the sync", 30, 1, 2
        ),
        "canvas.b": TablePlan(PlannedAction.INIT, "not in the replica", None, None, 1),
        "canvas.c": TablePlan(PlannedAction.REINIT, "force_reinit", 5, 1, 1),
    }
    skipped = TableResult("x", Outcome.SKIPPED, reason="a plan run changes nothing")
    summaries = [
        summarize_table(
            label,
            TableResult(label, Outcome.PLANNED, reason=plan.reason, watermark_before=(
                "2026-01-01T06:00:00Z" if plan.rows else None), plan=plan),
            skipped,
        )
        for label, plan in plans.items()
    ] + [summarize_table("canvas.d", FAILED, None)]  # fmt: skip
    assert [s.outcome for s in summaries] == ["planned", "planned", "planned", "failed"]
    note = compose(summaries, dag_id="cd2_replica", run_id="r1", now=NOW, plan=True)
    assert note.subject.startswith("cd2_replica: PLAN, nothing changed; NEEDS YOU (1: canvas.d); ")
    assert "NEEDS YOU (1: canvas.d); 1 failed, 1 init, 1 reinit, 1 sync" in note.subject
    assert "PLAN run r1 of cd2_replica: no table was changed and no job created." in note.text
    assert (
        "canvas.a: would sync (schema change: version 1 -> 2, applied by the sync); "
        "watermark 2026-01-01T06:00:00Z, lag 6h00m00s, 30 rows, schema v1 local / v2 API"
    ) in note.text
    assert (
        "canvas.b: would init (not in the replica); watermark -, lag -, - rows, schema - local / v1 API"
        in (note.text)
    )
    assert "canvas.d: failed" in note.text
    assert note.facts["plan"] is True
    assert note.facts["planned"] == {"init": 1, "reinit": 1, "sync": 1, "nothing": 0}
    assert note.facts["counts"] == {"planned": 3, "failed": 1, "skipped": 0}
    assert json.loads(json.dumps(note.facts))["tables"][2]["plan"]["action"] == "reinit"
    ordinary = compose(summaries[:1], dag_id="cd2_replica", run_id="r2", now=NOW)
    assert ordinary.facts["plan"] is False and "PLAN" not in ordinary.subject


def test_a_log_tables_reinit_says_the_rows_it_kept_and_a_sync_the_rows_it_pruned():
    reinit = TableResult("canvas_logs.web_logs", Outcome.INITIALIZED, duration_seconds=3.0, rows=900,
                         rows_kept=0, watermark_after="2026-01-01T10:00:00Z")  # fmt: skip
    pruned = TableResult("canvas_logs.other_logs", Outcome.SYNCED, duration_seconds=1.0, rows=5,
                         rows_pruned=1234, watermark_after="2026-01-01T10:00:00Z")  # fmt: skip
    needed = TableResult("canvas_logs.web_logs", Outcome.INIT_NEEDED, duration_seconds=0.1)
    summaries = [
        summarize_table("canvas_logs.web_logs", needed, replace(reinit, rows_kept=0)),
        summarize_table("canvas_logs.web_logs", needed, replace(reinit, rows_kept=812)),
        summarize_table("canvas_logs.other_logs", pruned, None),
        summarize_table("canvas.a", SYNC_OK, None),
    ]
    note = compose(summaries[1:], dag_id="cd2_replica", run_id="r", now=NOW)
    assert "canvas_logs.web_logs: initialized in 3s, 900 rows, 812 kept from the previous copy" in note.text
    assert "canvas_logs.other_logs: synced in 1s, 5 rows, 1234 pruned (keep_days)" in note.text
    line_a = next(line for line in note.text.splitlines() if line.startswith("canvas.a:"))
    assert "kept" not in line_a and "pruned" not in line_a
    facts = {t["table"]: t for t in note.facts["tables"]}
    assert facts["canvas_logs.web_logs"]["rows_kept"] == 812
    assert facts["canvas_logs.other_logs"]["rows_pruned"] == 1234
    assert ", 0 kept from the previous copy" in compose(summaries[:1], dag_id="d", run_id="r", now=NOW).text

    plan = TablePlan(PlannedAction.REINIT, "force_reinit", 900, 1, 1, rows_kept=812)
    planned = TableResult("canvas_logs.web_logs", Outcome.PLANNED, reason=plan.reason, plan=plan)
    skipped = TableResult("canvas_logs.web_logs", Outcome.SKIPPED, reason="a plan run changes nothing")
    note = compose([summarize_table("canvas_logs.web_logs", planned, skipped)], dag_id="d", run_id="r",
                   now=NOW, plan=True)  # fmt: skip
    assert "would keep 812 rows the API no longer serves" in note.text
    assert note.facts["tables"][0]["plan"]["rows_kept"] == 812


# -- compose is total, and fits SNS, whatever the records hold --------------------------------------------

NAMESPACES = ("canvas", "canvas_logs", "catalog", "new_quizzes")
# Labels as the API names tables: PostgreSQL identifiers (at most 63 characters) in a known namespace.
LABELS = st.builds(
    "{}.{}".format,
    st.sampled_from(NAMESPACES),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=63),
)
# Short text of any characters, or a long run of one (up to the 20 kB of an error no one shortened).
TEXTS = st.one_of(
    st.text(max_size=60),
    st.builds(lambda char, count: char * count, st.characters(), st.integers(0, 20_000)),
)
WATERMARKS = st.one_of(
    st.none(),
    st.datetimes(timezones=st.sampled_from([UTC, None])).map(lambda d: d.isoformat()),
    st.text(max_size=30),
)
NUMBERS = st.one_of(st.none(), st.integers(-(2**63), 2**63), st.floats(), st.booleans(), st.text(max_size=3))
CHILD_ERRORS = st.fixed_dictionaries(
    {
        "category": st.one_of(st.sampled_from(list(ErrorCategory)), st.text(max_size=8)),
        "type": TEXTS,
        "message": TEXTS,
    },
    optional={"sqlstate": st.one_of(st.none(), st.text(max_size=5))},
)
PLANS = st.fixed_dictionaries(
    {"action": st.one_of(st.sampled_from(list(PlannedAction)), st.text(max_size=5)), "reason": TEXTS},
    optional={"rows": NUMBERS, "local_schema_version": NUMBERS, "api_schema_version": NUMBERS},
)
VALID_RECORDS = st.fixed_dictionaries(
    {"label": LABELS, "outcome": st.sampled_from(list(Outcome))},
    optional={
        "reason": st.one_of(st.none(), TEXTS),
        "reinit": st.booleans(),
        "rows": st.one_of(st.none(), st.integers(0, 10**12)),
        "duration_seconds": st.one_of(st.none(), st.floats(0, 10**6)),
        "watermark_before": WATERMARKS,
        "watermark_after": WATERMARKS,
        "schema_version": st.one_of(st.none(), st.integers(0, 100)),
        "peak_rss_mb": st.one_of(st.none(), st.floats(0, 10**5)),
        "error": st.one_of(st.none(), CHILD_ERRORS),
        "views_needing_person": st.one_of(st.none(), st.lists(TEXTS, max_size=3)),
        "server_warning": st.one_of(st.none(), TEXTS),
        "plan": st.one_of(st.none(), PLANS),
    },
)
RECORDS = st.one_of(
    st.none(),
    VALID_RECORDS,
    VALID_RECORDS.map(lambda record: record | {"row_count": 3}),  # a field the contract does not know
    VALID_RECORDS.map(lambda record: {k: v for k, v in record.items() if k != "outcome"}),
    st.fixed_dictionaries({"label": LABELS, "outcome": st.just("synced"), "rows": NUMBERS}),  # mistyped
    st.dictionaries(st.text(max_size=8), NUMBERS, max_size=3),
    NUMBERS,
    st.lists(NUMBERS, max_size=3),
)
SNS_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


def check_fits_sns(note: Notification) -> dict:
    """SNS's limits: one printable line of a subject under 100 characters; the whole message (every
    protocol's part) within 256 KB; every part valid JSON where JSON is promised. Returns the facts."""
    assert len(note.subject) <= 99 and note.subject.isprintable(), note.subject
    message = note.sns_message()
    assert len(message.encode()) <= 256 * 1024

    def no_constants(name: str):
        raise AssertionError(f"{name} is not JSON")

    envelope = json.loads(message, parse_constant=no_constants)
    assert envelope["default"] == envelope["email"] == note.text
    assert envelope["sqs"] == envelope["lambda"] == envelope["https"]
    facts = json.loads(envelope["sqs"], parse_constant=no_constants)
    assert facts == json.loads(json.dumps(note.facts))
    return facts


def check_every_table_is_accounted_for(note: Notification, summaries, problem: str | None) -> None:
    """Every table is in the facts or counted as left out; every failed or unsummarized one is a NEEDS
    YOU item of the text, named; the run fails exactly when something failed or could not be told (a
    record read, but its line not: a watermark that is no time)."""
    facts = note.facts
    assert len(facts["tables"]) + facts["tables_left_out"] == len(summaries)
    opening = note.text.split("\n\n")[0].splitlines()
    needing = len(facts["needs_you"]) + facts["needs_you_left_out"]
    assert opening[0] == (f"NEEDS YOU ({needing}):" if needing else opening[0]), opening[0]
    assert needing == sum(line.startswith("- ") for line in opening)
    broken = [s.table for s in summaries if s.outcome in (Outcome.FAILED, UNSUMMARIZED)]
    for label in broken:
        assert any(
            line.startswith((f"- {label}: failed (", f"- {label}: could not be summarized"))
            for line in opening
        ), label
    untold = [line for line in opening if line.startswith("- ") and ": could not be summarized" in line]
    assert facts["run_failed"] is (problem is not None or bool(broken or untold))
    assert problem is None or any(line.startswith("- the run: ") for line in opening)


@SNS_SETTINGS
@given(
    tables=st.lists(st.tuples(LABELS, RECORDS, RECORDS), max_size=25),
    problem=st.one_of(st.none(), TEXTS),
    plan=st.booleans(),
    bound=st.floats(0.01, 1e6),
)
@example(  # read as synced, but its watermark is no time: told as unsummarized, and the run fails
    tables=[("canvas.0", {"label": "canvas.0", "outcome": Outcome.SYNCED, "watermark_before": "0"}, None)],
    problem=None,
    plan=False,
    bound=1.0,
)
@example(tables=[], problem=" ", plan=False, bound=1.0)  # a blank problem still fails the run, told
def test_any_records_make_a_message_that_fits_sns_and_names_every_failure(tables, problem, plan, bound):
    summaries = [summarize_records(label, sync, init) for label, sync, init in tables]
    note = compose(
        summaries,
        dag_id="cd2_replica",
        run_id="r",
        now=NOW,
        problem=problem,
        freshness=Freshness(bound),
        plan=plan,
    )
    check_fits_sns(note)
    check_every_table_is_accounted_for(note, summaries, problem)


@SNS_SETTINGS
@given(tables=st.lists(st.tuples(st.text(max_size=40), RECORDS, RECORDS), max_size=10))
def test_labels_of_any_text_still_make_a_message(tables):
    summaries = [summarize_records(label, sync, init) for label, sync, init in tables]
    note = compose(summaries, dag_id="cd2_replica", run_id="r", now=NOW)
    assert len(check_fits_sns(note)["tables"]) + note.facts["tables_left_out"] == len(tables)


def test_a_record_the_contract_rejects_is_named_and_needs_a_person():
    rejected = summarize_records(
        "canvas.users", {"label": "canvas.users", "outcome": "synced", "rows": "7"}, None
    )
    note = compose([rejected, summarize_table("canvas.a", SYNC_OK, None)], dag_id="d", run_id="r", now=NOW)
    assert note.text.splitlines()[1].startswith(
        "- canvas.users: could not be summarized: ContractError: TableResult: field 'rows' must be int | None"
    )
    assert "canvas.a: synced in 2s, 7 rows" in note.text
    assert note.facts["counts"]["unsummarized"] == 1 and note.facts["run_failed"] is True
    unreadable = compose([summarize_table("canvas.x", replace(SYNC_OK, watermark_after="yesterday"), None)],
                         dag_id="d", run_id="r", now=NOW)  # fmt: skip
    assert "- canvas.x: could not be summarized: its line could not be told: ValueError" in unreadable.text


def failing(index: int, category: ErrorCategory) -> TableSummary:
    label = f"canvas.master_courses_child_content_tags_{index:04d}"
    error = ChildError(category, "QueryException", "ü" * 20_000)  # unicode: four times the JSON escapes
    return summarize_table(label, TableResult(label, Outcome.FAILED, error=error), None)


def test_a_thousand_failed_tables_with_20_kb_errors_each_keep_every_needs_you_item():
    summaries = [failing(index, list(ErrorCategory)[index % 4]) for index in range(1000)]
    note = compose(summaries, dag_id="cd2_replica", run_id="r", now=NOW)
    facts = check_fits_sns(note)
    opening = note.text.split("\n\n")[0].splitlines()
    assert opening[0] == "NEEDS YOU (1000):"
    for summary in summaries:
        category = ErrorCategory(summary.error_category)
        assert any(line.startswith(f"- {summary.table}: failed ({category.title})") for line in opening)
    for category in ErrorCategory:  # each action told once, below the items
        assert sum(line.endswith(f"{category.action}.") for line in opening) == 1
    assert facts["needs_you_left_out"] + len(facts["needs_you"]) == 1000
    assert facts["tables_left_out"] + len(facts["tables"]) == 1000 and facts["tables_left_out"] > 0
    assert note.log_text.count("ü" * 1900) == 2000  # the log keeps each error (item and line) at length


def test_a_thousand_healthy_tables_are_counted_and_the_cut_is_said():
    summaries = [
        summarize_table(f"canvas.t{index:04d}", replace(SYNC_OK, label=f"canvas.t{index:04d}"), None)
        for index in range(1000)
    ]
    note = compose(summaries, dag_id="cd2_replica", run_id="r", now=NOW)
    facts = check_fits_sns(note)
    assert note.subject == "cd2_replica: nothing needs you; 1000 synced, 0 initialized, 0 failed, 0 skipped"
    assert facts["counts"]["synced"] == 1000 and facts["needs_you"] == []
    listed = sum(line.startswith("canvas.t") for line in note.text.splitlines())
    assert listed == 1000  # the JSON facts give way first
    assert facts["tables_left_out"] == 1000 - len(facts["tables"]) > 0
