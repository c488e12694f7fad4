"""Sort an exception raised while running the DAP client into transient (retry) or permanent (fix first).

Decided by exception type, never by parsing message text.
"""

from __future__ import annotations

import asyncpg
from dap import dap_error
from pysqlsync.base import QueryException

from cd2.contract import ChildError, ErrorCategory


class LockTimeout(Exception):
    """Another task instance holds the table's lock for longer than we may wait."""


class DapEnvironmentError(Exception):
    """A required environment variable of the child is missing."""


class DiskSpaceError(Exception):
    """``$TMPDIR`` cannot hold the next object to download (see :mod:`cd2.dap_child.streaming`)."""


class TruncatedDownloadError(Exception):
    """A download ended before its gzip stream did; downloading it again is the cure."""


_PERMANENT_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (
        dap_error.AuthenticationError,
        "DAP rejected the credentials: check the dap_default connection's "
        "login (client id) and password (client secret)",
    ),
    (dap_error.AccountDisabledError, "the DAP account is disabled: contact Instructure support"),
    (dap_error.AccountNotOnboardedError, "the DAP account is not onboarded: contact Instructure support"),
    (dap_error.RequestTypeForbiddenError, "this request type is forbidden for the account"),
    (
        dap_error.NotFoundError,
        "the API does not know this namespace or table: check cd2_config "
        "'namespaces'/'include' and the 'tables' param",
    ),
    (dap_error.ValidationError, "the API refused the request as invalid"),
    (
        QueryException,
        "PostgreSQL refused the schema change (a view may depend on the column): fix the "
        "target database, then re-run",
    ),
    (LockTimeout, "another task instance is working on this table"),
    (DapEnvironmentError, "the child process was started without its environment"),
    (DiskSpaceError, "the worker's disk is too small for this table's objects"),
    (asyncpg.InvalidPasswordError, "PostgreSQL rejected the login: check the cd2_postgres connection"),
    (asyncpg.InvalidAuthorizationSpecificationError, "PostgreSQL rejected the login: check cd2_postgres"),
    (asyncpg.InvalidCatalogNameError, "the database does not exist: check the cd2_postgres schema field"),
    (asyncpg.InsufficientPrivilegeError, "the cd2_postgres user lacks a privilege it needs"),
)


def _describe(error: BaseException) -> str:
    if isinstance(error, dap_error.OperationError):
        return error.message
    if isinstance(error, dap_error.ServerError):
        return f"server error: {error.body}"
    return str(error) or type(error).__name__


def classify(error: BaseException) -> ChildError:
    """Transient errors are worth an Airflow retry; permanent ones need someone to fix something first."""
    for error_type, hint in _PERMANENT_HINTS:
        if isinstance(error, error_type):
            return ChildError(ErrorCategory.PERMANENT, type(error).__name__, f"{_describe(error)} ({hint})")
    if isinstance(error, TruncatedDownloadError):
        return ChildError(
            ErrorCategory.TRANSIENT, type(error).__name__, f"{error} (a retry downloads it again)"
        )
    # 5xx after the client's own retries, ProcessingError, failed jobs, connection resets, timeouts,
    # and anything unforeseen: Airflow's bounded retries.
    return ChildError(ErrorCategory.TRANSIENT, type(error).__name__, _describe(error))
