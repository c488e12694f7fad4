"""Sort an exception raised while running the DAP client by its cause, and tell it in full.

The client and pysqlsync wrap causes (every failed statement becomes ``QueryException``, several
failures an ``ExceptionGroup``), so :func:`classify` looks at every exception in the chain
(``__cause__``, ``__context__``, group members) and decides by the most telling one: its type, a
PostgreSQL SQLSTATE, a DAP error type, an ``errno``; never by parsing message text. Each cause maps to
a :class:`cd2.contract.ErrorCategory` (what it means for retries and people is defined there), with a
sentence saying what to do. The message carries PostgreSQL's message, DETAIL, HINT and the failing
statement (shortened), on one line, with any URL credentials removed.
"""

from __future__ import annotations

import asyncio
import errno
import re
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

import aiohttp
import asyncpg
from dap import dap_error
from dap.api import DAPClientError
from pysqlsync.base import QueryException

from cd2.contract import ChildError, ErrorCategory

STATEMENT_LIMIT = 300
MESSAGE_LIMIT = 2000


class LockTimeout(Exception):
    """Another task instance holds the table's lock for longer than we may wait."""


class LockHeldTooLong(Exception):
    """Another session has held the table's lock past the generous bound: it is probably stuck."""


class PreviousCopyKept(Exception):
    """An init or re-init failed and left the live table as it was; its cause is ``__cause__``."""


class RateLimitExhausted(Exception):
    """The DAP API kept answering 429 Too Many Requests for longer than one call may wait."""


class DapEnvironmentError(Exception):
    """An environment variable of the child is missing or holds a value it cannot use."""


class DiskSpaceError(Exception):
    """``$TMPDIR`` cannot hold the next object to download (see :mod:`cd2.dap_child.disk_guard`)."""


class TruncatedDownloadError(Exception):
    """A download ended before its gzip stream did; downloading it again is the cure."""


class ReadersHoldTable(Exception):
    """Other sessions kept a transaction open on the live table for as long as a swap may wait."""


class KeepDaysUnsupported(Exception):
    """``cd2_config`` ``keep_days`` names a table whose rows carry no age to prune by."""


class PatchUnavailable(Exception):
    """A safety patch of the client (:mod:`cd2.dap_child.patches`) does not fit the installed client."""


TRANSIENT, PERMANENT, UNKNOWN = ErrorCategory.TRANSIENT, ErrorCategory.PERMANENT, ErrorCategory.UNKNOWN

RECONNECT = (
    "PostgreSQL was unavailable or restarted (a failover looks like this): the retry reconnects and "
    "repeats the step; nothing half-done is kept"
)
_SQLSTATES: dict[str, tuple[ErrorCategory, str]] = {
    "57P01": (TRANSIENT, RECONNECT),  # admin_shutdown
    "57P02": (TRANSIENT, RECONNECT),  # crash_shutdown
    "57P03": (TRANSIENT, RECONNECT),  # cannot_connect_now
    "53300": (TRANSIENT, "PostgreSQL has no free connection slot: the retry tries again"),
    "40001": (TRANSIENT, "a serialization failure: the retry repeats the step"),
    "40P01": (TRANSIENT, "a deadlock with another session: the retry repeats the step"),
    "55P03": (TRANSIENT, "a lock was not available in time: the retry waits again"),
    "57014": (
        TRANSIENT,
        "PostgreSQL cancelled the statement (a timeout or an operator): the retry repeats it",
    ),
    "53100": (PERMANENT, "the database server's disk is full: free space or grow the volume, then re-run"),
    "53200": (PERMANENT, "the database server ran out of memory: check its size and load, then re-run"),
    "2BP01": (
        PERMANENT,
        "another database object depends on the table and could not be moved aside: drop or change it "
        "(the DETAIL names it), then re-run",
    ),
    "28P01": (
        PERMANENT,
        "PostgreSQL rejected the login: check the cd2_postgres connection's login and password",
    ),
    "28000": (
        PERMANENT,
        "PostgreSQL refused the connection (pg_hba.conf or TLS): check cd2_postgres and sslmode",
    ),
    "3D000": (PERMANENT, "the database does not exist: check the cd2_postgres connection's schema field"),
    "42501": (
        PERMANENT,
        "the cd2_postgres user lacks a privilege it needs (the message names it): grant it, then re-run",
    ),
}
_SQLSTATE_CLASSES: dict[str, tuple[ErrorCategory, str]] = {
    "08": (TRANSIENT, RECONNECT),  # connection exception
}

_DAP_ERRORS: tuple[tuple[type[BaseException], ErrorCategory, str], ...] = (
    (
        dap_error.AuthenticationError,
        PERMANENT,
        "DAP rejected the credentials: check the dap_default connection's login (client id) and password (client secret)",
    ),
    (dap_error.AccountDisabledError, PERMANENT, "the DAP account is disabled: contact Instructure support"),
    (
        dap_error.AccountNotOnboardedError,
        PERMANENT,
        "the DAP account is not onboarded: contact Instructure support",
    ),
    (
        dap_error.AccountUnderMaintenanceError,
        TRANSIENT,
        "the DAP account is under maintenance: the retry tries again later",
    ),
    (
        dap_error.RequestTypeForbiddenError,
        PERMANENT,
        "this request type is forbidden for the account: contact Instructure support",
    ),
    (
        dap_error.NotFoundError,
        PERMANENT,
        "the API does not know this namespace or table: check cd2_config 'namespaces'/'include' and the 'tables' param",
    ),
    (
        dap_error.ValidationError,
        PERMANENT,
        "the API refused the request as invalid: report it with this message",
    ),
    (
        dap_error.OutOfRangeError,
        TRANSIENT,
        "the watermark is older than the API keeps: the table is re-initialized (previous copy kept)",
    ),
    (
        dap_error.SnapshotRequiredError,
        TRANSIENT,
        "the API needs a fresh snapshot: the table is re-initialized (previous copy kept)",
    ),
    (dap_error.ProcessingError, TRANSIENT, "the API could not process the job: the retry asks again"),
    (dap_error.GatewayTimeoutError, TRANSIENT, "the API gateway timed out: the retry asks again"),
    (
        dap_error.ServerError,
        TRANSIENT,
        "the API answered with a server error after the client's own retries: the retry asks again",
    ),
)


def _os_error(error: BaseException) -> tuple[ErrorCategory, str] | None:
    if not isinstance(error, OSError):
        return None
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return PERMANENT, (
            "the worker's disk (TMPDIR) is full: free space or give the worker more disk, then re-run; "
            "the replica keeps its previous copy"
        )
    if isinstance(error, ssl.SSLError):
        return (
            PERMANENT,
            "TLS with PostgreSQL or the API failed: check the cd2_postgres sslmode and the certificates",
        )
    if type(error) is ConnectionError:
        # asyncpg raises a bare ConnectionError when the server refuses TLS ("rejected SSL upgrade").
        return (
            PERMANENT,
            "PostgreSQL refused TLS: set the cd2_postgres sslmode extra to what the server supports",
        )
    if isinstance(error, ConnectionError) or error.errno in (
        errno.ECONNREFUSED,
        errno.EHOSTUNREACH,
        errno.ETIMEDOUT,
    ):
        return TRANSIENT, "a network connection failed: the retry reconnects"
    return None


def _rule(error: BaseException) -> tuple[ErrorCategory, str] | None:
    """The category and action for this one exception, or None if it says nothing about the cause."""
    if isinstance(error, LockHeldTooLong):
        return PERMANENT, (
            "another run has held this table far longer than any init takes: check that run (named above) "
            "and stop it if it is stuck; its lock goes with its database session"
        )
    if isinstance(error, LockTimeout):
        return TRANSIENT, "another run is working on this table: the retry waits for it"
    if isinstance(error, ReadersHoldTable):
        return TRANSIENT, (
            "end the sessions named above (or set idle_in_transaction_session_timeout for readers); the "
            "retry loads the table again, and readers keep the previous copy meanwhile"
        )
    if isinstance(error, DapEnvironmentError):
        return PERMANENT, (
            "set the environment variable named above as it says (MWAA: startup.sh or the environment's "
            "configuration; locally: the Makefile), or check the DAP hook that starts the child"
        )
    if isinstance(error, DiskSpaceError):
        return PERMANENT, (
            "the worker's TMPDIR cannot hold this table's next object: give the worker more disk or run "
            "fewer tables per worker (docs/deploy.md, sizing); the replica keeps its previous copy"
        )
    if isinstance(error, KeepDaysUnsupported):
        return PERMANENT, "remove the table from cd2_config 'keep_days' (only log tables are pruned)"
    if isinstance(error, PatchUnavailable):
        return PERMANENT, (
            "install the DAP client version locks/dap.txt pins, or verify the patch on this version "
            "(docs/design.md, Patch registry)"
        )
    if isinstance(error, TruncatedDownloadError):
        return TRANSIENT, "a download ended before its data did: the retry downloads it again"
    if isinstance(error, asyncpg.PostgresError):
        sqlstate = getattr(error, "sqlstate", None) or ""
        return _SQLSTATES.get(sqlstate) or _SQLSTATE_CLASSES.get(sqlstate[:2])
    if isinstance(error, asyncpg.InterfaceError | asyncpg.exceptions.ConnectionDoesNotExistError):
        return TRANSIENT, RECONNECT
    for error_type, category, action in _DAP_ERRORS:
        if isinstance(error, error_type):
            return category, action
    if isinstance(error, DAPClientError):
        # Raised (in our use) for a query job that ended failed and for an answer it could not parse.
        return TRANSIENT, (
            "the DAP API ended the query job as failed, or answered with something the client could not "
            "read: the retry asks again"
        )
    if isinstance(error, aiohttp.ClientPayloadError | aiohttp.ClientConnectionError):
        return TRANSIENT, "a download or API connection broke: the retry downloads again"
    if isinstance(error, asyncio.TimeoutError | TimeoutError):
        return TRANSIENT, "a network operation timed out: the retry tries again"
    return _os_error(error)


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and everything behind it: causes, contexts, exception group members (each once)."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            pending.extend(current.exceptions)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)


@dataclass(frozen=True)
class _Told:
    category: ErrorCategory
    cause: BaseException
    action: str


def _decide(error: BaseException) -> _Told:
    for candidate in chain(error):
        decided = _rule(candidate)
        if decided is not None:
            return _Told(decided[0], candidate, decided[1])
    # The deepest exception is the likeliest cause of an unforeseen failure.
    *_, deepest = chain(error)
    return _Told(
        UNKNOWN,
        deepest,
        f"an unforeseen error, {UNKNOWN.retried}: {UNKNOWN.action}",
    )


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def without_credentials(text: str) -> str:
    """Any ``scheme://user:password@`` in ``text`` with the password replaced by ``***``."""
    return re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)


def describe(error: BaseException) -> str:
    """One exception in full: PostgreSQL's message, DETAIL and HINT; a DAP error's message."""
    if isinstance(error, asyncpg.PostgresError):
        parts = [error.args[0] if error.args else type(error).__name__]
        parts += [f"DETAIL: {error.detail}"] if getattr(error, "detail", None) else []
        parts += [f"HINT: {error.hint}"] if getattr(error, "hint", None) else []
        return "; ".join(parts)
    if isinstance(error, dap_error.OperationError):
        return error.message
    if isinstance(error, dap_error.ServerError):
        return f"server error: {error.body}"
    if isinstance(error, QueryException):
        return "a statement failed"
    return str(error) or type(error).__name__


def classify(error: BaseException, context: str | None = None) -> ChildError:
    """The failure as the operator reads it: category, cause type, one line of what and what to do.

    ``context`` (e.g. "re-initialization failed; the previous copy is unchanged") is said first.
    """
    rate_limited = next((e for e in chain(error) if isinstance(e, RateLimitExhausted)), None)
    if rate_limited is not None:
        return ChildError(ErrorCategory.RATE_LIMITED, type(rate_limited).__name__, str(rate_limited))
    if isinstance(error, PreviousCopyKept) and error.__cause__ is not None:
        context, error = str(error), error.__cause__
    told = _decide(error)
    parts = [context] if context else []
    parts.append(describe(told.cause))
    if told.cause is not error and not isinstance(error, QueryException | BaseExceptionGroup):
        parts.append(f"(while: {type(error).__name__}: {describe(error)})")
    statement = next((e.query for e in chain(error) if isinstance(e, QueryException)), None)
    if statement:
        short = _one_line(statement)
        parts.append(f"statement: {short[:STATEMENT_LIMIT]}{'...' if len(short) > STATEMENT_LIMIT else ''}")
    message = f"{'; '.join(parts)}. What to do: {told.action}."
    message = without_credentials(_one_line(message))[:MESSAGE_LIMIT]
    sqlstate = (
        getattr(told.cause, "sqlstate", None) if isinstance(told.cause, asyncpg.PostgresError) else None
    )
    return ChildError(told.category, type(told.cause).__name__, message, sqlstate=sqlstate)
