"""The child's DAP client, paced API budget and the environment they are made from (secrets come only
through the environment, never argv)."""

from __future__ import annotations

import os

from dap.api import DAPClient
from dap.dap_types import Credentials

from cd2 import contract
from cd2.contract import ListJob, TableJob
from cd2.dap_child import api_budget
from cd2.dap_child.errors import DapEnvironmentError


def env(name: str) -> str:
    """The environment variable ``name``; the child cannot run without it."""
    value = os.environ.get(name)
    if not value:
        raise DapEnvironmentError(f"environment variable {name} is not set")
    return value


def whole_number(name: str, default: int, minimum: int) -> int:
    """The environment variable ``name`` as a whole number of at least ``minimum`` (unset or blank:
    ``default``); anything else is refused, naming the variable."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise DapEnvironmentError(f"{name}={raw!r} is not a whole number") from None
    if value < minimum:
        raise DapEnvironmentError(f"{name}={raw!r} must be {minimum} or more")
    return value


def dap_client() -> DAPClient:
    """The DAP client, with tracking off, for the API and credentials in the environment."""
    credentials = Credentials.create(
        client_id=env(contract.ENV_CLIENT_ID), client_secret=env(contract.ENV_CLIENT_SECRET)
    )
    return DAPClient(os.environ.get(contract.ENV_API_URL) or None, credentials, tracking=False)


def pacer_for(job: ListJob | TableJob) -> api_budget.Pacer:
    """The shared API budget, in the budget database (else the target), for this job's limits."""
    pacer = api_budget.Pacer(
        os.environ.get(contract.ENV_BUDGET_DATABASE_URL) or env(contract.ENV_DATABASE_URL),
        env(contract.ENV_CLIENT_ID),
        contract.parse_api_limits(job.api_limits),
        job.api_limit_window_seconds,
        job.rate_limited_wait_seconds,
    )
    api_budget.pace_with(pacer)
    return pacer
