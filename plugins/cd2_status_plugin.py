"""Registers the CD2 replica status page (:mod:`cd2.status_page`) with Airflow's API server and UI.

Airflow imports this file in every component and task process, so it imports nothing heavy: the page's
FastAPI app (and Airflow's API security modules) is built on the first request the API server routes to it.
"""

from __future__ import annotations

import importlib
from typing import Any

from airflow.plugins_manager import AirflowPlugin

URL_PREFIX = "/cd2-status"  # cd2.status_page.URL_PREFIX; not imported here, see above


class LazyApp:
    """An ASGI app that builds ``module:factory()`` on its first request."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self._app is None:
            module, _, factory = self.target.partition(":")
            self._app = getattr(importlib.import_module(module), factory)()
        await self._app(scope, receive, send)


class Cd2StatusPlugin(AirflowPlugin):
    """The status page at ``/cd2-status/`` and its entry in the UI's navigation."""

    name = "cd2_status"
    fastapi_apps = [
        {"app": LazyApp("cd2.status_page:create_app"), "url_prefix": URL_PREFIX, "name": "CD2 replica status"}
    ]
    external_views = [
        {
            "name": "CD2 replica",
            "href": URL_PREFIX.lstrip("/") + "/",
            "url_route": "cd2-status",
            "destination": "nav",
        }
    ]
