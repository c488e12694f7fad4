"""The page as a FastAPI app for the API server, behind Airflow's own authentication."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from airflow.api_fastapi.app import get_auth_manager
from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity
from airflow.api_fastapi.common.db.common import SessionDep
from airflow.api_fastapi.core_api.security import requires_access_dag
from airflow.sdk import Variable
from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.orm import Session

from cd2.instances import Instance, configured_instances
from cd2.status_page.render import render_html
from cd2.status_page.replica import connect_replica, read_replica
from cd2.status_page.rows import TableStatus, freshness_from_config, table_statuses
from cd2.status_page.runs import read_last_outcomes

URL_PREFIX = "/cd2-status"


def create_app() -> FastAPI:
    """The FastAPI app the plugin mounts at :data:`URL_PREFIX`: ``/`` (HTML) and ``/api/tables`` (JSON),
    every configured instance's tables (a reader may read each instance's DAG's task instances and XComs)."""
    instances = configured_instances()
    readers = [
        Depends(requires_access_dag("GET", entity, param_dag_id=instance.dag_id))
        for instance in instances
        for entity in (DagAccessEntity.TASK_INSTANCE, DagAccessEntity.XCOM)
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
        statuses: list[TableStatus] = []
        problems: list[str] = []
        for instance in instances:
            found, trouble = collect_instance(session, instance, now)
            statuses += found
            problems += trouble
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


def collect_instance(
    session: Session, instance: Instance, now: datetime
) -> tuple[list[TableStatus], list[str]]:
    """One instance's rows, and what could not be read (said per instance where there are several)."""
    who = "" if instance.is_default else f"Instance {instance.name}: "
    variable = instance.config_variable
    freshness, problem = freshness_from_config(Variable.get(variable, default=""), variable)
    problems = [f"{who}{problem}; default bounds used"] if problem else []
    try:
        conn = connect_replica(instance.postgres_conn_id)
        try:
            replica = read_replica(conn)
        finally:
            conn.close()
    except Exception as error:  # the page still shows what Airflow knows
        replica = {}
        problems.append(f"{who}Could not read the replica database: {type(error).__name__}: {error}".strip())
    outcomes = read_last_outcomes(session, instance.dag_id)
    rows = table_statuses(replica, outcomes, freshness, now, instance=instance.name, dag_id=instance.dag_id)
    return rows, problems
