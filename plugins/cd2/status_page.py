"""The replica's status page in the Airflow UI: one row per replicated table, read-only.

Three parts, each testable alone: :func:`read_replica` (the target database's ``instructure_dap.table_sync``
and each table's row count), :func:`read_last_outcomes` (Airflow's metadata: each table's newest run of
the table tasks and their :class:`~cd2.contract.TableResult` XComs), and :func:`table_statuses` /
:func:`render_html` (merge, then plain server-rendered HTML). :func:`create_app` serves them as a FastAPI
app for the API server, behind Airflow's own authentication (a signed-in user who may read the DAG's task
instances and XComs). The plugin registration is ``plugins/cd2_status_plugin.py``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import psycopg2
from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.models.dagrun import DagRun
from airflow.models.taskinstance import TaskInstance
from airflow.models.xcom import XComModel
from airflow.sdk import Variable
from airflow.utils.state import State
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse
from psycopg2 import sql
from psycopg2.extensions import connection as PgConnection
from sqlalchemy import select
from sqlalchemy.orm import Session

from cd2.config import ConfigError, Freshness, parse_config
from cd2.connection_string import ssl_mode_from_extra
from cd2.contract import (
    APPEND_ONLY_NAMESPACES,
    TIME_COLUMN,
    ContractError,
    ErrorCategory,
    Outcome,
    TableRef,
    TableResult,
)
from cd2.dag_names import CONFIG_VARIABLE, DAG_ID, INIT_TASK_ID, SYNC_TASK_ID
from cd2.hooks.dap import DapHook
from cd2.summary import failed_kind, format_duration, summarize_table

URL_PREFIX = "/cd2-status"
# Runs looked back through for each table's last outcome (a table a run did not select keeps an older one).
RECENT_RUNS = 50
# Above this many rows (the planner's estimate) a table's count is the estimate: count(*) reads the table.
EXACT_COUNT_LIMIT = 1_000_000
COUNT_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class ReplicaTable:
    """A table's ``table_sync`` row and its row count (``rows_estimated``: the planner's estimate);
    ``oldest_row``: a log table's oldest ``timestamp`` (how far back its kept history reaches)."""

    table: str
    watermark: datetime
    schema_version: int
    rows: int | None
    rows_estimated: bool = False
    oldest_row: datetime | None = None


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


@dataclass(frozen=True)
class TableStatus:
    """One row of the page."""

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
            f"dags/{DAG_ID}/runs/{quote(self.run_id, safe='')}/tasks/{quote(self.task_id, safe='')}"
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


# -- the replica --------------------------------------------------------------------------------------


def read_replica(conn: PgConnection) -> dict[str, ReplicaTable]:
    """Every ``table_sync`` row with its table's row count (and a log table's oldest row), from an
    autocommit psycopg2 connection.

    A count that times out (``COUNT_TIMEOUT_MS``) is left unknown rather than failing the page.
    """
    with conn.cursor() as cur:
        cur.execute("SELECT to_regclass('instructure_dap.table_sync') IS NOT NULL")
        if not cur.fetchone()[0]:
            return {}
        cur.execute(
            """
            SELECT s.source_namespace, s.source_table, s.timestamp, s.schema_version,
                   coalesce(s.target_schema, 'public'), s.target_table, c.reltuples
            FROM instructure_dap.table_sync s
            LEFT JOIN pg_namespace n ON n.nspname = coalesce(s.target_schema, 'public')
            LEFT JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.target_table
                AND c.relkind IN ('r', 'p')
            ORDER BY 1, 2
            """
        )
        rows = cur.fetchall()
        cur.execute("SET statement_timeout = %s", (COUNT_TIMEOUT_MS,))
        found = {}
        for namespace, table, watermark, version, schema, target, estimate in rows:
            count, estimated = None, False
            if estimate is not None and estimate >= EXACT_COUNT_LIMIT:
                count, estimated = int(estimate), True
            elif estimate is not None:
                try:
                    cur.execute(
                        sql.SQL("SELECT count(*) FROM {}.{}").format(
                            sql.Identifier(schema), sql.Identifier(target)
                        )
                    )
                    count = cur.fetchone()[0]
                except psycopg2.errors.QueryCanceled:
                    pass
            oldest = None
            if estimate is not None and namespace in APPEND_ONLY_NAMESPACES:
                oldest = _oldest_row(cur, schema, target)
            label = TableRef(namespace, table).label
            found[label] = ReplicaTable(label, _utc(watermark), version, count, estimated, oldest)
    return found


def _oldest_row(cur: Any, schema: str, table: str) -> datetime | None:
    """The table's smallest ``TIME_COLUMN``; None when it has none, is empty or the query times out."""
    cur.execute(
        "SELECT true FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s AND NOT attisdropped",
        (sql.Identifier(schema, table).as_string(cur), TIME_COLUMN),
    )
    if cur.fetchone() is None:
        return None
    try:
        cur.execute(
            sql.SQL("SELECT min({}) FROM {}.{}").format(
                sql.Identifier(TIME_COLUMN), sql.Identifier(schema), sql.Identifier(table)
            )
        )
    except psycopg2.errors.QueryCanceled:
        return None
    oldest = cur.fetchone()[0]
    return _utc(oldest) if oldest is not None else None


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)  # the client writes naive UTC


def connect_replica(conn_id: str | None = None) -> PgConnection:
    """An autocommit psycopg2 connection to the ``cd2_postgres`` connection's database."""
    pg = DapHook.get_connection(conn_id or DapHook.default_postgres_conn_name)
    options: dict[str, Any] = {}
    if mode := ssl_mode_from_extra(pg.extra_dejson):
        options["sslmode"] = mode
    conn = psycopg2.connect(
        host=pg.host,
        port=pg.port or 5432,
        user=pg.login or None,
        password=pg.password or None,
        dbname=pg.schema,
        connect_timeout=10,
        application_name="cd2_status_page",
        **options,
    )
    conn.autocommit = True
    return conn


# -- Airflow's metadata ---------------------------------------------------------------------------------


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


# -- the page -------------------------------------------------------------------------------------------


def table_statuses(
    replica: Mapping[str, ReplicaTable],
    outcomes: Mapping[str, LastOutcome],
    freshness: Freshness,
    now: datetime,
) -> list[TableStatus]:
    """One row per table the replica or a run knows, sorted; stale when the watermark is older than
    the table's freshness bound (``cd2_config`` ``freshness_hours``)."""
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
            )
        )
    return statuses


def freshness_from_config(raw: Any) -> tuple[Freshness, str | None]:
    """The freshness bounds of the ``cd2_config`` Variable's value; the defaults and the error if invalid."""
    try:
        return parse_config(raw).freshness, None
    except ConfigError as error:
        return Freshness(), str(error)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1a1a1a; }
h1 { font-size: 1.3rem; margin: 0 0 .3rem; }
p.facts { color: #555; margin: 0 0 1rem; }
table { border-collapse: collapse; font-size: .9rem; }
th, td { text-align: left; padding: .35rem .7rem; border-bottom: 1px solid #ddd; white-space: nowrap; }
th { background: #f3f4f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.stale td.lag, .problem { color: #b42318; font-weight: 600; }
.outcome-failed { color: #b42318; font-weight: 600; }
.outcome-busy, .outcome-running, .outcome-queued { color: #b54708; }
.error { color: #b42318; white-space: normal; max-width: 40rem; }
.action { color: #1a1a1a; }
"""


def _cell(value: Any, css: str = "") -> str:
    text = "-" if value is None else html.escape(str(value))
    return f'<td class="{css}">{text}</td>' if css else f"<td>{text}</td>"


def render_html(statuses: Sequence[TableStatus], *, now: datetime, problems: Iterable[str] = ()) -> str:
    """The page: a line of counts, any problem reading the data, then one row per table.

    Links are relative to the page (served at ``<UI root>/cd2-status/``) and open in the top window, so
    they work from the UI's embedded view and behind a path prefix.
    """
    stale = sum(s.stale for s in statuses)
    failed = sum(s.outcome == Outcome.FAILED for s in statuses)
    lines = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>CD2 replica status</title>',
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Canvas Data 2 replica</h1>",
        f'<p class="facts">{len(statuses)} tables, {stale} stale, {failed} failed; as of '
        f"{html.escape(now.strftime('%Y-%m-%d %H:%M:%S UTC'))}. "
        '<a href="api/tables">JSON</a></p>',
    ]
    lines += [f'<p class="problem">{html.escape(problem)}</p>' for problem in problems]
    lines.append(
        "<table><thead><tr><th>Table</th><th>Watermark (UTC)</th><th>Lag</th><th>Bound</th>"
        "<th>Rows</th><th>Oldest row (UTC)</th><th>Schema</th><th>Last outcome</th><th>Run</th><th>Error</th></tr></thead><tbody>"
    )
    for s in statuses:
        lag = format_duration(s.lag_seconds) if s.lag_seconds is not None else None
        rows = None if s.rows is None else f"{'~' if s.rows_estimated else ''}{s.rows:,}"
        run = "-"
        if s.ui_path and s.run_id:
            run = f'<a href="../{html.escape(s.ui_path)}" target="_top">{html.escape(s.run_id)}</a>'
        outcome = html.escape(s.outcome_text) if s.outcome_text else "-"
        error = html.escape(s.error or "")
        if s.action:
            error += f'<br><span class="action">Action: {html.escape(s.action)}.</span>'

        lines.append(
            f'<tr class="{"stale" if s.stale else "fresh"}">'
            + _cell(s.table)
            + _cell(s.watermark.strftime("%Y-%m-%d %H:%M:%S") if s.watermark else None)
            + _cell(f"{lag} (stale)" if s.stale else lag, "num lag")
            + _cell(f"{s.freshness_hours:,.10g}h", "num")
            + _cell(rows, "num")
            + _cell(s.oldest_row.strftime("%Y-%m-%d %H:%M:%S") if s.oldest_row else None)
            + _cell(s.schema_version, "num")
            + f'<td class="outcome-{html.escape(s.outcome or "none")}">{outcome}</td>'
            + f"<td>{run}</td>"
            + f'<td class="error">{error}</td>'
            + "</tr>"
        )
    lines += ["</tbody></table>", "</body></html>"]
    return "\n".join(lines) + "\n"


# -- the app --------------------------------------------------------------------------------------------


def create_app() -> FastAPI:
    """The FastAPI app the plugin mounts at :data:`URL_PREFIX`: ``/`` (HTML) and ``/api/tables`` (JSON)."""
    readers = [
        Depends(requires_access_dag("GET", DagAccessEntity.TASK_INSTANCE, param_dag_id=DAG_ID)),
        Depends(requires_access_dag("GET", DagAccessEntity.XCOM, param_dag_id=DAG_ID)),
    ]
    app = FastAPI(title="CD2 replica status", dependencies=readers, docs_url=None, redoc_url=None)

    @app.exception_handler(HTTPException)
    async def sign_in_first(request: Request, error: HTTPException):
        """A signed-out browser asking for the page is sent to Airflow's login page (and back, where the
        auth manager supports next: 3.3)."""
        if error.status_code == status.HTTP_401_UNAUTHORIZED and "/api/" not in request.url.path:
            return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)))
        return await http_exception_handler(request, error)

    def collect(session: Session) -> tuple[list[TableStatus], list[str], datetime]:
        now = datetime.now(UTC)
        freshness, problem = freshness_from_config(Variable.get(CONFIG_VARIABLE, default=""))
        problems = [f"Variable {CONFIG_VARIABLE}: {problem}; default bounds used"] if problem else []
        try:
            conn = connect_replica()
            try:
                replica = read_replica(conn)
            finally:
                conn.close()
        except Exception as error:  # the page still shows what Airflow knows
            replica = {}
            problems.append(f"Could not read the replica database: {type(error).__name__}: {error}".strip())
        statuses = table_statuses(replica, read_last_outcomes(session), freshness, now)
        return statuses, problems, now

    @app.get("/", response_class=HTMLResponse)
    def page(session: SessionDep) -> HTMLResponse:
        statuses, problems, now = collect(session)
        return HTMLResponse(render_html(statuses, now=now, problems=problems))

    @app.get("/api/tables")
    def tables(session: SessionDep) -> dict[str, Any]:
        statuses, problems, now = collect(session)
        return {"as_of": now.isoformat(), "problems": problems, "tables": [s.to_json() for s in statuses]}

    return app
