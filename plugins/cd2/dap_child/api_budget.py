"""Pace the DAP client's API calls to the published limits, shared by every task, run and worker.

What it patches (the ``api_budget`` patch of :mod:`cd2.dap_child.patches`): ``dap.api.DAPSession.__init__``.
After the stock ``__init__`` it wraps the session's ``_retry_client._client`` (the ``aiohttp.ClientSession`` that
``aiohttp_retry`` calls once per HTTP attempt) in :class:`PacedRequests`. Every attempt of a call with a
published limit (create job, list tables, get job, schema, object URLs: :class:`cd2.contract.ApiEndpoint`)
first takes a token from the :class:`Pacer`; login and downloads are untouched. A 429 that still arrives
(another consumer of the same client id) is waited out here, ``Retry-After`` honoured, and it blocks the
endpoint for every task until then; the client's own retry never sees it, so it neither burns the
client's 3 tries nor an Airflow retry. After ``DEFAULT_RATE_LIMITED_WAIT_SECONDS`` of 429s the call fails
with :class:`RateLimitExhausted` (its own error category).

The pacer's state lives in the target PostgreSQL, where all workers meet: ``cd2_replica.api_calls`` (recent
calls per client key and endpoint: a sliding window like the API's) and ``cd2_replica.api_backoff`` (an
endpoint blocked until a 429's ``Retry-After``), changed under a transaction-scoped advisory lock per
client key and endpoint. The client key is a hash of the client id, never the id or secret.

Where the patch does not fit the installed client, the client runs unpaced. How to remove it: if
Instructure's client ever paces itself across processes, delete this module, its registry entry and its
use in the child's runner, and drop the two tables.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import re
import time
from typing import Any

import asyncpg

from cd2.contract import (
    DEFAULT_API_LIMIT_WINDOW_SECONDS,
    DEFAULT_API_LIMITS,
    DEFAULT_RATE_LIMITED_WAIT_SECONDS,
    PRODUCT_SCHEMA,
    ApiEndpoint,
)
from cd2.dap_child import locks
from cd2.dap_child.errors import RateLimitExhausted

logger = logging.getLogger(__name__)

BUDGET_LOCK_CLASS = 0x43443242  # "CD2B"
TOO_MANY_REQUESTS = 429
# The client's own default when a 429 has no usable Retry-After.
DEFAULT_RETRY_AFTER_SECONDS = 30.0
# The API counts a call when it arrives, we when we send it: keep this much of each window spare.
SAFETY_FRACTION = 1 / 60

_ENDPOINTS = (
    ("POST", re.compile(r"/dap/query/[^/]+/table/[^/]+/data$"), ApiEndpoint.CREATE_JOB),
    ("GET", re.compile(r"/dap/query/[^/]+/table$"), ApiEndpoint.LIST_TABLES),
    ("GET", re.compile(r"/dap/query/[^/]+/table/[^/]+/schema$"), ApiEndpoint.SCHEMA),
    ("GET", re.compile(r"/dap/job/[^/]+$"), ApiEndpoint.GET_JOB),
    ("POST", re.compile(r"/dap/object/url$"), ApiEndpoint.OBJECT_URLS),
)


def endpoint_of(method: str, url: Any) -> ApiEndpoint | None:
    """Which rate-limited endpoint a request goes to, if any."""
    path = str(url).split("?", 1)[0]
    for endpoint_method, pattern, endpoint in _ENDPOINTS:
        if method.upper() == endpoint_method and pattern.search(path):
            return endpoint
    return None


def client_key(client_id: str) -> str:
    """What the shared state is keyed by: a hash of the client id."""
    return hashlib.sha256(client_id.encode()).hexdigest()[:24]


def retry_after_seconds(value: str | None) -> float:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); the client's 30 s when absent or bad."""
    if value:
        try:
            return max(0.0, float(value))
        except ValueError:
            try:
                return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    return DEFAULT_RETRY_AFTER_SECONDS


async def ensure_schema(conn: asyncpg.Connection) -> None:
    """Create the product's schema and the pacer's tables once, safely against concurrent children."""
    await locks.shared_ddl(
        conn,
        f"""
        CREATE SCHEMA IF NOT EXISTS {PRODUCT_SCHEMA};
        CREATE TABLE IF NOT EXISTS {PRODUCT_SCHEMA}.api_calls (
            client_key text NOT NULL, endpoint text NOT NULL, called_at timestamptz NOT NULL);
        CREATE INDEX IF NOT EXISTS api_calls_window
            ON {PRODUCT_SCHEMA}.api_calls (client_key, endpoint, called_at);
        CREATE TABLE IF NOT EXISTS {PRODUCT_SCHEMA}.api_backoff (
            client_key text NOT NULL, endpoint text NOT NULL, until timestamptz NOT NULL,
            PRIMARY KEY (client_key, endpoint));
        """,
    )


class Pacer:
    """Tokens for rate-limited calls, from state in the target database shared by every process."""

    def __init__(
        self,
        database_url: str,
        client_id: str,
        limits: dict[str, int] | None = None,
        window_seconds: float = DEFAULT_API_LIMIT_WINDOW_SECONDS,
        rate_limited_wait_seconds: float = DEFAULT_RATE_LIMITED_WAIT_SECONDS,
    ) -> None:
        self.database_url = database_url
        self.key = client_key(client_id)
        self.limits = dict(DEFAULT_API_LIMITS if limits is None else limits)
        self.window = window_seconds * (1 + SAFETY_FRACTION)
        self.rate_limited_wait_seconds = rate_limited_wait_seconds
        self._conn: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Pacer:
        self._conn = await locks.connect_as(self.database_url, "cd2_replica api budget")
        await ensure_schema(self._conn)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    async def take(self, endpoint: ApiEndpoint) -> float:
        """Wait until ``endpoint`` has budget left, record the call; the seconds waited."""
        limit = self.limits.get(endpoint)
        if not limit:
            return 0.0
        waited = 0.0
        announced = False
        while True:
            wait = await self._try_take(endpoint, limit)
            if wait is None:
                return waited
            if not announced and wait >= 0.5:
                logger.info(
                    "waiting %.0f s for the DAP API's %s budget", wait, endpoint.value.replace("_", "-")
                )
                announced = True
            await asyncio.sleep(max(wait, 0.05))
            waited += wait

    async def _try_take(self, endpoint: ApiEndpoint, limit: int) -> float | None:
        """None when a call was recorded now; else the seconds until one may be."""
        assert self._conn is not None, "use the Pacer as an async context manager"
        conn = self._conn
        async with self._lock, conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1, hashtext($2))", BUDGET_LOCK_CLASS, f"{self.key}/{endpoint}"
            )
            blocked = await conn.fetchval(
                f"SELECT extract(epoch FROM until - clock_timestamp())::float8 FROM {PRODUCT_SCHEMA}.api_backoff "
                "WHERE client_key = $1 AND endpoint = $2 AND until > clock_timestamp()",
                self.key,
                str(endpoint),
            )
            if blocked is not None:
                return blocked
            await conn.execute(
                f"DELETE FROM {PRODUCT_SCHEMA}.api_calls WHERE client_key = $1 AND endpoint = $2 "
                "AND called_at <= clock_timestamp() - make_interval(secs => $3)",
                self.key,
                str(endpoint),
                self.window,
            )
            # The limit-th most recent call in the window: once it leaves the window, one more may go.
            wait = await conn.fetchval(
                f"SELECT extract(epoch FROM called_at + make_interval(secs => $3) - clock_timestamp())::float8 "
                f"FROM {PRODUCT_SCHEMA}.api_calls WHERE client_key = $1 AND endpoint = $2 "
                "ORDER BY called_at DESC OFFSET $4 LIMIT 1",
                self.key,
                str(endpoint),
                self.window,
                limit - 1,
            )
            if wait is not None and wait > 0:
                return wait
            await conn.execute(
                f"INSERT INTO {PRODUCT_SCHEMA}.api_calls VALUES ($1, $2, clock_timestamp())",
                self.key,
                str(endpoint),
            )
            return None

    async def back_off(self, endpoint: ApiEndpoint, seconds: float) -> None:
        """Block ``endpoint`` for everyone for ``seconds`` (a 429's ``Retry-After``)."""
        assert self._conn is not None
        async with self._lock:
            await self._conn.execute(
                f"INSERT INTO {PRODUCT_SCHEMA}.api_backoff VALUES ($1, $2, clock_timestamp() + make_interval(secs => $3)) "
                "ON CONFLICT (client_key, endpoint) DO UPDATE SET until = GREATEST("
                f"{PRODUCT_SCHEMA}.api_backoff.until, EXCLUDED.until)",
                self.key,
                str(endpoint),
                float(seconds),
            )


class PacedRequests:
    """Stands in for the client's ``aiohttp.ClientSession`` inside ``aiohttp_retry``: paces ``request``."""

    def __init__(self, session: Any, pacer: Pacer) -> None:
        self._session = session
        self._pacer = pacer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)

    async def request(self, method: str, url: Any, **kwargs: Any) -> Any:
        endpoint = endpoint_of(method, url)
        if endpoint is None:
            return await self._session.request(method, url, **kwargs)
        rate_limited = 0.0
        while True:
            await self._pacer.take(endpoint)
            response = await self._session.request(method, url, **kwargs)
            if response.status != TOO_MANY_REQUESTS:
                return response
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            response.release()
            if rate_limited + wait > self._pacer.rate_limited_wait_seconds:
                raise RateLimitExhausted(
                    f"the DAP API kept answering 429 Too Many Requests to {endpoint.value.replace('_', '-')} "
                    f"calls for {rate_limited:.0f} s (and asks for {wait:.0f} s more): another consumer of "
                    "the same client id is using its budget; the table is retried later"
                )
            logger.warning(
                "the DAP API answered 429 to a %s call: waiting %.0f s (Retry-After), and so does every task",
                endpoint.value.replace("_", "-"),
                wait,
            )
            rate_limited += wait
            await self._pacer.back_off(endpoint, wait)


_pacer: Pacer | None = None


def pace_with(pacer: Pacer) -> None:
    """Pace every DAP session created from now on with ``pacer`` (while the ``api_budget`` patch is active)."""
    global _pacer
    _pacer = pacer


def current_pacer() -> Pacer | None:
    """The pacer new sessions are paced with, if any."""
    return _pacer
